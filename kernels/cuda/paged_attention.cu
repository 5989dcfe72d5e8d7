#include "kernels/cuda/paged_attention.h"

#include <cuda_runtime.h>

#include "core/check.h"
#include "kernels/cuda/cuda_check.h"

namespace tandem::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kPerLane = kMaxHeadDim / 32;

__global__ void WriteKvKernel(DevicePagedKv cache, const float* k, const float* v,
                              DeviceAttentionRows rows) {
  const int64_t t = blockIdx.x;
  const int32_t pos = rows.positions[t];
  if (pos < 0) return;
  const int32_t block = rows.block_tables[rows.table_offsets[t] + pos / cache.block_size];
  const int64_t width = static_cast<int64_t>(cache.num_kv_heads) * cache.head_dim;
  const int64_t dst = (static_cast<int64_t>(block) * cache.block_size + pos % cache.block_size) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    cache.k[dst + i] = k[t * width + i];
    cache.v[dst + i] = v[t * width + i];
  }
}

// One block per (query row, head). Each warp walks every kWarps-th cached
// position with an online softmax (lanes split head_dim); the warps' partial
// results are merged at the end.
__global__ void __launch_bounds__(kWarps * 32)
    AttentionKernel(const float* q, DevicePagedKv cache, DeviceAttentionRows rows, int num_heads,
                    float scale, float* out) {
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const int32_t pos = rows.positions[t];
  if (pos < 0) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int d = cache.head_dim;
  const int kvh = h / (num_heads / cache.num_kv_heads);
  const int32_t* table = rows.block_tables + rows.table_offsets[t];
  const int64_t width = static_cast<int64_t>(cache.num_kv_heads) * d;

  float qr[kPerLane], acc[kPerLane];
  const float* qh = q + (t * num_heads + h) * d;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int c = lane + 32 * i;
    qr[i] = c < d ? qh[c] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int32_t j = warp; j <= pos; j += kWarps) {
    const int64_t base = (static_cast<int64_t>(table[j / cache.block_size]) * cache.block_size +
                          j % cache.block_size) * width + static_cast<int64_t>(kvh) * d;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int c = lane + 32 * i;
      if (c < d) s += qr[i] * cache.k[base + c];
    }
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    const float m_new = fmaxf(m, s);
    const float correction = __expf(m - m_new);
    const float p = __expf(s - m_new);
    l = l * correction + p;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int c = lane + 32 * i;
      acc[i] = acc[i] * correction + (c < d ? p * cache.v[base + c] : 0.0f);
    }
    m = m_new;
  }
  // Merge the warps: rescale each to the common maximum.
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  __shared__ float warp_acc[kWarps][kMaxHeadDim];
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int c = lane + 32 * i;
    if (c < d) warp_acc[warp][c] = acc[i];
  }
  __syncthreads();
  float m_all = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, warp_m[w]);
  float l_all = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    if (warp_m[w] != -INFINITY) l_all += warp_l[w] * __expf(warp_m[w] - m_all);
  }
  float* oh = out + (t * num_heads + h) * d;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      if (warp_m[w] != -INFINITY) v += warp_acc[w][c] * __expf(warp_m[w] - m_all);
    }
    oh[c] = v / l_all;
  }
}

}  // namespace

void WriteKv(const DevicePagedKv& cache, const float* k, const float* v,
             const DeviceAttentionRows& rows, cudaStream_t stream) {
  if (rows.rows == 0) return;
  WriteKvKernel<<<static_cast<unsigned>(rows.rows), 128, 0, stream>>>(cache, k, v, rows);
  CUDA_CHECK(cudaGetLastError());
}

void PagedAttention(const float* q, const DevicePagedKv& cache, const DeviceAttentionRows& rows,
                    int num_heads, float scale, float* out, cudaStream_t stream) {
  CHECK_MSG(cache.head_dim > 0 && cache.head_dim <= kMaxHeadDim, "head_dim must be in [1, 256]");
  CHECK_MSG(cache.num_kv_heads > 0 && num_heads % cache.num_kv_heads == 0,
            "num_heads must be a multiple of num_kv_heads");
  if (rows.rows == 0) return;
  const dim3 grid(static_cast<unsigned>(rows.rows), static_cast<unsigned>(num_heads));
  AttentionKernel<<<grid, kWarps * 32, 0, stream>>>(q, cache, rows, num_heads, scale, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace tandem::cuda
