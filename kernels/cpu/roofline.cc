// Machine limits for roofline reports: DRAM read bandwidth and peak f32 FMA
// throughput, both with the widest SIMD chosen at run time.
#include "kernels/cpu/roofline.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/tensor.h"
#include "kernels/cpu/prefetch.h"

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

// Sum of x[0, n) read with independent vector accumulators, every cache
// line prefetched `ahead` floats before it is read (0: not prefetched), into
// L1 or, with to_l2, into L2 only.
float StreamSumImpl(const float* x, int64_t n, int64_t ahead, bool to_l2) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
  int64_t i = 0;
  // Floats of one step and of one cache line.
  const int64_t step = 4 * N, line = 16;
  for (; i + step <= n; i += step) {
    if (ahead > 0 && to_l2) {
      for (int64_t l = 0; l < step; l += line) PrefetchToL2(x + i + ahead + l);
    } else if (ahead > 0) {
      for (int64_t l = 0; l < step; l += line) hwy::Prefetch(x + i + ahead + l);
    }
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
constexpr size_t kMiB = size_t{1} << 20;
// Read in 1 MiB chunks handed out dynamically, so a thread the OS delays
// does not stall the others.
constexpr int64_t kProbeChunk = int64_t{1} << 18;

// Parses a sysfs cache size such as "491520K" or "2M"; 0 when malformed.
size_t ParseCacheSize(const std::string& text) {
  size_t value = 0, i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    value = value * 10 + static_cast<size_t>(text[i] - '0');
    ++i;
  }
  if (i == 0) return 0;
  if (i < text.size() && text[i] == 'K') return value << 10;
  if (i < text.size() && text[i] == 'M') return value << 20;
  return value;
}
}  // namespace

size_t ProbeBytesFor(size_t llc_bytes, size_t ram_bytes) {
  size_t bytes = std::max<size_t>(256 * kMiB, 4 * llc_bytes);
  if (ram_bytes > 0) bytes = std::min(bytes, ram_bytes / 8);
  return std::max(kMiB, bytes / kMiB * kMiB);
}

size_t LastLevelCacheBytes() {
  size_t best = 0;
  int best_level = 0;
  for (int index = 0; index < 16; ++index) {
    const std::string dir =
        "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int level = 0;
    std::string size_text;
    if (!(level_file >> level) || !(size_file >> size_text)) continue;
    const size_t size = ParseCacheSize(size_text);
    if (level > best_level || (level == best_level && size > best)) {
      best_level = level;
      best = size;
    }
  }
  if (best > 0) return best;
  for (int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
    const long size = sysconf(name);
    if (size > 0) return static_cast<size_t>(size);
  }
  return 0;
}

size_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

BandwidthProbe::BandwidthProbe(ThreadPool& pool, size_t bytes)
    : pool_(pool),
      buffer_(bytes == 0 ? ProbeBytesFor(LastLevelCacheBytes(), PhysicalMemoryBytes())
                         : (bytes + kMiB - 1) / kMiB * kMiB),
      sink_(buffer_.size() / sizeof(float) / static_cast<size_t>(kProbeChunk)) {
  float* data = buffer_.As<float>();
  const int64_t floats = static_cast<int64_t>(buffer_.size() / sizeof(float));
  // First touch from the threads that read later (NUMA placement).
  pool_.ParallelForStatic(floats, [&](int, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) data[i] = static_cast<float>(i & 7);
  });
}

double BandwidthProbe::Pass(int64_t ahead, bool to_l2) {
  const float* data = buffer_.As<float>();
  const auto start = std::chrono::steady_clock::now();
  pool_.ParallelFor(
      static_cast<int64_t>(sink_.size()),
      [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          sink_[static_cast<size_t>(c)] +=
              HWY_DYNAMIC_DISPATCH(StreamSumImpl)(data + c * kProbeChunk, kProbeChunk, ahead,
                                                  to_l2);
        }
      },
      1);
  const double s = Seconds(start, std::chrono::steady_clock::now());
  volatile float keep = sink_[0];
  (void)keep;
  return s;
}

namespace {
// The ways a probe can read: the hardware prefetchers alone (ahead 0), or
// every cache line also software-prefetched 1, 2 or 4 KiB ahead into L1 or
// into L2. Which streams fastest differs between machines and, on a shared
// one, from minute to minute, by up to 15%.
struct Streaming {
  int64_t ahead_floats;
  bool to_l2;
};
constexpr Streaming kStreamings[] = {{0, false},  {256, false},  {256, true}, {512, false},
                                     {512, true}, {1024, false}, {1024, true}};
}  // namespace

std::vector<std::vector<double>> BandwidthProbe::ReadEachWay(int passes) {
  CHECK(passes >= 1);
  Pass(0, false);  // wakes the pool's threads and brings the page tables back
  std::vector<std::vector<double>> seconds(std::size(kStreamings));
  // In turn, so that a slow moment of the machine falls on every way alike.
  for (int i = 0; i < passes; ++i) {
    for (size_t k = 0; k < std::size(kStreamings); ++k) {
      seconds[k].push_back(Pass(kStreamings[k].ahead_floats, kStreamings[k].to_l2));
    }
  }
  return seconds;
}

double BandwidthProbe::Measure(int passes) {
  double fastest = std::numeric_limits<double>::infinity();
  for (const std::vector<double>& way : ReadEachWay(passes)) {
    fastest = std::min(fastest, *std::min_element(way.begin(), way.end()));
  }
  return static_cast<double>(buffer_.size()) / fastest / 1e9;
}

double BandwidthProbe::ChooseStreaming(int passes) {
  std::vector<std::vector<double>> seconds = ReadEachWay(passes);
  double best_median = std::numeric_limits<double>::infinity();
  for (size_t k = 0; k < seconds.size(); ++k) {
    std::vector<double>& s = seconds[k];
    std::nth_element(s.begin(), s.begin() + s.size() / 2, s.end());
    if (s[s.size() / 2] < best_median) {
      best_median = s[s.size() / 2];
      chosen_ahead_floats_ = kStreamings[k].ahead_floats;
      chosen_to_l2_ = kStreamings[k].to_l2;
    }
  }
  return static_cast<double>(buffer_.size()) / best_median / 1e9;
}

double BandwidthProbe::TimeRead() { return Pass(chosen_ahead_floats_, chosen_to_l2_); }

double MeasureMemoryBandwidthGBps(ThreadPool& pool) { return BandwidthProbe(pool).Measure(1); }

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
