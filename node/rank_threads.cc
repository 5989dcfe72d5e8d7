#include "node/rank_threads.h"

#include "core/check.h"

namespace tandem {

RankThreads::RankThreads(int ranks) : ranks_(ranks) {
  CHECK_GE(ranks, 1);
  for (int r = 1; r < ranks; ++r) threads_.emplace_back([this, r] { Loop(r); });
}

RankThreads::~RankThreads() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  start_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void RankThreads::RunErased(void* fn, void (*call)(void*, int)) {
  if (ranks_ > 1) {
    {
      std::lock_guard lock(mutex_);
      fn_ = fn;
      call_ = call;
      done_ = 0;
      ++generation_;
    }
    start_cv_.notify_all();
  }
  call(fn, 0);
  if (ranks_ > 1) {
    std::unique_lock lock(mutex_);
    done_cv_.wait(lock, [&] { return done_ == ranks_ - 1; });
  }
}

void RankThreads::Loop(int rank) {
  uint64_t seen = 0;
  while (true) {
    void* fn = nullptr;
    void (*call)(void*, int) = nullptr;
    {
      std::unique_lock lock(mutex_);
      start_cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      fn = fn_;
      call = call_;
    }
    call(fn, rank);
    {
      std::lock_guard lock(mutex_);
      ++done_;
    }
    done_cv_.notify_one();
  }
}

}  // namespace tandem
