#pragma once
// CUDA_CHECK / CUBLAS_CHECK / NCCL_CHECK report the failing expression, file and line and
// throw CudaError, so a node can refuse an assignment instead of aborting.
#include <stdexcept>
#include <string>

namespace tandem::cuda {

class CudaError : public std::runtime_error {
 public:
  explicit CudaError(const std::string& what) : std::runtime_error(what) {}
};

// Throws CudaError when `code` (a cudaError_t) is not cudaSuccess.
void ThrowIfCudaError(int code, const char* expr, const char* file, int line);
// Throws CudaError when `code` (a cublasStatus_t) is not CUBLAS_STATUS_SUCCESS.
void ThrowIfCublasError(int code, const char* expr, const char* file, int line);
// Throws CudaError when `code` (an ncclResult_t) is not ncclSuccess.
void ThrowIfNcclError(int code, const char* expr, const char* file, int line);

}  // namespace tandem::cuda

#define CUDA_CHECK(expr) \
  ::tandem::cuda::ThrowIfCudaError(static_cast<int>(expr), #expr, __FILE__, __LINE__)
#define CUBLAS_CHECK(expr) \
  ::tandem::cuda::ThrowIfCublasError(static_cast<int>(expr), #expr, __FILE__, __LINE__)
#define NCCL_CHECK(expr) \
  ::tandem::cuda::ThrowIfNcclError(static_cast<int>(expr), #expr, __FILE__, __LINE__)
