// Machine limits for roofline reports: DRAM read bandwidth and peak f32 FMA
// throughput, both with the widest SIMD chosen at run time.
#include <algorithm>
#include <chrono>
#include <vector>

#include "core/check.h"
#include "core/tensor.h"
#include "kernels/cpu/roofline.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/roofline.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
#include "hwy/cache_control.h"
#include "hwy/targets.h"

HWY_BEFORE_NAMESPACE();
namespace tandem::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Sum of x[0, n) read with independent vector accumulators.
float StreamSumImpl(const float* x, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    // Prefetch as the decode kernels do, so both measure the same thing.
    hwy::Prefetch(x + i + 256);
    hwy::Prefetch(x + i + 256 + 16);
    a0 = hn::Add(a0, hn::LoadU(df, x + i));
    a1 = hn::Add(a1, hn::LoadU(df, x + i + N));
    a2 = hn::Add(a2, hn::LoadU(df, x + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(df, x + i + 3 * N));
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += x[i];
  return s;
}

// Runs `iters` rounds of 12 independent FMA chains; returns FLOPs done and a
// value that depends on every chain (so nothing is optimized away).
double FmaLoopImpl(int64_t iters, float* sink) {
  const DF df;
  const VF m = hn::Set(df, 0.999999f);
  const VF c = hn::Set(df, 1e-6f);
  VF a[12];
  for (int i = 0; i < 12; ++i) a[i] = hn::Set(df, static_cast<float>(i));
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 12; ++i) a[i] = hn::MulAdd(a[i], m, c);
  }
  VF s = a[0];
  for (int i = 1; i < 12; ++i) s = hn::Add(s, a[i]);
  *sink = hn::GetLane(hn::SumOfLanes(df, s));
  return static_cast<double>(iters) * 12.0 * 2.0 * static_cast<double>(hn::Lanes(df));
}

const char* TargetNameImpl() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace tandem::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tandem::cpu {

HWY_EXPORT(StreamSumImpl);
HWY_EXPORT(FmaLoopImpl);
HWY_EXPORT(TargetNameImpl);

namespace {
double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

namespace {
constexpr int64_t kProbeBytes = int64_t{256} << 20;
constexpr int64_t kProbeFloats = kProbeBytes / 4;
// Read in 1 MiB chunks handed out dynamically, so a thread the OS delays
// does not stall the others.
constexpr int64_t kProbeChunk = int64_t{1} << 18;
}  // namespace

BandwidthProbe::BandwidthProbe(ThreadPool& pool)
    : pool_(pool),
      buffer_(static_cast<size_t>(kProbeBytes)),
      sink_(static_cast<size_t>(kProbeFloats / kProbeChunk)) {
  float* data = buffer_.As<float>();
  // First touch from the threads that read later (NUMA placement).
  pool_.ParallelForStatic(kProbeFloats, [&](int, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) data[i] = static_cast<float>(i & 7);
  });
}

double BandwidthProbe::Pass() {
  const float* data = buffer_.As<float>();
  const auto start = std::chrono::steady_clock::now();
  pool_.ParallelFor(
      kProbeFloats / kProbeChunk,
      [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          sink_[static_cast<size_t>(c)] +=
              HWY_DYNAMIC_DISPATCH(StreamSumImpl)(data + c * kProbeChunk, kProbeChunk);
        }
      },
      1);
  const double s = Seconds(start, std::chrono::steady_clock::now());
  volatile float keep = sink_[0];
  (void)keep;
  return static_cast<double>(kProbeBytes) / s / 1e9;
}

double BandwidthProbe::Measure(int passes) {
  CHECK(passes >= 1);
  Pass();  // wakes the pool's threads and brings the page tables back
  double best = 0.0;
  for (int i = 0; i < passes; ++i) best = std::max(best, Pass());
  return best;
}

double MeasureMemoryBandwidthGBps(ThreadPool& pool) { return BandwidthProbe(pool).Measure(9); }

double MeasurePeakGflops(ThreadPool& pool) {
  constexpr int64_t kIters = 2'000'000;
  std::vector<float> sink(static_cast<size_t>(pool.size()));
  std::vector<double> flops(static_cast<size_t>(pool.size()));
  double best = 0.0;
  for (int rep = 0; rep < 30; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelForStatic(pool.size(), [&](int t, int64_t, int64_t) {
      flops[static_cast<size_t>(t)] =
          HWY_DYNAMIC_DISPATCH(FmaLoopImpl)(kIters, &sink[static_cast<size_t>(t)]);
    });
    const double s = Seconds(start, std::chrono::steady_clock::now());
    double total = 0.0;
    for (double f : flops) total += f;
    if (rep > 0) best = std::max(best, total / s / 1e9);
  }
  volatile float keep = sink[0];
  (void)keep;
  return best;
}

const char* SimdTargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameImpl)(); }

}  // namespace tandem::cpu
#endif  // HWY_ONCE
