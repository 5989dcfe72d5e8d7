#pragma once
// Measures this machine's limits, so benchmarks can print achieved figures
// against them. Each call takes a fraction of a second to a few seconds.
#include "kernels/cpu/thread_pool.h"

namespace tandem::cpu {

// Read bandwidth from DRAM in GB/s (1e9 bytes/s): all pool threads sum a
// buffer far larger than the last-level cache (256 MiB) with SIMD loads, in
// chunks handed out dynamically; the best of several repetitions.
double MeasureMemoryBandwidthGBps(ThreadPool& pool);

// Peak f32 FMA throughput in GFLOP/s (1 FMA = 2 FLOP) using the widest SIMD
// the machine supports, on all pool threads; the best of several repetitions.
double MeasurePeakGflops(ThreadPool& pool);

// Name of the SIMD target chosen at run time ("AVX3", "AVX2", "NEON", ...).
const char* SimdTargetName();

}  // namespace tandem::cpu
