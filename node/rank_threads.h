#pragma once
// The threads of a stage's tensor-parallel ranks: Run calls one function for
// every rank at once, rank 0 on the caller's thread and ranks 1..n-1 on
// threads that live as long as this object, so a step creates no thread and
// allocates nothing.
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace tandem {

class RankThreads {
 public:
  explicit RankThreads(int ranks);
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int size() const { return ranks_; }
  // Calls fn(r) for every rank r in [0, size()) concurrently and returns
  // once every call has returned. fn must not throw. One Run at a time.
  template <typename F>
  void Run(F&& fn) {
    using Fn = std::remove_reference_t<F>;
    RunErased(&fn, [](void* f, int r) { (*static_cast<Fn*>(f))(r); });
  }

 private:
  void RunErased(void* fn, void (*call)(void*, int));
  void Loop(int rank);

  int ranks_;
  std::vector<std::thread> threads_;  // ranks 1..n-1
  std::mutex mutex_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  void* fn_ = nullptr;
  void (*call_)(void*, int) = nullptr;
  uint64_t generation_ = 0;
  int done_ = 0;
  bool stopping_ = false;
};

}  // namespace tandem
