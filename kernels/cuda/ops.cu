#include "kernels/cuda/ops.h"

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dequant.cuh"

namespace tandem::cuda {
namespace {

constexpr int kNormThreads = 256;
constexpr int kElementThreads = 256;

unsigned BlocksFor(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// Sum over the block; every thread gets the result.
__device__ float BlockSum(float v) {
  __shared__ float partial[kNormThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < kNormThreads / 32; ++i) total += partial[i];
  __syncthreads();  // partial may be reused by a following call
  return total;
}

// One block per row. With `residual`, adds x into it first and normalises it.
__global__ void RmsNormKernel(float* residual, const float* x, const float* weight, float eps,
                              int64_t H, float* y) {
  const int64_t row = blockIdx.x;
  const float* in = x + row * H;
  float* res = residual != nullptr ? residual + row * H : nullptr;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    float v = in[i];
    if (res != nullptr) {
      v += res[i];
      res[i] = v;
    }
    sum += v * v;
  }
  const float inv = rsqrtf(BlockSum(sum) / static_cast<float>(H) + eps);
  const float* src = res != nullptr ? res : in;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) y[row * H + i] = src[i] * inv * weight[i];
}

__global__ void AddKernel(float* y, const float* x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += x[i];
}

__global__ void SiluMulKernel(const float* gate, const float* up, float* out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// One thread per rotated pair (t, h, i < head_dim / 2).
__global__ void RopeKernel(const double* inv_freq, int half, float* x, int64_t pairs, int heads,
                           const int32_t* positions) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= pairs) return;
  const int i = static_cast<int>(p % half);
  const int64_t th = p / half;  // t * heads + h
  const int64_t t = th / heads;
  const double a = static_cast<double>(positions[t]) * inv_freq[i];
  double s, c;
  sincos(a, &s, &c);
  float* v = x + th * 2 * half;
  const float x0 = v[i], x1 = v[i + half];
  v[i] = static_cast<float>(x0 * c - x1 * s);
  v[i + half] = static_cast<float>(x1 * c + x0 * s);
}

__global__ void EmbeddingKernel(DeviceMatrix table, const int32_t* ids, int64_t T, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * table.cols) return;
  const int64_t t = i / table.cols, c = i % table.cols;
  out[i] = detail::LoadElement(table, ids[t], c);
}

}  // namespace

void RmsNorm(const float* x, const float* weight, float eps, int64_t T, int64_t H, float* y,
             cudaStream_t stream) {
  if (T == 0) return;
  RmsNormKernel<<<static_cast<unsigned>(T), kNormThreads, 0, stream>>>(nullptr, x, weight, eps, H,
                                                                        y);
  CUDA_CHECK(cudaGetLastError());
}

void AddRmsNorm(float* residual, const float* x, const float* weight, float eps, int64_t T,
                int64_t H, float* y, cudaStream_t stream) {
  if (T == 0) return;
  RmsNormKernel<<<static_cast<unsigned>(T), kNormThreads, 0, stream>>>(residual, x, weight, eps,
                                                                        H, y);
  CUDA_CHECK(cudaGetLastError());
}

void AddInPlace(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  AddKernel<<<BlocksFor(n, kElementThreads), kElementThreads, 0, stream>>>(y, x, n);
  CUDA_CHECK(cudaGetLastError());
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  SiluMulKernel<<<BlocksFor(n, kElementThreads), kElementThreads, 0, stream>>>(gate, up, out, n);
  CUDA_CHECK(cudaGetLastError());
}

void ApplyRope(const double* inv_freq, int head_dim, float* x, int64_t T, int heads,
               const int32_t* positions, cudaStream_t stream) {
  const int half = head_dim / 2;
  const int64_t pairs = T * heads * half;
  if (pairs == 0) return;
  RopeKernel<<<BlocksFor(pairs, kElementThreads), kElementThreads, 0, stream>>>(
      inv_freq, half, x, pairs, heads, positions);
  CUDA_CHECK(cudaGetLastError());
}

void EmbeddingLookup(const DeviceMatrix& table, const int32_t* ids, int64_t T, float* out,
                     cudaStream_t stream) {
  const int64_t n = T * table.cols;
  if (n == 0) return;
  EmbeddingKernel<<<BlocksFor(n, kElementThreads), kElementThreads, 0, stream>>>(table, ids, T,
                                                                                  out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace tandem::cuda
