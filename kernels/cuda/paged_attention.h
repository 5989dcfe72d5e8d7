#pragma once
// Attention over a paged KV cache on the GPU for a mixed batch (decode steps
// and prefill chunks), the counterpart of kernels/cpu/paged_attention.h with
// the same causal rule and block tables; the device lays a block out in its
// own way (below), which only these kernels read. The batch is described per
// query row rather than per sequence, so one launch covers every row
// whatever sequence it belongs to; PagedPrefillAttention takes the rows of
// prefill chunks in tiles instead, so each cached key and value is read once
// per tile rather than once per row.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tandem::cuda {

// The KV cache of one layer in device memory, f32:
// k, v: [num_blocks, block_size, num_kv_heads, head_dim].
struct DevicePagedKv {
  float* k = nullptr;
  float* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 16;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// Per query row, in device memory. Row t of q/k/v/out is the token at
// absolute position positions[t] of its sequence, whose block table starts at
// block_tables + table_offsets[t] (position p lives in block
// table[p / block_size], slot p % block_size). positions[t] < 0 marks a row
// that belongs to no sequence: it is neither written nor attended, and its
// output is left untouched. The host validated every id and position.
struct DeviceAttentionRows {
  const int32_t* positions = nullptr;
  const int64_t* table_offsets = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t rows = 0;
};

// Stores row t of k and v ([rows, num_kv_heads, head_dim]) at positions[t].
void WriteKv(const DevicePagedKv& cache, const float* k, const float* v,
             const DeviceAttentionRows& rows, cudaStream_t stream);

// out[t][h] = sum over positions j <= positions[t] of
// softmax_j(scale * q[t][h] · K[j][kvh]) V[j][kvh], kvh = h / (num_heads /
// num_kv_heads), with the keys and values of every row already written.
// q, out: [rows, num_heads, head_dim]; head_dim <= 256. Each row's context
// is split in equal runs over several blocks, whose partial softmax sums a
// second kernel merges (so a long context does not rest on one block):
// scratch holds PagedAttentionScratchFloats(rows.rows, num_heads, head_dim).
size_t PagedAttentionScratchFloats(int64_t rows, int num_heads, int head_dim);
void PagedAttention(const float* q, const DevicePagedKv& cache, const DeviceAttentionRows& rows,
                    int num_heads, float scale, float* scratch, float* out, cudaStream_t stream);

// Up to kPrefillTileRows consecutive query rows of one sequence: rows
// [first_row, first_row + count) at positions positions[first_row] + i,
// sharing the block table of row first_row. The host builds them.
inline constexpr int kPrefillTileRows = 16;
inline constexpr int kPrefillMaxHeadDim = 128;
struct DeviceAttentionTile {
  int32_t first_row = 0;
  int32_t count = 0;  // in [1, kPrefillTileRows]
};

// The same as PagedAttention for the rows the tiles cover (others are left
// untouched): one block per (tile, head) stages 32 cached positions at a time
// in shared memory and reuses them for every row of the tile, with an
// online softmax per row. tiles: [num_tiles] in device memory; head_dim <=
// kPrefillMaxHeadDim unless there are no tiles (then nothing is launched).
void PagedPrefillAttention(const float* q, const DevicePagedKv& cache,
                           const DeviceAttentionRows& rows, const DeviceAttentionTile* tiles,
                           int64_t num_tiles, int num_heads, float scale, float* out,
                           cudaStream_t stream);

}  // namespace tandem::cuda
