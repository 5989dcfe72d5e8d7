#include "kernels/cuda/cuda_check.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

namespace tandem::cuda {

void ThrowIfCudaError(int code, const char* expr, const char* file, int line) {
  if (code == cudaSuccess) return;
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                  cudaGetErrorName(static_cast<cudaError_t>(code)) + " (" +
                  cudaGetErrorString(static_cast<cudaError_t>(code)) + ")");
}

void ThrowIfCublasError(int code, const char* expr, const char* file, int line) {
  if (code == CUBLAS_STATUS_SUCCESS) return;
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                  " failed: cuBLAS status " + std::to_string(code));
}

void ThrowIfNcclError(int code, const char* expr, const char* file, int line) {
  if (code == ncclSuccess) return;
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                  " failed: NCCL " + ncclGetErrorString(static_cast<ncclResult_t>(code)));
}

}  // namespace tandem::cuda
