#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

#include "core/check.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TANDEM_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define TANDEM_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define TANDEM_CPU_RELAX() \
  do {                     \
  } while (0)
#endif

namespace tandem::cpu {
namespace {

// Set while a thread runs a ParallelFor body, so nested calls run serially.
thread_local bool tl_inside_parallel_for = false;

// How long an idle worker polls before sleeping: long enough to bridge the gap
// between consecutive kernels of a forward pass, short enough not to burn a
// core when the node is idle.
constexpr auto kSpinTime = std::chrono::microseconds(200);

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  size_ = threads;
  workers_.reserve(static_cast<size_t>(threads - 1));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_relaxed);
  Publish();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::Run(int64_t n, int64_t min_chunk, Trampoline fn, void* ctx) {
  if (n <= 0) return;
  int64_t chunk = min_chunk > 0 ? min_chunk : (n + size_ - 1) / size_;
  if (size_ == 1 || chunk >= n || tl_inside_parallel_for) {
    bool was_inside = tl_inside_parallel_for;
    tl_inside_parallel_for = true;
    fn(ctx, 0, n);
    tl_inside_parallel_for = was_inside;
    return;
  }
  job_fn_ = fn;
  job_ctx_ = ctx;
  job_n_ = n;
  job_chunk_ = chunk;
  next_.store(0, std::memory_order_relaxed);
  pending_.store(size_ - 1, std::memory_order_relaxed);
  Publish();

  tl_inside_parallel_for = true;
  DrainChunks();
  tl_inside_parallel_for = false;
  // Workers that woke late still enter DrainChunks and find it empty; wait for
  // all of them so the job fields can be reused.
  // Yield now and then: with more threads than free cores a worker may need
  // this core to finish.
  for (int spins = 1; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    TANDEM_CPU_RELAX();
    if (spins % 256 == 0) std::this_thread::yield();
  }
}

void ThreadPool::Publish() {
  epoch_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lock(sleep_mu_); }
    wake_.notify_all();
  }
}

void ThreadPool::DrainChunks() {
  const int64_t n = job_n_;
  const int64_t chunk = job_chunk_;
  for (;;) {
    int64_t begin = next_.fetch_add(chunk, std::memory_order_relaxed);
    if (begin >= n) break;
    job_fn_(job_ctx_, begin, std::min(begin + chunk, n));
  }
}

void ThreadPool::WorkerLoop(int /*index*/) {
  tl_inside_parallel_for = true;
  // No job can have been published before the constructor returned, so the
  // epoch this worker has "seen" is the initial one, however late it starts.
  uint32_t seen = 0;
  for (;;) {
    uint32_t now = epoch_.load(std::memory_order_acquire);
    if (now == seen) {
      auto deadline = std::chrono::steady_clock::now() + kSpinTime;
      int polls = 0;
      while ((now = epoch_.load(std::memory_order_acquire)) == seen) {
        TANDEM_CPU_RELAX();
        if (++polls % 64 == 0 && std::chrono::steady_clock::now() > deadline) {
          std::unique_lock<std::mutex> lock(sleep_mu_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          while (epoch_.load(std::memory_order_seq_cst) == seen) wake_.wait(lock);
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
    }
    seen = now;
    if (stop_.load(std::memory_order_relaxed)) return;
    DrainChunks();
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace tandem::cpu
