// Paged attention with grouped-query heads for a mixed prefill/decode batch.
// Work is split into items (sequence, kv head, tile of up to kQueryTile new
// tokens); an item reads each cached key/value block once for all the query
// heads sharing that kv head and all tokens of its tile. Keys are stored
// transposed per block (paged_attention.h), so the scores of a block come out
// as whole vectors of positions without horizontal sums, and values are
// summed in registers. Scores are kept per item (two-pass softmax),
// everything in f32. Compiled once per SIMD target.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/prefetch.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/paged_attention.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
#include "kernels/cpu/vector_math-inl.h"

#ifndef TANDEM_KERNELS_CPU_PAGED_ATTENTION_SHARED_
#define TANDEM_KERNELS_CPU_PAGED_ATTENTION_SHARED_
namespace tandem::cpu::attention_internal {

inline constexpr int64_t kQueryTile = 8;
// Start of the tile of (kv head, block) in cache.k or cache.v: keys
// [head_dim][block_size], values [block_size][head_dim].
inline int64_t TileOffset(const PagedKv& c, int64_t block, int kvh) {
  return (kvh * c.num_blocks + block) * int64_t{c.block_size} * c.head_dim;
}

// Where dimension d of the key of `pos` (kv head kvh) is stored in cache.k.
inline int64_t KeyIndex(const PagedKv& c, const AttentionSequence& s, int64_t pos, int kvh,
                        int d) {
  return TileOffset(c, s.block_table[pos / c.block_size], kvh) +
         int64_t{d} * c.block_size + pos % c.block_size;
}

// Start of the value row of `pos` (kv head kvh) in cache.v.
inline int64_t ValueRow(const PagedKv& c, const AttentionSequence& s, int64_t pos, int kvh) {
  return TileOffset(c, s.block_table[pos / c.block_size], kvh) +
         (pos % c.block_size) * int64_t{c.head_dim};
}

inline void CheckSequence(const PagedKv& c, const AttentionSequence& s) {
  CHECK(s.q_len >= 1 && s.q_len <= s.context_len);
  CHECK(s.q_begin >= 0);
  CHECK(s.block_table != nullptr);
  const int64_t blocks = (s.context_len + c.block_size - 1) / c.block_size;
  for (int64_t b = 0; b < blocks; ++b) {
    CHECK(s.block_table[b] >= 0 && s.block_table[b] < c.num_blocks);
  }
}

}  // namespace tandem::cpu::attention_internal
#endif  // TANDEM_KERNELS_CPU_PAGED_ATTENTION_SHARED_

HWY_BEFORE_NAMESPACE();
namespace tandem::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using namespace attention_internal;  // NOLINT(build/namespaces)

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

struct WorkItem {
  int32_t seq;
  int32_t kv_head;
  int64_t tile_begin;  // first new token of the tile, relative to the sequence
};

// A tile of one kv head continues the previous block's tile in memory
// when the blocks are consecutive (PagedKv), which the hardware prefetchers
// stream; where the next block lies elsewhere they lose the trail. So the
// score pass touches the first cache line of the key and value tiles of the
// block kPrefetchBlocks ahead (into L2), which starts their DRAM accesses and
// page walks, and the prefetchers follow on. Prefetching every line of those
// tiles at once stalled the core on its own queue of misses (decode attention
// over 640 and 2048 positions from DRAM at 0.73 and 0.69 of the bandwidth
// probe, against 0.76 and 0.80 so, on 2 Zen 4 cores).
//
// A decode step's item reads its keys and values once, from DRAM, and without
// more help it waited on them and computed in turn (2 Emerald Rapids vCPUs:
// 8.6 GB/s a core, where the same item computes at 32 GB/s from cache and a
// plain read streams 13). Both passes then also prefetch, beside each line
// they read, the same line of the tile kPrefetchBlocks ahead: one prefetch
// per load, spread through the loop, which keeps DRAM busy while the core
// computes. Decode attention over 128, 576 and 2048 positions ran 1.04x,
// 1.16-1.18x and 1.22x faster (in-process A/B); 2, 6 or 8 blocks ahead ran
// 1.5-5% slower than 4. Prefill chunks read their keys and values once per
// tile of queries, mostly from cache, and ran 6% slower with it, so they go
// without.
constexpr int64_t kPrefetchBlocks = 4;

// Starts fetching block b's key and value tiles of kv head kvh, if b < blocks.
HWY_INLINE void PrefetchBlock(const PagedKv& cache, const AttentionSequence& s, int kvh,
                              int64_t b, int64_t blocks) {
  if (b >= blocks) return;
  const int64_t offset = TileOffset(cache, s.block_table[b], kvh);
  PrefetchToL2(cache.k + offset);
  PrefetchToL2(cache.v + offset);
}

// Query vectors scored or summed together: each load of a key or value vector
// serves this many of them.
constexpr int kRowBatch = 4;
// Key blocks scored together: each broadcast of a query value serves this
// many of them. One block at a time took more than one load per FMA (a key
// vector and four query broadcasts per four FMAs), past what the load ports
// keep up with.
constexpr int kBlockBatch = 4;

// Scores of the positions of B blocks for query rows [0, R): score_rows[r]
// [b * bs + j] = scale * q_r · key_j of block b, for every slot of the blocks
// (slots past the sequence's end produce values nobody reads). kt[b]: the
// key tile [hd][bs] of block b; bs % N == 0. ahead[b]: a key tile whose
// lines are prefetched beside kt[b]'s (nullptr: none).
template <int R, int B>
HWY_INLINE void ScoreBlocks(DF df, const float* const* q_rows, const float* const (&kt)[B],
                            const float* const (&ahead)[B], int hd, int bs, float scale,
                            float* const* score_rows) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t c = 0; c < bs; c += N) {
    VF acc[R][B];
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b) acc[r][b] = hn::Zero(df);
    for (int d = 0; d < hd; ++d) {
      VF k[B];
      for (int b = 0; b < B; ++b) {
        if (ahead[b] != nullptr) PrefetchToL2(ahead[b] + int64_t{d} * bs + c);
        k[b] = hn::LoadU(df, kt[b] + int64_t{d} * bs + c);
      }
      for (int r = 0; r < R; ++r) {
        const VF qd = hn::Set(df, q_rows[r][d]);
        for (int b = 0; b < B; ++b) acc[r][b] = hn::MulAdd(qd, k[b], acc[r][b]);
      }
    }
    const VF vscale = hn::Set(df, scale);
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b)
        hn::StoreU(hn::Mul(acc[r][b], vscale), df, score_rows[r] + b * int64_t{bs} + c);
  }
}

// out_r[c0, c0 + V * N) = inv[r] * the sum over j < span of p_r[j] *
// value_j[c0, ...) for rows [0, R), accumulated in registers. prefetch: each
// value line read brings in the same line kPrefetchBlocks blocks on.
template <int R, int V>
HWY_INLINE void SumValues(DF df, const PagedKv& cache, const AttentionSequence& s, int kvh,
                          int64_t span, const float* const* p_rows, const float* inv, int64_t c0,
                          float* const* out_rows, bool prefetch) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = hn::Zero(df);
  const int bs = cache.block_size;
  const int64_t blocks = (span + bs - 1) / bs;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* vt = cache.v + TileOffset(cache, s.block_table[b], kvh);
    const int64_t later = b + kPrefetchBlocks;
    const float* ahead = prefetch && later < blocks
                             ? cache.v + TileOffset(cache, s.block_table[later], kvh) + c0
                             : nullptr;
    const int64_t j0 = b * bs, n = std::min<int64_t>(bs, span - j0);
    for (int64_t i = 0; i < n; ++i) {
      const float* row = vt + i * cache.head_dim + c0;
      if (ahead != nullptr) {
        for (int v = 0; v < V; ++v) PrefetchToL2(ahead + i * cache.head_dim + v * N);
      }
      VF x[V];
      for (int v = 0; v < V; ++v) x[v] = hn::LoadU(df, row + v * N);
      for (int r = 0; r < R; ++r) {
        const VF p = hn::Set(df, p_rows[r][j0 + i]);
        for (int v = 0; v < V; ++v) acc[r][v] = hn::MulAdd(p, x[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const VF vinv = hn::Set(df, inv[r]);
    for (int v = 0; v < V; ++v) hn::StoreU(hn::Mul(acc[r][v], vinv), df, out_rows[r] + c0 + v * N);
  }
}

// Calls fn.template operator()<K>() for K = min(n, 4).
template <typename Fn>
HWY_INLINE void WithUpTo4(int64_t n, Fn&& fn) {
  static_assert(kRowBatch == 4 && kBlockBatch == 4);
  switch (std::min<int64_t>(n, 4)) {
    case 1:
      return fn.template operator()<1>();
    case 2:
      return fn.template operator()<2>();
    case 3:
      return fn.template operator()<3>();
    default:
      return fn.template operator()<4>();
  }
}

void AttendTile(const float* q, const PagedKv& cache, const AttentionSequence& s, int kvh,
                int64_t tile_begin, int num_heads, float scale, float* out) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int hd = cache.head_dim;
  const int bs = cache.block_size;
  const int group = num_heads / cache.num_kv_heads;
  const int64_t tile = std::min(kQueryTile, s.q_len - tile_begin);
  const int64_t first_pos = s.context_len - s.q_len + tile_begin;  // position of tile token 0
  const int64_t span = first_pos + tile;                            // positions any query sees
  const int64_t blocks = (span + bs - 1) / bs;
  const int64_t stride = blocks * bs;                               // scores per row
  const int64_t rows = tile * group;  // query vectors in the item, row t * group + g
  // A decode item prefetches every line kPrefetchBlocks ahead, in its first
  // batch of query rows (the later batches find the lines in cache).
  const bool spread = s.q_len == 1;

  // Per thread: the scores [rows, stride], then each row's 1 / softmax sum.
  static thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<size_t>(rows * (stride + 1))) {
    scratch.resize(static_cast<size_t>(rows * (stride + 1)));
  }
  float* scores = scratch.data();
  float* inv = scores + rows * stride;
  // Where row r's query vector sits in q, and its output in out.
  auto row_offset = [&](int64_t r) {
    return ((s.q_begin + tile_begin + r / group) * num_heads + kvh * group + r % group) * hd;
  };

  // Pass 1: scores, each key block read once per batch of query rows.
  for (int64_t b = 0; b < kPrefetchBlocks; ++b) PrefetchBlock(cache, s, kvh, b, blocks);
  for (int64_t b0 = 0; b0 < blocks; b0 += kBlockBatch) {
    for (int64_t b = b0; b < b0 + kBlockBatch; ++b) {
      PrefetchBlock(cache, s, kvh, b + kPrefetchBlocks, blocks);
    }
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBatch) {
      WithUpTo4(rows - r0, [&]<int R>() {
        const float* q_rows[R];
        float* score_rows[R];
        for (int r = 0; r < R; ++r) {
          q_rows[r] = q + row_offset(r0 + r);
          score_rows[r] = scores + (r0 + r) * stride + b0 * bs;
        }
        if (bs % N == 0) {
          WithUpTo4(blocks - b0, [&]<int B>() {
            const float* kt[B];
            const float* ahead[B];
            for (int b = 0; b < B; ++b) {
              kt[b] = cache.k + TileOffset(cache, s.block_table[b0 + b], kvh);
              const int64_t later = b0 + b + kPrefetchBlocks;
              ahead[b] = spread && r0 == 0 && later < blocks
                             ? cache.k + TileOffset(cache, s.block_table[later], kvh)
                             : nullptr;
            }
            ScoreBlocks<R, B>(df, q_rows, kt, ahead, hd, bs, scale, score_rows);
          });
        } else {
          for (int64_t b = b0; b < std::min(blocks, b0 + kBlockBatch); ++b) {
            const float* kt = cache.k + TileOffset(cache, s.block_table[b], kvh);
            for (int r = 0; r < R; ++r) {
              for (int j = 0; j < bs; ++j) {
                float dot = 0.0f;
                for (int d = 0; d < hd; ++d) dot += q_rows[r][d] * kt[int64_t{d} * bs + j];
                score_rows[r][(b - b0) * bs + j] = dot * scale;
              }
            }
          }
        }
      });
    }
  }
  // Softmax per query vector over its visible positions, its normalization
  // left to pass 2; the positions it may not see (causal) get probability 0,
  // so pass 2 treats all rows alike.
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t visible = first_pos + r / group + 1;
    float* sr = scores + r * stride;
    inv[r] = 1.0f / ExpShiftSum(sr, visible, MaxOf(sr, visible));
    std::fill(sr + visible, sr + span, 0.0f);
  }
  // Pass 2: weighted sums of values in registers, kRowBatch rows by up to 4
  // vectors of head_dim at a time.
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBatch) {
    WithUpTo4(rows - r0, [&]<int R>() {
      const float* p_rows[R];
      float* out_rows[R];
      for (int r = 0; r < R; ++r) {
        p_rows[r] = scores + (r0 + r) * stride;
        out_rows[r] = out + row_offset(r0 + r);
      }
      const float* row_inv = inv + r0;
      int64_t c0 = 0;
      for (; c0 + 4 * N <= hd; c0 += 4 * N) {
        SumValues<R, 4>(df, cache, s, kvh, span, p_rows, row_inv, c0, out_rows, spread && r0 == 0);
      }
      for (; c0 + N <= hd; c0 += N) {
        SumValues<R, 1>(df, cache, s, kvh, span, p_rows, row_inv, c0, out_rows, spread && r0 == 0);
      }
      for (; c0 < hd; ++c0) {  // head_dim not a multiple of the vector width
        for (int r = 0; r < R; ++r) {
          float acc = 0.0f;
          for (int64_t j = 0; j < span; ++j) acc += p_rows[r][j] * cache.v[ValueRow(cache, s, j, kvh) + c0];
          out_rows[r][c0] = acc * row_inv[r];
        }
      }
    });
  }
}

void PagedAttentionImpl(ThreadPool& pool, const float* q, const PagedKv& cache,
                        std::span<const AttentionSequence> seqs, int num_heads, float scale,
                        float* out) {
  // The work list lives per calling thread and only grows.
  static thread_local std::vector<WorkItem> items;
  items.clear();
  for (size_t i = 0; i < seqs.size(); ++i) {
    for (int kvh = 0; kvh < cache.num_kv_heads; ++kvh) {
      for (int64_t t = 0; t < seqs[i].q_len; t += kQueryTile) {
        items.push_back({static_cast<int32_t>(i), kvh, t});
      }
    }
  }
  const WorkItem* list = items.data();
  pool.ParallelFor(
      static_cast<int64_t>(items.size()),
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const WorkItem& w = list[i];
          AttendTile(q, cache, seqs[static_cast<size_t>(w.seq)], w.kv_head, w.tile_begin,
                     num_heads, scale, out);
        }
      },
      1);
}

}  // namespace HWY_NAMESPACE
}  // namespace tandem::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tandem::cpu {
using namespace attention_internal;  // NOLINT(build/namespaces)

HWY_EXPORT(PagedAttentionImpl);

void WriteKv(PagedKv& cache, const float* k, const float* v,
             std::span<const AttentionSequence> seqs) {
  const int64_t hd = cache.head_dim;
  const size_t head_bytes = static_cast<size_t>(hd) * sizeof(float);
  for (const AttentionSequence& s : seqs) {
    CheckSequence(cache, s);
    for (int64_t i = 0; i < s.q_len; ++i) {
      const int64_t pos = s.context_len - s.q_len + i;
      const int64_t src = (s.q_begin + i) * cache.num_kv_heads * hd;
      for (int kvh = 0; kvh < cache.num_kv_heads; ++kvh) {
        for (int d = 0; d < hd; ++d) cache.k[KeyIndex(cache, s, pos, kvh, d)] = k[src + kvh * hd + d];
        std::memcpy(cache.v + ValueRow(cache, s, pos, kvh), v + src + kvh * hd, head_bytes);
      }
    }
  }
}

void PagedAttention(ThreadPool& pool, const float* q, const PagedKv& cache,
                    std::span<const AttentionSequence> seqs, int num_heads, float scale,
                    float* out) {
  CHECK(cache.num_kv_heads > 0 && cache.head_dim > 0 && cache.block_size > 0);
  CHECK(num_heads > 0 && num_heads % cache.num_kv_heads == 0);
  for (const AttentionSequence& s : seqs) CheckSequence(cache, s);
  HWY_DYNAMIC_DISPATCH(PagedAttentionImpl)(pool, q, cache, seqs, num_heads, scale, out);
}

namespace reference {
void PagedAttention(const float* q, const PagedKv& cache, std::span<const AttentionSequence> seqs,
                    int num_heads, float scale, float* out) {
  const int hd = cache.head_dim;
  const int group = num_heads / cache.num_kv_heads;
  for (const AttentionSequence& s : seqs) {
    for (int64_t i = 0; i < s.q_len; ++i) {
      const int64_t pos = s.context_len - s.q_len + i;
      for (int h = 0; h < num_heads; ++h) {
        const float* qv = q + ((s.q_begin + i) * num_heads + h) * hd;
        std::vector<double> sc(static_cast<size_t>(pos + 1));
        double mx = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          double d = 0.0;
          for (int c = 0; c < hd; ++c) {
            d += static_cast<double>(qv[c]) * cache.k[KeyIndex(cache, s, j, h / group, c)];
          }
          sc[static_cast<size_t>(j)] = d * scale;
          mx = std::max(mx, d * scale);
        }
        double sum = 0.0;
        for (double& x : sc) sum += (x = std::exp(x - mx));
        float* o = out + ((s.q_begin + i) * num_heads + h) * hd;
        for (int c = 0; c < hd; ++c) {
          double acc = 0.0;
          for (int64_t j = 0; j <= pos; ++j) {
            acc += sc[static_cast<size_t>(j)] * cache.v[ValueRow(cache, s, j, h / group) + c];
          }
          o[c] = static_cast<float>(acc / sum);
        }
      }
    }
  }
}
}  // namespace reference

}  // namespace tandem::cpu
#endif  // HWY_ONCE
