#include "kernels/cuda/device_buffer.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "kernels/cuda/cuda_check.h"

namespace tandem::cuda {

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  const cudaError_t st = cudaMalloc(&data_, bytes);
  if (st != cudaSuccess) {
    cudaGetLastError();  // clear it: out of memory is not sticky
    data_ = nullptr;
    bytes_ = 0;
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw CudaError("cannot allocate " + std::to_string(bytes) + " bytes on the GPU (" +
                    std::to_string(free_bytes) + " free of " + std::to_string(total_bytes) +
                    "): " + cudaGetErrorString(st));
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

void DeviceBuffer::CopyFromHost(const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(data_, src, std::min(bytes, bytes_), cudaMemcpyHostToDevice));
}

void DeviceBuffer::CopyToHost(void* dst, size_t bytes) const {
  CUDA_CHECK(cudaMemcpy(dst, data_, std::min(bytes, bytes_), cudaMemcpyDeviceToHost));
}

PinnedBuffer::PinnedBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  const cudaError_t st = cudaHostAlloc(&data_, bytes, cudaHostAllocPortable);
  if (st != cudaSuccess) {
    cudaGetLastError();
    data_ = nullptr;
    bytes_ = 0;
    throw CudaError("cannot allocate " + std::to_string(bytes) +
                    " bytes of pinned host memory: " + cudaGetErrorString(st));
  }
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

}  // namespace tandem::cuda
