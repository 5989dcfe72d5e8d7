#pragma once
// Attention over a paged KV cache for a mixed batch: every sequence brings
// q_len new tokens (1 for a decode step, more for a prefill chunk), whose keys
// and values are first written into the cache (WriteKv) and which then attend
// causally to everything cached before them plus the earlier tokens of their
// own chunk (PagedAttention). Grouped-query attention: query head h reads kv
// head h / (num_heads / num_kv_heads). All math in f32.
#include <cstdint>
#include <span>

#include "kernels/cpu/thread_pool.h"

namespace tandem::cpu {

// The KV cache of one layer. Memory is owned by the caller.
struct PagedKv {
  // Per (kv head, block) one contiguous tile, so that attention (one item
  // per kv head) streams whole tiles, one after another where a sequence's
  // blocks are consecutive:
  //   k: [num_kv_heads, num_blocks, head_dim, block_size] (keys transposed);
  //   v: [num_kv_heads, num_blocks, block_size, head_dim].
  float* k = nullptr;
  float* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 16;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// One sequence of the batch. Its new tokens are rows [q_begin, q_begin + q_len)
// of q / k / v / out, at absolute positions
// [context_len - q_len, context_len).
struct AttentionSequence {
  int64_t q_begin = 0;      // first row of this sequence in q, k, v, out
  int64_t q_len = 0;        // new tokens: 1 = decode, > 1 = prefill chunk; >= 1
  int64_t context_len = 0;  // tokens in the cache after this step, new ones included
  // [ceil(context_len / block_size)] block ids in [0, num_blocks); position p
  // lives in block block_table[p / block_size], slot p % block_size. Blocks of
  // different sequences must not overlap (checked by the KV cache owner).
  const int32_t* block_table = nullptr;
};

// Stores the new tokens' keys and values: row q_begin + i of k/v goes to
// position context_len - q_len + i of its sequence.
// k, v: [T, num_kv_heads, head_dim], T >= max(q_begin + q_len).
// CHECKs that q_len <= context_len and block ids are in range (the caller
// validated everything that came from outside).
void WriteKv(PagedKv& cache, const float* k, const float* v,
             std::span<const AttentionSequence> seqs);

// out[t][h] = sum_j softmax_j(scale * q[t][h] · K[j][kvh]) V[j][kvh] over the
// positions j <= position of token t of its sequence (causal), kvh =
// h / (num_heads / cache.num_kv_heads). The keys/values of the new tokens must
// already be in the cache (WriteKv).
// q, out: [T, num_heads, head_dim] (out must not overlap q); num_heads is a
// multiple of cache.num_kv_heads; scale is usually 1 / sqrt(head_dim).
// Rows of q not covered by any sequence are left untouched in out.
void PagedAttention(ThreadPool& pool, const float* q, const PagedKv& cache,
                    std::span<const AttentionSequence> seqs, int num_heads, float scale,
                    float* out);

namespace reference {
// Scalar reference of PagedAttention (double accumulation, exact exp).
void PagedAttention(const float* q, const PagedKv& cache, std::span<const AttentionSequence> seqs,
                    int num_heads, float scale, float* out);
}  // namespace reference

}  // namespace tandem::cpu
