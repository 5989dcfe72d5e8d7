#include "node/daemon/calibration.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/roofline.h"
#include "kernels/cpu/thread_pool.h"

namespace tandem {

namespace {

struct RandomMatrix {
  AlignedBuffer data;
  std::vector<float> scales;
  cpu::WeightMatrix w;
};

RandomMatrix MakeMatrix(int64_t rows, int64_t cols, DType dtype, std::mt19937& rng) {
  RandomMatrix m;
  const int group = 32;
  size_t bytes = dtype == DType::kI4 ? static_cast<size_t>(rows) * ((cols + 1) / 2)
                                     : DTypeBytes(dtype, static_cast<size_t>(rows * cols));
  m.data = AlignedBuffer(bytes);
  // Random bytes are valid values for every dtype except the rare NaN/Inf
  // patterns of the float types; mask the exponent's top bit to avoid them.
  auto* p = m.data.As<uint8_t>();
  for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(rng());
  if (dtype == DType::kBF16 || dtype == DType::kF16) {
    auto* h = m.data.As<uint16_t>();
    for (size_t i = 0; i < bytes / 2; ++i) h[i] &= 0xbfff;
  } else if (dtype == DType::kF32) {
    auto* f = m.data.As<uint32_t>();
    for (size_t i = 0; i < bytes / 4; ++i) f[i] &= 0xbfffffff;
  }
  if (dtype == DType::kI8) m.scales.assign(static_cast<size_t>(rows), 0.01f);
  if (dtype == DType::kI4) {
    m.scales.assign(static_cast<size_t>(rows * ((cols + group - 1) / group)), 0.01f);
  }
  m.w.dtype = dtype;
  m.w.rows = rows;
  m.w.cols = cols;
  m.w.data = m.data.data();
  m.w.scales = m.scales.empty() ? nullptr : m.scales.data();
  m.w.group_size = group;
  m.w.col_block = cpu::ColumnBlockFor(dtype, cols);  // the CPU stage's layout
  return m;
}

// One decoder layer's matrices (q, k, v, o, gate, up, down) with random
// values.
std::vector<RandomMatrix> LayerMatrices(const ModelSpec& spec, DType dtype, std::mt19937& rng) {
  const int64_t h = spec.hidden_size, inter = spec.intermediate_size;
  std::vector<RandomMatrix> mats;
  mats.push_back(MakeMatrix(spec.q_size(), h, dtype, rng));
  mats.push_back(MakeMatrix(spec.kv_size(), h, dtype, rng));
  mats.push_back(MakeMatrix(spec.kv_size(), h, dtype, rng));
  mats.push_back(MakeMatrix(h, spec.q_size(), dtype, rng));
  mats.push_back(MakeMatrix(inter, h, dtype, rng));
  mats.push_back(MakeMatrix(inter, h, dtype, rng));
  mats.push_back(MakeMatrix(h, inter, dtype, rng));
  return mats;
}

// The lm_head's time, estimated from the layer's: the same bytes per ms.
double HeadMs(const ModelSpec& spec, DType dtype, double decode_layer_ms) {
  const size_t layer_bytes = spec.LayerWeightBytes(dtype);
  const size_t head_matrix =
      spec.tie_word_embeddings ? spec.EmbeddingBytes(dtype) : spec.HeadBytes(dtype);
  return layer_bytes ? decode_layer_ms * static_cast<double>(head_matrix) / layer_bytes : 0;
}

// Median wall time of `fn` over `reps` runs after one warm-up, in ms.
template <typename Fn>
double TimeMs(int reps, Fn&& fn) {
  fn();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

Calibration CalibrateNode(const ModelSpec& spec, DType weight_dtype, int threads,
                          int prefill_tokens) {
  cpu::ThreadPool pool(threads);
  std::mt19937 rng(1234);
  const int64_t h = spec.hidden_size, inter = spec.intermediate_size;
  std::vector<RandomMatrix> mats = LayerMatrices(spec, weight_dtype, rng);
  const int64_t widest = std::max({h, inter, static_cast<int64_t>(spec.q_size())});
  std::vector<float> x(static_cast<size_t>(prefill_tokens * widest), 0.5f);
  std::vector<float> y(static_cast<size_t>(prefill_tokens * widest));
  auto run_layer = [&](int64_t tokens) {
    for (const RandomMatrix& m : mats) cpu::MatMul(pool, x.data(), tokens, m.w, nullptr, y.data());
  };

  Calibration c;
  c.threads = pool.size();
  c.prefill_tokens = prefill_tokens;
  c.decode_layer_ms = TimeMs(7, [&] { run_layer(1); });
  c.prefill_layer_ms = TimeMs(3, [&] { run_layer(prefill_tokens); });
  c.head_ms = HeadMs(spec, weight_dtype, c.decode_layer_ms);
  c.memory_bandwidth_gbps = cpu::MeasureMemoryBandwidthGBps(pool);
  return c;
}

StatusOr<Calibration> CalibrateCudaNode(const CudaBackend& cuda, const ModelSpec& spec,
                                        DType weight_dtype, int device, int prefill_tokens) {
  std::mt19937 rng(1234);
  std::vector<RandomMatrix> mats = LayerMatrices(spec, weight_dtype, rng);
  std::vector<cpu::WeightMatrix> layer;
  for (const RandomMatrix& m : mats) layer.push_back(m.w);
  ASSIGN_OR_RETURN(CudaLayerTiming t, cuda.time_layer(layer, prefill_tokens, device));
  Calibration c;
  c.threads = 1;
  c.prefill_tokens = prefill_tokens;
  c.decode_layer_ms = t.decode_ms;
  c.prefill_layer_ms = t.prefill_ms;
  c.head_ms = HeadMs(spec, weight_dtype, c.decode_layer_ms);
  c.memory_bandwidth_gbps = t.memory_bandwidth_gbps;
  return c;
}

}  // namespace tandem
