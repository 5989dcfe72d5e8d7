#pragma once
// y = x · Wᵀ (+ bias) on the GPU with f32 activations and weights in bf16,
// f16, f32, int8 (one scale per output row) or int4 (group-wise scales): the
// CUDA counterpart of kernels/cpu/matmul.h, with the same weight layouts.
//  - decode (T <= kMaxDecodeTokens): a GEMV that streams each weight row
//    once with 16-byte loads, several in flight per thread, dequantizing in
//    registers and accumulating all T tokens in f32; bandwidth-bound.
//  - prefill (larger T, bf16/f16 weights): cuBLAS GEMM with the activations
//    rounded to the weight type and f32 accumulation and output.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tandem::cuda {

// A read-only view of a weight matrix in device memory, [rows = out
// features, cols = in features], laid out as cpu::WeightMatrix:
// kI4 packs element 2i in the low nibble, each row starting on a byte
// boundary; scales are [rows] (kI8) or [rows, ceil(cols / group_size)] (kI4).
struct DeviceMatrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  const float* scales = nullptr;
  int group_size = 0;  // kI4: a positive multiple of 32
};

inline constexpr int64_t kMaxDecodeTokens = 8;

// The decode GEMV: T in [1, kMaxDecodeTokens]. x: [T, w.cols] f32;
// bias: [w.rows] or null; y: [T, w.rows] f32, not overlapping x.
void DecodeMatMul(const float* x, int64_t T, const DeviceMatrix& w, const float* bias, float* y,
                  cudaStream_t stream);

// What the prefill GEMM needs beyond its operands: a cuBLAS handle bound to
// the stream the work runs on, and a device scratch buffer for the rounded
// activations of at least PrefillScratchBytes(T_max, cols_max) bytes.
struct GemmContext {
  cublasHandle_t cublas = nullptr;
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};
size_t PrefillScratchBytes(int64_t T, int64_t cols);

// Any T >= 0: the GEMV for small T, cuBLAS for bf16/f16 weights otherwise
// (int8/int4 weights with large T run the GEMV over groups of tokens).
void MatMul(const GemmContext& ctx, const float* x, int64_t T, const DeviceMatrix& w,
            const float* bias, float* y, cudaStream_t stream);

// cuBLAS's own rate for the prefill GEMM's form (bf16 operands, f32
// accumulation and output) on GPU `device`, in GFLOP/s: the best of five
// 8192 x 8192 x 8192 products after a warm-up. Throws CudaError when the
// device or its memory is missing.
double MeasureGemmPeakGflops(int device);

}  // namespace tandem::cuda
