#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_info.h"

#include <cuda_runtime.h>

namespace tandem::cuda {

std::vector<DeviceInfo> ListDevices() {
  std::vector<DeviceInfo> devices;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return devices;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    DeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.total_memory_bytes = prop.totalGlobalMem;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.multiprocessors = prop.multiProcessorCount;
    int previous = 0;
    if (cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(i) == cudaSuccess) {
      size_t free_bytes = 0, total_bytes = 0;
      if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
        info.free_memory_bytes = free_bytes;
      }
      cudaSetDevice(previous);
    }
    devices.push_back(info);
  }
  return devices;
}

double MeasureDeviceBandwidthGBps(int device) {
  CUDA_CHECK(cudaSetDevice(device));
  constexpr size_t kBytes = size_t{1} << 30;
  void* a = nullptr;
  void* b = nullptr;
  CUDA_CHECK(cudaMalloc(&a, kBytes));
  if (cudaMalloc(&b, kBytes) != cudaSuccess) {
    cudaGetLastError();
    cudaFree(a);
    throw CudaError("cannot allocate 2 GiB on the GPU to measure its bandwidth");
  }
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  double best_ms = 0;
  for (int i = 0; i < 6; ++i) {
    CUDA_CHECK(cudaEventRecord(start));
    CUDA_CHECK(cudaMemcpyAsync(b, a, kBytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (i > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;  // the first is a warm-up
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(kBytes) / (best_ms * 1e6);
}

namespace {
__global__ void FillKernel(float* dst, size_t n, float value) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) dst[i] = value;
}
}  // namespace

void FillOnDevice(float* dst, size_t n, float value) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  FillKernel<<<blocks, kThreads>>>(dst, n, value);
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace tandem::cuda
