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

// A share's unclaimed pieces [first, last) as one word (see Share).
uint64_t Pack(int64_t first, int64_t last) {
  return static_cast<uint64_t>(first) << 32 | static_cast<uint64_t>(last);
}
int64_t First(uint64_t range) { return static_cast<int64_t>(range >> 32); }
int64_t Last(uint64_t range) { return static_cast<int64_t>(range & 0xFFFFFFFFu); }

// A thread claims this fraction of what is left of its own share at a time.
constexpr int64_t kClaimFraction = 8;

// The gate (see ThreadPool::gate_): epoch << 32 | kClosed | workers inside.
constexpr uint64_t kClosed = uint64_t{1} << 31;
constexpr uint64_t kInside = kClosed - 1;

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  size_ = threads;
  shares_ = std::make_unique<Share[]>(static_cast<size_t>(threads));
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
  const int64_t pieces = (n + chunk - 1) / chunk;
  CHECK_MSG(pieces < (int64_t{1} << 31), "ThreadPool::ParallelFor: too many pieces");
  job_fn_ = fn;
  job_ctx_ = ctx;
  job_n_ = n;
  job_chunk_ = chunk;
  for (int t = 0; t < size_; ++t) {
    shares_[t].range.store(Pack(pieces * t / size_, pieces * (t + 1) / size_),
                           std::memory_order_relaxed);
  }
  // Only this thread bumps the epoch, so the job's is the next one.
  const uint32_t epoch = epoch_.load(std::memory_order_relaxed) + 1;
  gate_.store(uint64_t{epoch} << 32, std::memory_order_relaxed);
  Publish();  // its seq_cst epoch bump publishes the shares and the gate

  tl_inside_parallel_for = true;
  DrainChunks(0);
  tl_inside_parallel_for = false;
  // Every piece is claimed. Close the job, so that a worker that comes to it
  // now (one that was asleep, or whose core the OS gave to another task)
  // skips it, and wait for the workers inside, whose pieces are running,
  // before the job fields can be reused. Yield now and then: with more
  // threads than free cores a worker may need this core to finish.
  uint64_t gate = gate_.fetch_or(kClosed, std::memory_order_acq_rel);
  for (int spins = 1; (gate & kInside) != 0; ++spins) {
    TANDEM_CPU_RELAX();
    if (spins % 256 == 0) std::this_thread::yield();
    gate = gate_.load(std::memory_order_acquire);
  }
}

bool ThreadPool::Join(uint32_t epoch) {
  uint64_t gate = gate_.load(std::memory_order_acquire);
  do {
    if (gate >> 32 != epoch || (gate & kClosed) != 0) return false;
  } while (!gate_.compare_exchange_weak(gate, gate + 1, std::memory_order_acq_rel,
                                        std::memory_order_acquire));
  return true;
}

void ThreadPool::Publish() {
  epoch_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lock(sleep_mu_); }
    wake_.notify_all();
  }
}

bool ThreadPool::ClaimPieces(int self, int64_t* begin, int64_t* end) {
  std::atomic<uint64_t>& own = shares_[self].range;
  for (;;) {
    uint64_t r = own.load(std::memory_order_acquire);
    while (First(r) < Last(r)) {  // the front of this thread's own share
      // An eighth of what is left: the locked compare-and-swap waits for the
      // loads before it, which in a streaming kernel are misses to memory.
      // One per piece (32 KiB of decode weights) took 2% of int4 decode
      // time. Llama-3.2-1B decode steps, alternated in process with one
      // piece per claim (2 threads, medians of paired steps per run): bf16
      // 1.017-1.031x, int8 1.013-1.016x, int4 1.006-1.023x (median 1.017x
      // of 8 runs); identical halves read 0.997-1.031x (median 1.003x).
      const int64_t take = std::max<int64_t>(1, (Last(r) - First(r)) / kClaimFraction);
      if (own.compare_exchange_weak(r, Pack(First(r) + take, Last(r)), std::memory_order_acq_rel)) {
        *begin = First(r);
        *end = First(r) + take;
        return true;
      }
    }
    // Own share done: take the back half of the largest share left.
    int victim = -1;
    int64_t most = 0;
    for (int t = 0; t < size_; ++t) {
      const uint64_t v = shares_[t].range.load(std::memory_order_acquire);
      if (Last(v) - First(v) > most) {
        most = Last(v) - First(v);
        victim = t;
      }
    }
    if (victim < 0) return false;
    uint64_t v = shares_[victim].range.load(std::memory_order_acquire);
    const int64_t first = First(v), last = Last(v);
    if (first >= last) continue;
    const int64_t mid = first + (last - first) / 2;  // the victim keeps [first, mid)
    if (!shares_[victim].range.compare_exchange_strong(v, Pack(first, mid),
                                                       std::memory_order_acq_rel)) {
      continue;
    }
    // Only this thread stores into its own empty share; thieves that read it
    // before this store fail their compare-and-swap.
    own.store(Pack(mid + 1, last), std::memory_order_release);
    *begin = mid;
    *end = mid + 1;
    return true;
  }
}

void ThreadPool::DrainChunks(int self) {
  const int64_t n = job_n_;
  const int64_t chunk = job_chunk_;
  int64_t begin, end;
  while (ClaimPieces(self, &begin, &end)) {
    for (int64_t piece = begin; piece < end; ++piece) {
      job_fn_(job_ctx_, piece * chunk, std::min(n, (piece + 1) * chunk));
    }
  }
}

void ThreadPool::WorkerLoop(int index) {
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
    if (!Join(now)) continue;  // a job closed before this worker came, or a later one's epoch
    DrainChunks(index);
    gate_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace tandem::cpu
