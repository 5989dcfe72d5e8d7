#include "kernels/cuda/paged_attention.h"

#include <cuda_runtime.h>

#include "core/check.h"
#include "kernels/cuda/cuda_check.h"

namespace tandem::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kDecodeSplits = 16;  // blocks sharing one row's context
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

// Partial results of one (row, head, split): the running maximum and sum of
// the split's positions, then head_dim accumulated values.
__host__ __device__ inline int64_t PartialIndex(int64_t t, int h, int z, int num_heads,
                                                int head_dim) {
  return ((t * num_heads + h) * kDecodeSplits + z) * (head_dim + 2);
}

// One block per (query row, head, split): split z takes the z-th of
// kDecodeSplits equal runs of the row's positions [0, pos], so a long
// context is spread over kDecodeSplits blocks. Each warp walks every
// kWarps-th position of the run with an online softmax (lanes split
// head_dim); the block merges its warps and stores the run's maximum, sum
// and values in `partial`, which CombineSplitsKernel reduces.
__global__ void __launch_bounds__(kWarps * 32)
    AttentionKernel(const float* q, DevicePagedKv cache, DeviceAttentionRows rows, int num_heads,
                    float scale, float* partial) {
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const int z = blockIdx.z;
  const int32_t pos = rows.positions[t];
  if (pos < 0) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int d = cache.head_dim;
  const int kvh = h / (num_heads / cache.num_kv_heads);
  const int32_t* table = rows.block_tables + rows.table_offsets[t];
  const int64_t width = static_cast<int64_t>(cache.num_kv_heads) * d;
  const int32_t run = (pos + kDecodeSplits) / kDecodeSplits;  // ceil((pos + 1) / splits)
  const int32_t run_begin = z * run, run_end = min(pos + 1, run_begin + run);

  float qr[kPerLane], acc[kPerLane];
  const float* qh = q + (t * num_heads + h) * d;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int c = lane + 32 * i;
    qr[i] = c < d ? qh[c] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int32_t j = run_begin + warp; j < run_end; j += kWarps) {
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
  // Merge the warps: rescale each to the common maximum (a warp or the whole
  // split may have had no positions: maximum -inf, sum 0).
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
  float* out = partial + PartialIndex(t, h, z, num_heads, d);
  if (threadIdx.x == 0) {
    float l_all = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      if (warp_m[w] != -INFINITY) l_all += warp_l[w] * __expf(warp_m[w] - m_all);
    }
    out[0] = m_all;
    out[1] = l_all;
  }
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      if (warp_m[w] != -INFINITY) v += warp_acc[w][c] * __expf(warp_m[w] - m_all);
    }
    out[2 + c] = v;
  }
}

// One block per (query row, head): merges the kDecodeSplits partial results
// of AttentionKernel into the row's output.
__global__ void CombineSplitsKernel(const float* partial, DeviceAttentionRows rows, int num_heads,
                                    int head_dim, float* out) {
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  if (rows.positions[t] < 0) return;
  const float* p = partial + PartialIndex(t, h, 0, num_heads, head_dim);
  const int64_t stride = head_dim + 2;
  float m_all = -INFINITY;
  for (int z = 0; z < kDecodeSplits; ++z) m_all = fmaxf(m_all, p[z * stride]);
  float l_all = 0.0f;
  for (int z = 0; z < kDecodeSplits; ++z) {
    const float mz = p[z * stride];
    if (mz != -INFINITY) l_all += p[z * stride + 1] * __expf(mz - m_all);
  }
  float* oh = out + (t * num_heads + h) * head_dim;
  for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
    float v = 0.0f;
    for (int z = 0; z < kDecodeSplits; ++z) {
      const float mz = p[z * stride];
      if (mz != -INFINITY) v += p[z * stride + 2 + c] * __expf(mz - m_all);
    }
    oh[c] = v / l_all;
  }
}

constexpr int kKvTile = 32;  // cached positions staged at once: one per lane
constexpr int kPrefillWarps = kPrefillTileRows / 4;
constexpr int kPrefillPerLane = kPrefillMaxHeadDim / 32;

// One block per (tile, head); warp w owns rows 4w..4w+3 of the tile. For
// each run of 32 cached positions: the block stages their keys and values
// in shared memory, then each warp scores its rows against them (lane =
// position, causal mask per row), updates each row's running maximum and
// sum, and accumulates the values (lanes split head_dim).
__global__ void __launch_bounds__(kPrefillWarps * 32)
    PrefillAttentionKernel(const float* q, DevicePagedKv cache, DeviceAttentionRows rows,
                           const DeviceAttentionTile* tiles, int num_heads, float scale,
                           float* out) {
  const DeviceAttentionTile tile = tiles[blockIdx.x];
  const int h = blockIdx.y;
  const int d = cache.head_dim;
  const int kvh = h / (num_heads / cache.num_kv_heads);
  const int64_t width = static_cast<int64_t>(cache.num_kv_heads) * d;
  const int32_t first_pos = rows.positions[tile.first_row];
  const int32_t last_pos = first_pos + tile.count - 1;
  const int32_t* table = rows.block_tables + rows.table_offsets[tile.first_row];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  __shared__ float sq[kPrefillTileRows][kPrefillMaxHeadDim];
  __shared__ float sk[kKvTile][kPrefillMaxHeadDim + 1];  // +1: lanes read a column
  __shared__ float sv[kKvTile][kPrefillMaxHeadDim];
  for (int i = threadIdx.x; i < kPrefillTileRows * d; i += blockDim.x) {
    const int r = i / d, c = i % d;
    sq[r][c] = r < tile.count ? q[((tile.first_row + r) * static_cast<int64_t>(num_heads) + h) * d + c] * scale
                              : 0.0f;
  }
  float m[4], l[4], acc[4][kPrefillPerLane];
#pragma unroll
  for (int rr = 0; rr < 4; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPrefillPerLane; ++i) acc[rr][i] = 0.0f;
  }
  for (int32_t j0 = 0; j0 <= last_pos; j0 += kKvTile) {
    __syncthreads();  // the previous run is consumed (and sq is written)
    for (int i = threadIdx.x; i < kKvTile * d; i += blockDim.x) {
      const int jj = i / d, c = i % d;
      const int32_t j = j0 + jj;
      float kj = 0.0f, vj = 0.0f;
      if (j <= last_pos) {
        const int64_t base = (static_cast<int64_t>(table[j / cache.block_size]) * cache.block_size +
                              j % cache.block_size) * width + static_cast<int64_t>(kvh) * d;
        kj = cache.k[base + c];
        vj = cache.v[base + c];
      }
      sk[jj][c] = kj;
      sv[jj][c] = vj;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < 4; ++rr) {
      const int r = warp * 4 + rr;
      const int32_t pos = first_pos + r;
      // Both conditions are the same on every lane of the warp.
      if (r >= tile.count || j0 > pos) continue;
      const int32_t j = j0 + lane;
      float s = -INFINITY;
      if (j <= pos) {
        float dot = 0.0f;
        for (int c = 0; c < d; ++c) dot += sq[r][c] * sk[lane][c];
        s = dot;
      }
      float run_max = s;
      for (int offset = 16; offset > 0; offset /= 2) {
        run_max = fmaxf(run_max, __shfl_xor_sync(0xffffffffu, run_max, offset));
      }
      const float m_new = fmaxf(m[rr], run_max);  // finite: position j0 <= pos is scored
      const float correction = __expf(m[rr] - m_new);
      const float p = j <= pos ? __expf(s - m_new) : 0.0f;
      float p_sum = p;
      for (int offset = 16; offset > 0; offset /= 2) {
        p_sum += __shfl_xor_sync(0xffffffffu, p_sum, offset);
      }
      l[rr] = l[rr] * correction + p_sum;
#pragma unroll
      for (int i = 0; i < kPrefillPerLane; ++i) acc[rr][i] *= correction;
      const int valid = min(kKvTile, pos - j0 + 1);
      for (int jj = 0; jj < valid; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
        for (int i = 0; i < kPrefillPerLane; ++i) {
          const int c = lane + 32 * i;
          if (c < d) acc[rr][i] += pj * sv[jj][c];
        }
      }
      m[rr] = m_new;
    }
  }
#pragma unroll
  for (int rr = 0; rr < 4; ++rr) {
    const int r = warp * 4 + rr;
    if (r >= tile.count) continue;
    float* oh = out + ((tile.first_row + r) * static_cast<int64_t>(num_heads) + h) * d;
#pragma unroll
    for (int i = 0; i < kPrefillPerLane; ++i) {
      const int c = lane + 32 * i;
      if (c < d) oh[c] = acc[rr][i] / l[rr];
    }
  }
}

}  // namespace

void PagedPrefillAttention(const float* q, const DevicePagedKv& cache,
                           const DeviceAttentionRows& rows, const DeviceAttentionTile* tiles,
                           int64_t num_tiles, int num_heads, float scale, float* out,
                           cudaStream_t stream) {
  if (num_tiles == 0) return;
  CHECK_MSG(cache.head_dim > 0 && cache.head_dim <= kPrefillMaxHeadDim,
            "head_dim must be in [1, 128] for the tiled prefill attention");
  CHECK_MSG(cache.num_kv_heads > 0 && num_heads % cache.num_kv_heads == 0,
            "num_heads must be a multiple of num_kv_heads");
  const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(num_heads));
  PrefillAttentionKernel<<<grid, kPrefillWarps * 32, 0, stream>>>(q, cache, rows, tiles,
                                                                  num_heads, scale, out);
  CUDA_CHECK(cudaGetLastError());
}

void WriteKv(const DevicePagedKv& cache, const float* k, const float* v,
             const DeviceAttentionRows& rows, cudaStream_t stream) {
  if (rows.rows == 0) return;
  WriteKvKernel<<<static_cast<unsigned>(rows.rows), 128, 0, stream>>>(cache, k, v, rows);
  CUDA_CHECK(cudaGetLastError());
}

size_t PagedAttentionScratchFloats(int64_t rows, int num_heads, int head_dim) {
  return static_cast<size_t>(rows) * static_cast<size_t>(num_heads) * kDecodeSplits *
         static_cast<size_t>(head_dim + 2);
}

void PagedAttention(const float* q, const DevicePagedKv& cache, const DeviceAttentionRows& rows,
                    int num_heads, float scale, float* scratch, float* out, cudaStream_t stream) {
  CHECK_MSG(cache.head_dim > 0 && cache.head_dim <= kMaxHeadDim, "head_dim must be in [1, 256]");
  CHECK_MSG(cache.num_kv_heads > 0 && num_heads % cache.num_kv_heads == 0,
            "num_heads must be a multiple of num_kv_heads");
  if (rows.rows == 0) return;
  const dim3 grid(static_cast<unsigned>(rows.rows), static_cast<unsigned>(num_heads),
                  static_cast<unsigned>(kDecodeSplits));
  AttentionKernel<<<grid, kWarps * 32, 0, stream>>>(q, cache, rows, num_heads, scale, scratch);
  CUDA_CHECK(cudaGetLastError());
  const dim3 combine(static_cast<unsigned>(rows.rows), static_cast<unsigned>(num_heads));
  CombineSplitsKernel<<<combine, 128, 0, stream>>>(scratch, rows, num_heads, cache.head_dim, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace tandem::cuda
