#pragma once
// Measures this machine's limits, so benchmarks can print achieved figures
// against them. Each call takes a fraction of a second to a few seconds.
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/thread_pool.h"

namespace tandem::cpu {

// Bytes a bandwidth probe reads so that the last-level cache cannot serve a
// measurable part of it: 4x `llc_bytes` and at least 256 MiB, but at most an
// eighth of `ram_bytes` (where that is less, the probe is what the machine
// can spare), in whole MiB. Server parts carry hundreds of MiB of L3, so a
// fixed size is not "far larger than the cache" everywhere.
size_t ProbeBytesFor(size_t llc_bytes, size_t ram_bytes);

// The largest cache this machine reports (sysfs, then sysconf; 0 when it
// reports none) and its physical memory in bytes.
size_t LastLevelCacheBytes();
size_t PhysicalMemoryBytes();

// Read bandwidth from DRAM: all pool threads sum a buffer far larger than the
// last-level cache (ProbeBytesFor this machine) with SIMD loads, in chunks
// handed out dynamically. On a shared machine this bandwidth drifts from one
// read to the next, so benchmarks alternate reads (TimeRead) with the work
// they measure and compare the two over the same stretch of time.
class BandwidthProbe {
 public:
  // Allocates and first-touches the buffer from the pool's threads.
  // bytes: 0 for ProbeBytesFor(LastLevelCacheBytes(), PhysicalMemoryBytes()),
  // else rounded up to whole MiB.
  explicit BandwidthProbe(ThreadPool& pool, size_t bytes = 0);

  // GB/s (1e9 bytes/s) of the fastest of `passes` rounds of reads of the
  // whole buffer (each about 40 ms for 2 GiB at 50 GB/s), after one
  // unmeasured read that wakes the pool's threads: the machine's burst
  // bandwidth. A round reads it seven times: with the hardware prefetchers
  // alone, and with each cache line also software-prefetched 1, 2 or 4 KiB
  // ahead into L1 or into L2; which streams best differs between machines
  // and moments.
  double Measure(int passes);

  // Picks the prefetching that streams best by its median GB/s over
  // `passes` reads with each (taken in turn), and returns that median. The
  // median, not the best read: a shared machine's bandwidth swings by a
  // quarter between reads 40 ms apart, and the best of a handful of reads
  // says more about the luckiest moment than about the prefetching.
  double ChooseStreaming(int passes);

  // Seconds of one read of the whole buffer, prefetched as ChooseStreaming
  // picked (the hardware prefetchers alone before it has run). A benchmark
  // alternates these reads with the steps it measures and divides bytes by
  // seconds summed on each side: both sides then average over the same
  // stretch of the machine's swings, where a best read sits above them.
  double TimeRead();

  // Bytes of the buffer (resident while the probe lives).
  size_t bytes() const { return buffer_.size(); }

 private:
  // Seconds of one read; ahead 0: no software prefetch.
  double Pass(int64_t ahead_floats, bool to_l2);
  // Seconds of `passes` reads with each way of prefetching (kStreamings in
  // roofline.cc), taken in turn, after one unmeasured read; [way][pass].
  std::vector<std::vector<double>> ReadEachWay(int passes);

  ThreadPool& pool_;
  AlignedBuffer buffer_;
  std::vector<float> sink_;
  // TimeRead's prefetching (ChooseStreaming).
  int64_t chosen_ahead_floats_ = 0;
  bool chosen_to_l2_ = false;
};

// BandwidthProbe(pool).Measure(1).
double MeasureMemoryBandwidthGBps(ThreadPool& pool);

// Peak f32 FMA throughput in GFLOP/s (1 FMA = 2 FLOP) using the widest SIMD
// the machine supports, on all pool threads; the best of several repetitions.
double MeasurePeakGflops(ThreadPool& pool);

// Name of the SIMD target chosen at run time ("AVX3", "AVX2", "NEON", ...).
const char* SimdTargetName();

}  // namespace tandem::cpu
