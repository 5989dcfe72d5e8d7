#pragma once
// Measures this machine's limits, so benchmarks can print achieved figures
// against them. Each call takes a fraction of a second to a few seconds.
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/thread_pool.h"

namespace tandem::cpu {

// Read bandwidth from DRAM: all pool threads sum a buffer far larger than the
// last-level cache (256 MiB) with SIMD loads, in chunks handed out
// dynamically. On a shared machine this bandwidth drifts from one second to
// the next, so benchmarks interleave passes with the work they measure and
// compare each piece of work with the passes just before it.
class BandwidthProbe {
 public:
  // Allocates and first-touches the buffer from the pool's threads.
  explicit BandwidthProbe(ThreadPool& pool);

  // GB/s (1e9 bytes/s) of the best of `passes` reads of the whole buffer
  // (each about 5 ms at 50 GB/s), after one unmeasured pass that wakes the
  // pool's threads.
  double Measure(int passes);

  // Bytes of the buffer (resident while the probe lives).
  size_t bytes() const { return buffer_.size(); }

 private:
  double Pass();

  ThreadPool& pool_;
  AlignedBuffer buffer_;
  std::vector<float> sink_;
};

// BandwidthProbe(pool).Measure(9).
double MeasureMemoryBandwidthGBps(ThreadPool& pool);

// Peak f32 FMA throughput in GFLOP/s (1 FMA = 2 FLOP) using the widest SIMD
// the machine supports, on all pool threads; the best of several repetitions.
double MeasurePeakGflops(ThreadPool& pool);

// Name of the SIMD target chosen at run time ("AVX3", "AVX2", "NEON", ...).
const char* SimdTargetName();

}  // namespace tandem::cpu
