// libtandem_cuda.so: the CUDA backend's entry points (node/cuda_backend.h).
// Everything here turns the kernels' CudaError exceptions into a Status, so
// none crosses into the process that loaded the module.
#include <algorithm>
#include <vector>

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/matmul.h"
#include "node/cuda_backend.h"
#include "node/cuda_stage_executor.h"

namespace tandem {
namespace {

StatusOr<std::unique_ptr<Stage>> CreateStage(const ModelSpec& spec,
                                             std::shared_ptr<const Checkpoint> checkpoint,
                                             const StageOptions& options,
                                             const std::vector<int>& devices) {
  try {
    ASSIGN_OR_RETURN(auto stage,
                     CudaStageExecutor::Create(spec, std::move(checkpoint), options, devices));
    return std::unique_ptr<Stage>(std::move(stage));
  } catch (const cuda::CudaError& e) {
    return absl::UnavailableError(e.what());
  }
}

// A measurement of GPU `device` that throws CudaError, as a Status.
template <double (*kMeasure)(int)>
StatusOr<double> Measured(int device) {
  try {
    return kMeasure(device);
  } catch (const cuda::CudaError& e) {
    return absl::UnavailableError(absl::StrCat("CUDA device ", device, ": ", e.what()));
  }
}

StatusOr<CudaLayerTiming> TimeLayer(std::span<const cpu::WeightMatrix> layer, int prefill_tokens,
                                    int device) {
  int64_t widest = 1;
  for (const cpu::WeightMatrix& m : layer) widest = std::max({widest, m.rows, m.cols});
  try {
    CUDA_CHECK(cudaSetDevice(device));
    std::vector<cuda::DeviceBuffer> buffers;
    std::vector<cuda::DeviceMatrix> mats;
    for (const cpu::WeightMatrix& m : layer) {
      const size_t bytes = cpu::WeightDataBytes(m);
      cuda::DeviceBuffer& data = buffers.emplace_back(bytes);
      data.CopyFromHost(m.data, bytes);
      const float* scales = nullptr;
      if (const size_t scale_bytes = cpu::WeightScaleCount(m) * sizeof(float); scale_bytes > 0) {
        cuda::DeviceBuffer& s = buffers.emplace_back(scale_bytes);
        s.CopyFromHost(m.scales, scale_bytes);
        scales = s.As<float>();
      }
      mats.push_back({.dtype = m.dtype, .rows = m.rows, .cols = m.cols, .data = data.data(),
                      .scales = scales, .group_size = m.group_size});
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
    CudaLayerTiming t;
    t.decode_ms = time_ms(20, [&] { run_layer(1); });
    t.prefill_ms = time_ms(10, [&] { run_layer(prefill_tokens); });
    t.memory_bandwidth_gbps = cuda::MeasureDeviceBandwidthGBps(device);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cublasDestroy(cublas);
    return t;
  } catch (const cuda::CudaError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot calibrate on CUDA device ", device, ": ", e.what()));
  }
}

constexpr CudaBackend kBackend{
    .list_devices = cuda::ListDevices,
    .create_stage = CreateStage,
    .memory_bandwidth_gbps = Measured<cuda::MeasureDeviceBandwidthGBps>,
    .gemm_peak_gflops = Measured<cuda::MeasureGemmPeakGflops>,
    .time_layer = TimeLayer,
};

}  // namespace
}  // namespace tandem

extern "C" __attribute__((visibility("default"))) const tandem::CudaBackend* tandem_cuda_backend(
    int interface_version) {
  return interface_version == tandem::kCudaBackendInterface ? &tandem::kBackend : nullptr;
}
