#include "node/daemon/calibration.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/roofline.h"
#include "kernels/cpu/thread_pool.h"
#ifdef TANDEM_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/matmul.h"
#endif

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
  std::vector<RandomMatrix> mats;
  mats.push_back(MakeMatrix(spec.q_size(), h, weight_dtype, rng));
  mats.push_back(MakeMatrix(spec.kv_size(), h, weight_dtype, rng));
  mats.push_back(MakeMatrix(spec.kv_size(), h, weight_dtype, rng));
  mats.push_back(MakeMatrix(h, spec.q_size(), weight_dtype, rng));
  mats.push_back(MakeMatrix(inter, h, weight_dtype, rng));
  mats.push_back(MakeMatrix(inter, h, weight_dtype, rng));
  mats.push_back(MakeMatrix(h, inter, weight_dtype, rng));

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
  size_t layer_bytes = spec.LayerWeightBytes(weight_dtype);
  size_t head_matrix = spec.tie_word_embeddings ? spec.EmbeddingBytes(weight_dtype)
                                                : spec.HeadBytes(weight_dtype);
  c.head_ms = layer_bytes ? c.decode_layer_ms * static_cast<double>(head_matrix) / layer_bytes : 0;
  c.memory_bandwidth_gbps = cpu::MeasureMemoryBandwidthGBps(pool);
  return c;
}

#ifdef TANDEM_HAVE_CUDA
StatusOr<Calibration> CalibrateCudaNode(const ModelSpec& spec, DType weight_dtype, int device,
                                        int prefill_tokens) {
  std::mt19937 rng(1234);
  const int64_t h = spec.hidden_size, inter = spec.intermediate_size;
  const int64_t widest = std::max({h, inter, static_cast<int64_t>(spec.q_size())});
  const std::pair<int64_t, int64_t> shapes[] = {
      {spec.q_size(), h}, {spec.kv_size(), h}, {spec.kv_size(), h}, {h, spec.q_size()},
      {inter, h},         {inter, h},          {h, inter}};
  try {
    CUDA_CHECK(cudaSetDevice(device));
    std::vector<cuda::DeviceBuffer> buffers;
    std::vector<cuda::DeviceMatrix> mats;
    for (auto [rows, cols] : shapes) {
      RandomMatrix m = MakeMatrix(rows, cols, weight_dtype, rng);
      cuda::DeviceBuffer& data = buffers.emplace_back(m.data.size());
      data.CopyFromHost(m.data.data(), m.data.size());
      const float* scales = nullptr;
      if (!m.scales.empty()) {
        cuda::DeviceBuffer& s = buffers.emplace_back(m.scales.size() * sizeof(float));
        s.CopyFromHost(m.scales.data(), m.scales.size() * sizeof(float));
        scales = s.As<float>();
      }
      mats.push_back({.dtype = weight_dtype, .rows = rows, .cols = cols, .data = data.data(),
                      .scales = scales, .group_size = m.w.group_size});
    }
    cuda::DeviceBuffer x(static_cast<size_t>(prefill_tokens * widest) * sizeof(float));
    cuda::DeviceBuffer y(static_cast<size_t>(prefill_tokens * widest) * sizeof(float));
    CUDA_CHECK(cudaMemset(x.data(), 0, x.bytes()));
    cuda::DeviceBuffer scratch(cuda::PrefillScratchBytes(prefill_tokens, widest));
    cublasHandle_t cublas = nullptr;
    CUBLAS_CHECK(cublasCreate(&cublas));
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    const cuda::GemmContext gemm{.cublas = cublas, .scratch = scratch.data(),
                                 .scratch_bytes = scratch.bytes()};
    // Median of `reps` timings of `fn` on the default stream, after a warm-up.
    auto time_ms = [&](int reps, auto&& fn) {
      fn();
      std::vector<double> times;
      for (int i = 0; i < reps; ++i) {
        CUDA_CHECK(cudaEventRecord(start));
        fn();
        CUDA_CHECK(cudaEventRecord(stop));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
      }
      std::sort(times.begin(), times.end());
      return times[times.size() / 2];
    };
    auto run_layer = [&](int64_t tokens) {
      for (const cuda::DeviceMatrix& m : mats) {
        cuda::MatMul(gemm, x.As<float>(), tokens, m, nullptr, y.As<float>(), nullptr);
      }
    };
    Calibration c;
    c.threads = 1;
    c.prefill_tokens = prefill_tokens;
    c.decode_layer_ms = time_ms(20, [&] { run_layer(1); });
    c.prefill_layer_ms = time_ms(10, [&] { run_layer(prefill_tokens); });
    const size_t layer_bytes = spec.LayerWeightBytes(weight_dtype);
    const size_t head_matrix = spec.tie_word_embeddings ? spec.EmbeddingBytes(weight_dtype)
                                                        : spec.HeadBytes(weight_dtype);
    c.head_ms =
        layer_bytes ? c.decode_layer_ms * static_cast<double>(head_matrix) / layer_bytes : 0;
    c.memory_bandwidth_gbps = cuda::MeasureDeviceBandwidthGBps(device);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cublasDestroy(cublas);
    return c;
  } catch (const cuda::CudaError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot calibrate on CUDA device ", device, ": ", e.what()));
  }
}
#endif

}  // namespace tandem
