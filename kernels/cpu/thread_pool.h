#pragma once
// A persistent pool of worker threads for data-parallel loops. Threads are
// created once in the constructor; ParallelFor only wakes them. Idle workers
// spin briefly (so back-to-back kernels in one forward pass hand over in
// microseconds) and then sleep on a condition variable.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace tandem::cpu {

class ThreadPool {
 public:
  // `threads` is the total number of threads taking part in a ParallelFor,
  // the calling thread included (so `threads - 1` workers are started).
  // 0 means all hardware threads of this machine.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Number of threads that run a ParallelFor (workers + the caller), >= 1.
  int size() const { return size_; }

  // Calls fn(begin, end) on disjoint ranges that together cover [0, n), and
  // returns when all calls have finished. The calling thread takes part.
  // [0, n) is cut into pieces of `min_chunk` (the last may be shorter;
  // min_chunk <= 0 means ceil(n / size())), and fn is called once per piece.
  // Each thread starts on its own contiguous share of the pieces and works
  // through it from the front, claiming an eighth of what is left of it at a
  // time (at least one piece); a thread whose share is done takes the back
  // half of the largest share left. So each thread reads mostly one long
  // contiguous range (what memory-streaming kernels need: their prefetching
  // runs on from piece to piece), and a thread the OS delays is relieved by
  // the others of all but the pieces it has claimed. The call waits only for
  // claimed pieces: a worker that has not come to the call by the time every
  // piece is claimed (one asleep, or one whose core the OS gave to another
  // task) sits it out. A pool of one thread runs fn(0, n) once. At most
  // 2^31 - 1 pieces. `fn` must not throw.
  //
  // Thread-compatibility: one ParallelFor at a time per pool (give each
  // tensor-parallel rank its own pool). A ParallelFor issued from inside
  // `fn` (nested) runs serially on the calling thread.
  template <typename Fn>
  void ParallelFor(int64_t n, Fn&& fn, int64_t min_chunk = 0) {
    auto trampoline = [](void* ctx, int64_t begin, int64_t end) {
      (*static_cast<std::remove_reference_t<Fn>*>(ctx))(begin, end);
    };
    Run(n, min_chunk, trampoline, const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // As ParallelFor, but each call receives exactly one index range chosen
  // for thread `t` in [0, size()): fn(t, begin, end) with [0, n) cut into
  // size() contiguous, nearly equal static ranges (some possibly empty).
  // For kernels that want a fixed thread-to-data mapping (bandwidth-bound
  // streaming, per-thread scratch).
  template <typename Fn>
  void ParallelForStatic(int64_t n, Fn&& fn) {
    auto body = [&fn, n, threads = size_](int64_t t_begin, int64_t t_end) {
      for (int64_t t = t_begin; t < t_end; ++t) {
        fn(static_cast<int>(t), n * t / threads, n * (t + 1) / threads);
      }
    };
    ParallelFor(size_, body, 1);
  }

 private:
  using Trampoline = void (*)(void* ctx, int64_t begin, int64_t end);
  void Run(int64_t n, int64_t min_chunk, Trampoline fn, void* ctx);
  void WorkerLoop(int index);
  void DrainChunks(int self);  // runs pieces for thread `self` until none are left
  // Claims pieces [*begin, *end) for thread `self`; false when none are left.
  bool ClaimPieces(int self, int64_t* begin, int64_t* end);
  bool Join(uint32_t epoch);  // enters the job of `epoch` if it is still open
  void Publish();  // makes the job fields visible and wakes sleeping workers

  int size_ = 1;
  std::vector<std::thread> workers_;

  // The current job, published by bumping `epoch_`.
  Trampoline job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_chunk_ = 1;
  // Per thread, the pieces [first, last) of its share not yet claimed, packed
  // as first << 32 | last so that the owner (taking from the front) and a
  // thief (taking the back half) claim with one compare-and-swap.
  struct alignas(64) Share {
    std::atomic<uint64_t> range{0};
  };
  std::unique_ptr<Share[]> shares_;
  alignas(64) std::atomic<uint32_t> epoch_{0};
  // Who takes part in the current job: its epoch (high 32 bits), a bit set
  // once the caller has closed it (kClosed), and the number of workers inside
  // (the low bits). A worker joins only an open job of the epoch it saw, so
  // the caller waits for the workers that joined, never for one the OS has
  // not run yet.
  alignas(64) std::atomic<uint64_t> gate_{0};
  alignas(64) std::atomic<bool> stop_{false};
  // Sleeping workers: a worker registers in `sleepers_` before its last look
  // at `epoch_`; Run bumps `epoch_` before reading `sleepers_` (both seq_cst),
  // so either the worker sees the new job or Run sees the sleeper and wakes it.
  alignas(64) std::atomic<int> sleepers_{0};
  std::mutex sleep_mu_;
  std::condition_variable wake_;
};

}  // namespace tandem::cpu
