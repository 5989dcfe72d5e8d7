// `tandem-bench kernels`: CPU matrix-multiply throughput per weight dtype
// against this machine's measured roofline: decode (one token, GEMV) in GB/s
// of weights streamed vs the measured DRAM read bandwidth, and prefill
// (T tokens at once) in GFLOP/s vs the measured peak FMA rate. Decode is
// timed in rounds, each right after a bandwidth measurement, and compared
// round by round (see decode_bench.cc for why).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "bench/stats.h"
#include "core/cli.h"
#include "core/command.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/roofline.h"
#include "kernels/cpu/thread_pool.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

struct KernelsFlags {
  int threads = 0;
  std::string shapes = "8192x2048,2048x8192,128256x2048";  // rows (out) x cols (in)
  std::string dtypes = "f32,bf16,f16,i8,i4g32,i4g128";
  int prefill_tokens = 512;
  std::string prefill_shape = "2048x8192";
  std::string prefill_dtypes = "bf16,i8,i4g32";
  double min_seconds = 0.5;  // per measurement
  int rounds = 8;            // decode rounds per shape and dtype
  int attention_context = 1024;  // cached positions of the decode attention (0 = skip)
  bool json = false;
};

// Bytes of weights cycled through per decode measurement (>> last-level cache).
constexpr int64_t kStreamBytes = int64_t{512} << 20;

struct Shape2 {
  int64_t rows = 0, cols = 0;
};

StatusOr<Shape2> ParseShape(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, 'x');
  Shape2 s;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &s.rows) ||
      !absl::SimpleAtoi(parts[1], &s.cols) || s.rows <= 0 || s.cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape '", std::string(text), "' is not ROWSxCOLS (e.g. 8192x2048)"));
  }
  return s;
}

struct Kind {
  DType dtype;
  int group_size;
  std::string name;
};

StatusOr<Kind> ParseKind(absl::string_view text) {
  if (text == "f32") return Kind{DType::kF32, 0, "f32"};
  if (text == "bf16") return Kind{DType::kBF16, 0, "bf16"};
  if (text == "f16") return Kind{DType::kF16, 0, "f16"};
  if (text == "i8") return Kind{DType::kI8, 0, "i8"};
  if (text == "i4g32") return Kind{DType::kI4, 32, "i4g32"};
  if (text == "i4g128") return Kind{DType::kI4, 128, "i4g128"};
  return absl::InvalidArgumentError(absl::StrCat(
      "dtype '", std::string(text), "' is not one of f32, bf16, f16, i8, i4g32, i4g128"));
}

template <typename T>
StatusOr<std::vector<T>> ParseList(const std::string& text, StatusOr<T> (*parse)(absl::string_view)) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    ASSIGN_OR_RETURN(T v, parse(part));
    out.push_back(std::move(v));
  }
  return out;
}

// A random weight matrix of one kind. Values are small and finite: random
// bytes for the integer kinds, random bf16/f16/f32 values in [-0.1, 0.1].
struct RandomWeights {
  AlignedBuffer data;
  std::vector<float> scales;
  cpu::WeightMatrix view;
  int64_t bytes = 0;  // weights + scales streamed per product

  RandomWeights(const Kind& kind, Shape2 shape, cpu::ThreadPool& pool) {
    // Laid out as a CPU stage lays out its weights (random bytes either way).
    view = {.dtype = kind.dtype, .rows = shape.rows, .cols = shape.cols,
            .group_size = kind.group_size, .col_block = cpu::ColumnBlockFor(kind.dtype, shape.cols)};
    int64_t row_bytes = kind.dtype == DType::kI4 ? cpu::Int4RowBytes(shape.cols)
                                                 : shape.cols * DTypeBits(kind.dtype) / 8;
    bytes = row_bytes * shape.rows;
    data = AlignedBuffer(static_cast<size_t>(bytes));
    uint8_t* p = data.As<uint8_t>();
    pool.ParallelForStatic(shape.rows, [&](int t, int64_t r0, int64_t r1) {
      std::mt19937 rng(1234 + t);
      std::uniform_real_distribution<float> dist(-0.1f, 0.1f);
      for (int64_t r = r0; r < r1; ++r) {
        uint8_t* row = p + r * row_bytes;
        switch (kind.dtype) {
          case DType::kF32:
          case DType::kBF16:
          case DType::kF16:
            for (int64_t c = 0; c < shape.cols; ++c) {
              const float v = dist(rng);
              ConvertFromF32(&v, kind.dtype, row + c * DTypeBits(kind.dtype) / 8, 1);
            }
            break;
          default:
            for (int64_t b = 0; b < row_bytes; ++b) row[b] = static_cast<uint8_t>(rng());
        }
      }
    });
    if (kind.dtype == DType::kI8) scales.assign(static_cast<size_t>(shape.rows), 0.01f);
    if (kind.dtype == DType::kI4) {
      scales.assign(static_cast<size_t>(shape.rows * cpu::Int4NumGroups(shape.cols, kind.group_size)),
                    0.01f);
    }
    bytes += static_cast<int64_t>(scales.size() * sizeof(float));
    view.data = p;
    view.scales = scales.empty() ? nullptr : scales.data();
  }
};

// Seconds per call of fn(i) (i counts calls) over at least min_seconds:
// {best, median}. The best filters out calls during which the OS ran other
// work on our cores; the median shows what is typical.
template <typename Fn>
std::pair<double, double> TimeCalls(double min_seconds, Fn&& fn) {
  int64_t i = 0;
  fn(i++);  // warm up (page faults, scratch allocation)
  std::vector<double> times;
  double total = 0.0;
  while (times.size() < 5 || total < min_seconds) {
    const auto start = std::chrono::steady_clock::now();
    fn(i++);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    times.push_back(s);
    total += s;
  }
  std::sort(times.begin(), times.end());
  return {times.front(), times[times.size() / 2]};
}

// Per-call times and per-round roofline fractions of `rounds` rounds, each:
// one read of the bandwidth probe, then call(0) .. call(calls - 1), each
// timed and each reading `bytes_per_call` bytes; a round's fraction is its
// GB/s over the read's (decode_bench.cc says why reads and work alternate).
struct PairedRounds {
  std::vector<double> call_s;
  std::vector<double> fractions;
};
template <typename Fn>
PairedRounds TimePairedRounds(cpu::BandwidthProbe& probe, int rounds, int64_t calls,
                              double bytes_per_call, Fn&& call) {
  PairedRounds out;
  for (int r = 0; r < rounds; ++r) {
    const double read_gbps = static_cast<double>(probe.bytes()) / probe.TimeRead() / 1e9;
    double round_s = 0;
    for (int64_t i = 0; i < calls; ++i) {
      const auto start = std::chrono::steady_clock::now();
      call(i);
      out.call_s.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      round_s += out.call_s.back();
    }
    out.fractions.push_back(bytes_per_call * static_cast<double>(calls) / round_s / 1e9 /
                            read_gbps);
  }
  return out;
}

// Decode attention: one new token of one sequence over `attention_context`
// cached positions, Llama-3.2-1B heads (32 query heads, 8 kv heads of 64), in
// 16 layers' caches used in turn (far beyond the last-level cache, as in a
// model); GB/s of keys and values read, paired with the bandwidth as decode.
void RunAttention(const KernelsFlags& f, cpu::ThreadPool& pool, cpu::BandwidthProbe& probe,
                  nlohmann::json& out) {
  constexpr int kLayers = 16, kHeads = 32, kKvHeads = 8, kHeadDim = 64, kBlock = 16;
  const int64_t context = f.attention_context;
  const int64_t blocks = (context + kBlock - 1) / kBlock;
  const int64_t row = int64_t{kKvHeads} * kHeadDim;
  std::vector<AlignedBuffer> k, v;
  for (int l = 0; l < kLayers; ++l) {
    for (auto* cache : {&k, &v}) {
      cache->emplace_back(static_cast<size_t>(blocks * kBlock * row) * sizeof(float));
      float* p = cache->back().As<float>();
      for (int64_t i = 0; i < blocks * kBlock * row; ++i) p[i] = 0.01f * static_cast<float>(i % 97);
    }
  }
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) table[static_cast<size_t>(b)] = static_cast<int32_t>(b);
  std::vector<float> q(kHeads * kHeadDim, 0.1f), o(kHeads * kHeadDim);
  const cpu::AttentionSequence seq{
      .q_begin = 0, .q_len = 1, .context_len = context, .block_table = table.data()};
  auto attend = [&](int64_t layer) {
    const cpu::PagedKv cache{.k = k[static_cast<size_t>(layer)].As<float>(),
                             .v = v[static_cast<size_t>(layer)].As<float>(),
                             .num_blocks = blocks, .block_size = kBlock,
                             .num_kv_heads = kKvHeads, .head_dim = kHeadDim};
    cpu::PagedAttention(pool, q.data(), cache, {&seq, 1}, kHeads, 0.125f, o.data());
  };
  const double bytes = 2.0 * static_cast<double>(context * row) * sizeof(float);  // one layer
  attend(0);
  const PairedRounds t = TimePairedRounds(probe, f.rounds, kLayers, bytes, attend);
  const double median_s = bench::Median(t.call_s);
  const double gbps = bytes / median_s / 1e9;
  const double fraction = bench::Median(t.fractions);
  out["attention"] = {{"context", context}, {"median_us", median_s * 1e6},
                      {"median_gbps", gbps}, {"fraction_of_roofline", fraction}};
  if (!f.json) {
    std::printf("\ndecode attention, one token over %lld positions (32 heads, 8 kv heads of 64)\n",
                static_cast<long long>(context));
    std::printf("median %.1f us per layer, %.1f GB/s of keys and values, %.1f%% roof\n",
                median_s * 1e6, gbps, 100.0 * fraction);
  }
}

int RunKernels(const KernelsFlags& f) {
  auto shapes = ParseList<Shape2>(f.shapes, &ParseShape);
  if (!shapes.ok()) return ReportError("tandem-bench kernels", shapes.status());
  auto kinds = ParseList<Kind>(f.dtypes, &ParseKind);
  if (!kinds.ok()) return ReportError("tandem-bench kernels", kinds.status());
  auto prefill_kinds = ParseList<Kind>(f.prefill_dtypes, &ParseKind);
  if (!prefill_kinds.ok()) return ReportError("tandem-bench kernels", prefill_kinds.status());
  auto prefill_shape = ParseShape(f.prefill_shape);
  if (!prefill_shape.ok()) return ReportError("tandem-bench kernels", prefill_shape.status());
  if (f.prefill_tokens < 0) {
    return ReportError("tandem-bench kernels",
                       absl::InvalidArgumentError("--prefill-tokens must be >= 0"));
  }

  if (f.rounds < 1) {
    return ReportError("tandem-bench kernels", absl::InvalidArgumentError("--rounds must be >= 1"));
  }

  cpu::ThreadPool pool(f.threads);
  cpu::BandwidthProbe probe(pool);
  const double bandwidth = probe.ChooseStreaming(5);
  const double peak = cpu::MeasurePeakGflops(pool);
  nlohmann::json out = {{"simd", cpu::SimdTargetName()},
                        {"threads", pool.size()},
                        {"roofline_gbps", bandwidth},
                        {"peak_gflops", peak},
                        {"decode", nlohmann::json::array()},
                        {"prefill", nlohmann::json::array()}};
  if (!f.json) {
    std::printf("SIMD %s, %d threads: memory read bandwidth %.1f GB/s, peak %.1f GFLOP/s\n",
                cpu::SimdTargetName(), pool.size(), bandwidth, peak);
    std::printf("\ndecode (T=1): weights streamed per second vs bandwidth; 'cached' is the\n"
                "fastest call on one copy of the weights, which stays in cache where it fits:\n"
                "an upper bound of the kernel's compute ceiling (sustained rates are lower)\n");
    std::printf(
        "%% roof: median over rounds of (round GB/s / GB/s of a probe read just before it)\n");
    std::printf("%-14s %-7s %10s %10s %8s %12s %12s\n", "shape", "dtype", "best ms", "GB/s",
                "% roof", "median GB/s", "cached GB/s");
  }
  for (const Shape2& shape : *shapes) {
    std::vector<float> x(static_cast<size_t>(shape.cols), 0.5f), y(static_cast<size_t>(shape.rows));
    for (const Kind& kind : *kinds) {
      // Enough copies to exceed every cache level several times over, used in
      // turn, as the layers of a model are: each call streams from DRAM.
      std::vector<RandomWeights> copies;
      copies.emplace_back(kind, shape, pool);
      const int64_t count = std::max<int64_t>(1, (kStreamBytes + copies[0].bytes - 1) / copies[0].bytes);
      while (static_cast<int64_t>(copies.size()) < count) copies.emplace_back(kind, shape, pool);
      const RandomWeights& w = copies[0];
      // Each round: the bandwidth now, then every copy once.
      cpu::MatMul(pool, x.data(), 1, w.view, nullptr, y.data());  // scratch, page faults
      const PairedRounds t = TimePairedRounds(
          probe, f.rounds, static_cast<int64_t>(copies.size()), static_cast<double>(w.bytes),
          [&](int64_t i) {
            cpu::MatMul(pool, x.data(), 1, copies[static_cast<size_t>(i)].view, nullptr, y.data());
          });
      const double s = *std::min_element(t.call_s.begin(), t.call_s.end());
      const double median = bench::Median(t.call_s);
      const double fraction = bench::Median(t.fractions);
      const double cached_s = TimeCalls(f.min_seconds, [&](int64_t) {
        cpu::MatMul(pool, x.data(), 1, w.view, nullptr, y.data());
      }).first;
      const double gbps = static_cast<double>(w.bytes) / s / 1e9;
      const double median_gbps = static_cast<double>(w.bytes) / median / 1e9;
      const double cached_gbps = static_cast<double>(w.bytes) / cached_s / 1e9;
      const std::string name = absl::StrCat(shape.rows, "x", shape.cols);
      out["decode"].push_back({{"shape", name}, {"dtype", kind.name}, {"ms", s * 1e3},
                               {"gbps", gbps}, {"median_gbps", median_gbps},
                               {"cached_gbps", cached_gbps},
                               {"fraction_of_roofline", fraction}});
      if (!f.json) {
        std::printf("%-14s %-7s %10.3f %10.1f %7.1f%% %12.1f %12.1f\n", name.c_str(),
                    kind.name.c_str(), s * 1e3, gbps, 100.0 * fraction, median_gbps,
                    cached_gbps);
        std::fflush(stdout);
      }
    }
  }
  if (f.prefill_tokens > 0) {
    const Shape2 shape = *prefill_shape;
    const int64_t T = f.prefill_tokens;
    if (!f.json) {
      std::printf("\nprefill (T=%lld) on %lldx%lld: GFLOP/s vs peak\n", static_cast<long long>(T),
                  static_cast<long long>(shape.rows), static_cast<long long>(shape.cols));
      std::printf("%-7s %10s %10s %8s\n", "dtype", "ms", "GFLOP/s", "% peak");
    }
    std::vector<float> x(static_cast<size_t>(T * shape.cols)), y(static_cast<size_t>(T * shape.rows));
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (float& v : x) v = dist(rng);
    for (const Kind& kind : *prefill_kinds) {
      RandomWeights w(kind, shape, pool);
      const double s = TimeCalls(f.min_seconds, [&](int64_t) {
        cpu::MatMul(pool, x.data(), T, w.view, nullptr, y.data());
      }).first;
      const double gflops = 2.0 * static_cast<double>(T) * shape.rows * shape.cols / s / 1e9;
      out["prefill"].push_back({{"tokens", T}, {"dtype", kind.name}, {"ms", s * 1e3},
                                {"gflops", gflops}, {"fraction_of_peak", gflops / peak}});
      if (!f.json) {
        std::printf("%-7s %10.2f %10.1f %7.1f%%\n", kind.name.c_str(), s * 1e3, gflops,
                    100.0 * gflops / peak);
        std::fflush(stdout);
      }
    }
  }
  if (f.attention_context > 0) RunAttention(f, pool, probe, out);
  if (f.json) std::printf("%s\n", out.dump().c_str());
  return 0;
}

std::function<int()> SetupKernels(CLI::App& sub) {
  auto flags = std::make_shared<KernelsFlags>();
  sub.add_option("--threads", flags->threads, "threads (0 = all cores)")->capture_default_str();
  sub.add_option("--shapes", flags->shapes, "decode shapes, ROWSxCOLS comma-separated")
      ->capture_default_str();
  sub.add_option("--dtypes", flags->dtypes, "decode weight kinds: f32,bf16,f16,i8,i4g32,i4g128")
      ->capture_default_str();
  sub.add_option("--prefill-tokens", flags->prefill_tokens, "tokens of the prefill product (0 = skip)")
      ->capture_default_str();
  sub.add_option("--prefill-shape", flags->prefill_shape, "prefill shape ROWSxCOLS")
      ->capture_default_str();
  sub.add_option("--prefill-dtypes", flags->prefill_dtypes, "prefill weight kinds")
      ->capture_default_str();
  sub.add_option("--min-seconds", flags->min_seconds,
                 "time spent per cached-decode and prefill measurement")
      ->capture_default_str();
  sub.add_option("--attention-context", flags->attention_context,
                 "cached positions of the decode-attention measurement (0 = skip)")
      ->capture_default_str();
  sub.add_option("--rounds", flags->rounds,
                 "decode rounds per shape and dtype, each after a read of the bandwidth probe")
      ->capture_default_str();
  sub.add_flag("--json", flags->json, "print one JSON object");
  return [flags] { return RunKernels(*flags); };
}

const bool kRegistered = RegisterCommand(
    {.name = "kernels",
     .summary = "CPU matmul per weight dtype: decode GB/s vs bandwidth, prefill GFLOP/s vs peak",
     .setup = &SetupKernels});

}  // namespace
}  // namespace tandem
