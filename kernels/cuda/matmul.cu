#include "kernels/cuda/matmul.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "core/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dequant.cuh"

namespace tandem::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kUnroll = 4;  // 16-byte weight loads in flight per lane

// Elements of each dtype in one 16-byte load.
template <DType D>
__host__ __device__ constexpr int ElementsPerVector() {
  return D == DType::kF32 ? 4 : D == DType::kI8 ? 16 : D == DType::kI4 ? 32 : 8;
}

template <DType D>
__device__ __forceinline__ int64_t RowBytes(int64_t cols) {
  if constexpr (D == DType::kF32) return cols * 4;
  if constexpr (D == DType::kI8) return cols;
  if constexpr (D == DType::kI4) return (cols + 1) / 2;
  return cols * 2;
}

// Element j of a 16-byte vector, widened (int8/int4: unscaled integer value).
template <DType D>
__device__ __forceinline__ float VectorElement(const uint4& v, int j) {
  if constexpr (D == DType::kF32) {
    return __uint_as_float((&v.x)[j]);
  } else if constexpr (D == DType::kBF16 || D == DType::kF16) {
    const uint32_t w = (&v.x)[j / 2];
    const uint16_t bits = static_cast<uint16_t>(j % 2 == 0 ? w & 0xFFFF : w >> 16);
    return D == DType::kBF16 ? detail::Bf16ToFloat(bits) : detail::F16ToFloat(bits);
  } else if constexpr (D == DType::kI8) {
    const uint32_t w = (&v.x)[j / 4];
    return static_cast<float>(static_cast<int8_t>((w >> (8 * (j % 4))) & 0xFF));
  } else {  // kI4: byte j / 2, low nibble first
    const uint32_t w = (&v.x)[j / 8];
    return static_cast<float>(detail::Nibble(w >> (8 * ((j / 2) % 4)), j % 2));
  }
}

// One warp per output row: lanes stream the row in 16-byte vectors (kUnroll
// loads in flight), multiply with all T tokens, and reduce by shuffles.
// Requires (checked by the launcher) 16-byte aligned weights and x, and rows
// that are a whole number of vectors (for kI4 also group_size % 32 == 0).
template <DType D, int T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    GemvKernel(DeviceMatrix w, const float* __restrict__ x, const float* __restrict__ bias,
               float* __restrict__ y) {
  constexpr int kElems = ElementsPerVector<D>();
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  if (row >= w.rows) return;
  const int lane = threadIdx.x % 32;
  const uint4* wrow = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(w.data) +
                                                     row * RowBytes<D>(w.cols));
  const int64_t vectors = w.cols / kElems;
  const int64_t groups = D == DType::kI4 ? (w.cols + w.group_size - 1) / w.group_size : 0;
  float acc[T] = {};
  for (int64_t v0 = lane; v0 < vectors; v0 += 32 * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * 32;
      wv[u] = v < vectors ? __ldg(wrow + v) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * 32;
      if (v >= vectors) break;
      const int64_t c0 = v * kElems;
      float wf[kElems];
#pragma unroll
      for (int j = 0; j < kElems; ++j) wf[j] = VectorElement<D>(wv[u], j);
      float scale = 1.0f;
      if constexpr (D == DType::kI4) scale = w.scales[row * groups + c0 / w.group_size];
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const float4* xv = reinterpret_cast<const float4*>(x + t * w.cols + c0);
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < kElems / 4; ++j) {
          const float4 xx = __ldg(xv + j);
          s += wf[4 * j] * xx.x + wf[4 * j + 1] * xx.y + wf[4 * j + 2] * xx.z +
               wf[4 * j + 3] * xx.w;
        }
        acc[t] += s * scale;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    float s = acc[t];
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) {
      if constexpr (D == DType::kI8) s *= w.scales[row];
      y[t * w.rows + row] = s + (bias != nullptr ? bias[row] : 0.0f);
    }
  }
}

// Any layout or alignment: one warp per row, element by element.
__global__ void GemvGenericKernel(DeviceMatrix w, const float* x, int64_t T, const float* bias,
                                  float* y) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  if (row >= w.rows) return;
  const int lane = threadIdx.x % 32;
  for (int64_t t = 0; t < T; ++t) {
    float s = 0.0f;
    for (int64_t c = lane; c < w.cols; c += 32) s += detail::LoadElement(w, row, c) * x[t * w.cols + c];
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) y[t * w.rows + row] = s + (bias != nullptr ? bias[row] : 0.0f);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t ElementsPerVector(DType d) {
  switch (d) {
    case DType::kF32: return 4;
    case DType::kI8: return 16;
    case DType::kI4: return 32;
    default: return 8;
  }
}

template <DType D>
void LaunchGemv(const float* x, int64_t T, const DeviceMatrix& w, const float* bias, float* y,
                cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const unsigned threads = kWarpsPerBlock * 32;
  switch (T) {
#define TANDEM_GEMV_CASE(n) \
  case n: GemvKernel<D, n><<<blocks, threads, 0, stream>>>(w, x, bias, y); break;
    TANDEM_GEMV_CASE(1)
    TANDEM_GEMV_CASE(2)
    TANDEM_GEMV_CASE(3)
    TANDEM_GEMV_CASE(4)
    TANDEM_GEMV_CASE(5)
    TANDEM_GEMV_CASE(6)
    TANDEM_GEMV_CASE(7)
    TANDEM_GEMV_CASE(8)
#undef TANDEM_GEMV_CASE
    default: break;
  }
}

__global__ void RoundActivationsKernel(const float* x, int64_t n, bool bf16, void* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  if (bf16) {
    static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(x[i]);
  } else {
    static_cast<__half*>(out)[i] = __float2half_rn(x[i]);
  }
}

__global__ void AddBiasKernel(float* y, const float* bias, int64_t rows, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += bias[i % rows];
}

}  // namespace

void DecodeMatMul(const float* x, int64_t T, const DeviceMatrix& w, const float* bias, float* y,
                  cudaStream_t stream) {
  CHECK_MSG(T >= 1 && T <= kMaxDecodeTokens, "DecodeMatMul: T out of [1, kMaxDecodeTokens]");
  if (w.rows == 0) return;
  const int64_t per_vector = ElementsPerVector(w.dtype);
  const bool vectorized = Aligned16(w.data) && Aligned16(x) && w.cols % per_vector == 0 &&
                          (w.dtype != DType::kI4 || (w.group_size > 0 && w.group_size % 32 == 0));
  if (!vectorized) {
    const unsigned blocks = static_cast<unsigned>((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
    GemvGenericKernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(w, x, T, bias, y);
  } else {
    switch (w.dtype) {
      case DType::kF32: LaunchGemv<DType::kF32>(x, T, w, bias, y, stream); break;
      case DType::kBF16: LaunchGemv<DType::kBF16>(x, T, w, bias, y, stream); break;
      case DType::kF16: LaunchGemv<DType::kF16>(x, T, w, bias, y, stream); break;
      case DType::kI8: LaunchGemv<DType::kI8>(x, T, w, bias, y, stream); break;
      case DType::kI4: LaunchGemv<DType::kI4>(x, T, w, bias, y, stream); break;
      default: CHECK_MSG(false, "DecodeMatMul: unsupported weight dtype");
    }
  }
  CUDA_CHECK(cudaGetLastError());
}

size_t PrefillScratchBytes(int64_t T, int64_t cols) {
  return static_cast<size_t>(T * cols) * sizeof(uint16_t);
}

void MatMul(const GemmContext& ctx, const float* x, int64_t T, const DeviceMatrix& w,
            const float* bias, float* y, cudaStream_t stream) {
  if (T == 0 || w.rows == 0) return;
  const bool gemm = T > kMaxDecodeTokens && (w.dtype == DType::kBF16 || w.dtype == DType::kF16);
  if (!gemm) {
    for (int64_t t0 = 0; t0 < T; t0 += kMaxDecodeTokens) {
      const int64_t n = std::min(kMaxDecodeTokens, T - t0);
      DecodeMatMul(x + t0 * w.cols, n, w, bias, y + t0 * w.rows, stream);
    }
    return;
  }
  CHECK_MSG(ctx.cublas != nullptr && ctx.scratch_bytes >= PrefillScratchBytes(T, w.cols),
                 "MatMul: the GemmContext lacks a cuBLAS handle or enough scratch");
  const bool bf16 = w.dtype == DType::kBF16;
  const int64_t n = T * w.cols;
  constexpr int kThreads = 256;
  RoundActivationsKernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0,
                           stream>>>(x, n, bf16, ctx.scratch);
  CUDA_CHECK(cudaGetLastError());
  // Row-major y[T, rows] = x[T, cols] · W[rows, cols]ᵀ is, column-major,
  // yᵀ (rows x T) = W (op T of the cols x rows view) · xᵀ (cols x T).
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  CUBLAS_CHECK(cublasSetStream(ctx.cublas, stream));
  CUBLAS_CHECK(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows),
                            static_cast<int>(T), static_cast<int>(w.cols), &alpha, w.data, type,
                            static_cast<int>(w.cols), ctx.scratch, type, static_cast<int>(w.cols),
                            &beta, y, CUDA_R_32F, static_cast<int>(w.rows), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
  if (bias != nullptr) {
    const int64_t m = T * w.rows;
    AddBiasKernel<<<static_cast<unsigned>((m + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        y, bias, w.rows, m);
    CUDA_CHECK(cudaGetLastError());
  }
}

namespace {
// The measurement's device memory, cuBLAS handle and events, freed however
// it ends.
struct GemmProbe {
  void* a = nullptr;
  void* b = nullptr;
  void* c = nullptr;
  cublasHandle_t handle = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  ~GemmProbe() {
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (handle != nullptr) cublasDestroy(handle);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
  }
};
}  // namespace

double MeasureGemmPeakGflops(int device) {
  CUDA_CHECK(cudaSetDevice(device));
  constexpr int kN = 8192;
  constexpr size_t kElems = size_t{kN} * kN;
  GemmProbe p;
  CUDA_CHECK(cudaMalloc(&p.a, kElems * sizeof(uint16_t)));
  CUDA_CHECK(cudaMalloc(&p.b, kElems * sizeof(uint16_t)));
  CUDA_CHECK(cudaMalloc(&p.c, kElems * sizeof(float)));
  CUDA_CHECK(cudaMemset(p.a, 0, kElems * sizeof(uint16_t)));
  CUDA_CHECK(cudaMemset(p.b, 0, kElems * sizeof(uint16_t)));
  CUBLAS_CHECK(cublasCreate(&p.handle));
  CUDA_CHECK(cudaEventCreate(&p.start));
  CUDA_CHECK(cudaEventCreate(&p.stop));
  const float alpha = 1.0f, beta = 0.0f;
  double best_ms = 0;
  for (int i = 0; i < 6; ++i) {
    CUDA_CHECK(cudaEventRecord(p.start));
    CUBLAS_CHECK(cublasGemmEx(p.handle, CUBLAS_OP_T, CUBLAS_OP_N, kN, kN, kN, &alpha, p.a,
                              CUDA_R_16BF, kN, p.b, CUDA_R_16BF, kN, &beta, p.c, CUDA_R_32F, kN,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CUDA_CHECK(cudaEventRecord(p.stop));
    CUDA_CHECK(cudaEventSynchronize(p.stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, p.start, p.stop));
    if (i > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;  // the first is a warm-up
  }
  return 2.0 * kN * static_cast<double>(kN) * kN / (best_ms * 1e6);
}

}  // namespace tandem::cuda
