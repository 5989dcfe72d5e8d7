#pragma once
// Element-wise and row-wise operations of a transformer layer on the GPU,
// f32 activations in device memory; the CUDA counterparts of
// kernels/cpu/ops.h with the same contracts (the CPU versions are the
// references the tests compare against). Every launcher enqueues on `stream`
// and returns without waiting; none allocates.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/matmul.h"

namespace tandem::cuda {

// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight; x, y: [T, H] (y may equal x).
void RmsNorm(const float* x, const float* weight, float eps, int64_t T, int64_t H, float* y,
             cudaStream_t stream);

// The residual add fused with the next norm: residual[t] += x[t], then
// y[t] = RmsNorm(residual[t]). residual, x, y: [T, H]; y may equal x.
void AddRmsNorm(float* residual, const float* x, const float* weight, float eps, int64_t T,
                int64_t H, float* y, cudaStream_t stream);

// y[i] += x[i], i < n.
void AddInPlace(float* y, const float* x, int64_t n, cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i]; out may equal gate or up.
void SiluMul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream);

// Rotate-half RoPE in place, as cpu::ApplyRope: the angle positions[t] *
// inv_freq[i] is evaluated in double. x: [T, heads, head_dim];
// positions: [T] device int32; inv_freq: [head_dim / 2] device double
// (cpu::RopeTable::inv_freq copied once at load).
void ApplyRope(const double* inv_freq, int head_dim, float* x, int64_t T, int heads,
               const int32_t* positions, cudaStream_t stream);

// out[t] = row ids[t] of table, widened/dequantized to f32 exactly as
// cpu::DequantizeRow. ids: [T] device, each in [0, table.rows) (validated by
// the caller on the host); out: [T, table.cols].
void EmbeddingLookup(const DeviceMatrix& table, const int32_t* ids, int64_t T, float* out,
                     cudaStream_t stream);

}  // namespace tandem::cuda
