#pragma once
// Device-side helpers shared by the .cu files: widening bf16/f16 bit
// patterns and unpacking quantized weights. Included only by .cu sources.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/matmul.h"

namespace tandem::cuda::detail {

__device__ __forceinline__ float Bf16ToFloat(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ float F16ToFloat(uint16_t bits) {
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

// Signed nibble `k` (0 = low) of byte b, in [-8, 7].
__device__ __forceinline__ int Nibble(uint32_t b, int k) {
  return static_cast<int>((b >> (4 * k)) & 0xF) - (((b >> (4 * k)) & 0x8) ? 16 : 0);
}

// Element (r, c) of w widened to f32, exactly as cpu::DequantizeRow.
__device__ __forceinline__ float LoadElement(const DeviceMatrix& w, int64_t r, int64_t c) {
  switch (w.dtype) {
    case DType::kF32:
      return static_cast<const float*>(w.data)[r * w.cols + c];
    case DType::kBF16:
      return Bf16ToFloat(static_cast<const uint16_t*>(w.data)[r * w.cols + c]);
    case DType::kF16:
      return F16ToFloat(static_cast<const uint16_t*>(w.data)[r * w.cols + c]);
    case DType::kI8:
      return static_cast<float>(static_cast<const int8_t*>(w.data)[r * w.cols + c]) * w.scales[r];
    case DType::kI4: {
      const int64_t row_bytes = (w.cols + 1) / 2;
      const uint8_t b = static_cast<const uint8_t*>(w.data)[r * row_bytes + c / 2];
      const int64_t groups = (w.cols + w.group_size - 1) / w.group_size;
      return static_cast<float>(Nibble(b, static_cast<int>(c & 1))) *
             w.scales[r * groups + c / w.group_size];
    }
    default:
      return 0.0f;
  }
}

}  // namespace tandem::cuda::detail
