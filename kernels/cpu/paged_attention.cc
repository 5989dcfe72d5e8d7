// Paged attention with grouped-query heads for a mixed prefill/decode batch.
// Work is split into items (sequence, kv head, tile of up to kQueryTile new
// tokens); an item reads each cached key/value row once for all the query
// heads sharing that kv head and all tokens of its tile. Scores are kept per
// item (two-pass softmax), everything in f32. Compiled once per SIMD target.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/paged_attention.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/paged_attention.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"
#include "kernels/cpu/vector_math-inl.h"

#ifndef TANDEM_KERNELS_CPU_PAGED_ATTENTION_SHARED_
#define TANDEM_KERNELS_CPU_PAGED_ATTENTION_SHARED_
namespace tandem::cpu::attention_internal {

inline constexpr int64_t kQueryTile = 8;
// Positions ahead of the current one whose key (value) row is prefetched: an
// item's rows are one head's slice of each position, kv_heads * head_dim
// floats apart, a stride the hardware prefetchers follow too late.
inline constexpr int64_t kPrefetchPositions = 8;

// Start of the key (or value) row of `pos` for kv head `kvh`.
inline int64_t RowOffset(const PagedKv& c, const AttentionSequence& s, int64_t pos, int kvh) {
  const int64_t block = s.block_table[pos / c.block_size];
  const int64_t slot = pos % c.block_size;
  return ((block * c.block_size + slot) * c.num_kv_heads + kvh) * c.head_dim;
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

HWY_INLINE float Dot(DF df, const float* a, const float* b, int64_t n) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), acc1);
  }
  for (; i + N <= n; i += N) acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += a * x over n elements.
HWY_INLINE void Axpy(DF df, float a, const float* x, float* y, int64_t n) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF va = hn::Set(df, a);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::MulAdd(va, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  for (; i < n; ++i) y[i] += a * x[i];
}


struct WorkItem {
  int32_t seq;
  int32_t kv_head;
  int64_t tile_begin;  // first new token of the tile, relative to the sequence
};

// Prefetches the row of `pos` in `rows` (cache.k or cache.v) for kv head kvh.
HWY_INLINE void PrefetchRow(const float* rows, const PagedKv& cache, const AttentionSequence& s,
                            int64_t pos, int kvh) {
  const float* row = rows + RowOffset(cache, s, pos, kvh);
  for (int64_t i = 0; i < cache.head_dim; i += 16) hwy::Prefetch(row + i);
}

void AttendTile(const float* q, const PagedKv& cache, const AttentionSequence& s, int kvh,
                int64_t tile_begin, int num_heads, float scale, float* out) {
  const DF df;
  const int hd = cache.head_dim;
  const int group = num_heads / cache.num_kv_heads;
  const int64_t tile = std::min(kQueryTile, s.q_len - tile_begin);
  const int64_t first_pos = s.context_len - s.q_len + tile_begin;  // position of tile token 0
  const int64_t span = first_pos + tile;                            // positions any query sees
  const int64_t rows = tile * group;                                // query vectors in the item

  static thread_local std::vector<float> scores_storage, acc_storage;
  if (scores_storage.size() < static_cast<size_t>(rows * span)) {
    scores_storage.resize(static_cast<size_t>(rows * span));
  }
  if (acc_storage.size() < static_cast<size_t>(rows * hd)) {
    acc_storage.resize(static_cast<size_t>(rows * hd));
  }
  float* scores = scores_storage.data();  // [rows, span]; row (t, g) valid up to first_pos + t
  float* acc = acc_storage.data();        // [rows, hd]
  auto q_row = [&](int64_t t, int g) {
    return q + ((s.q_begin + tile_begin + t) * num_heads + kvh * group + g) * hd;
  };

  // Pass 1: scores, each key row read once for the whole item.
  for (int64_t j = 0; j < span; ++j) {
    if (j + kPrefetchPositions < span) PrefetchRow(cache.k, cache, s, j + kPrefetchPositions, kvh);
    const float* k = cache.k + RowOffset(cache, s, j, kvh);
    const int64_t t_start = std::max<int64_t>(0, j - first_pos);  // causal: tokens at pos >= j
    for (int64_t t = t_start; t < tile; ++t) {
      for (int g = 0; g < group; ++g) {
        scores[(t * group + g) * span + j] = Dot(df, q_row(t, g), k, hd) * scale;
      }
    }
  }
  // Softmax per query vector over its visible positions.
  for (int64_t t = 0; t < tile; ++t) {
    const int64_t visible = first_pos + t + 1;
    for (int g = 0; g < group; ++g) {
      float* sr = scores + (t * group + g) * span;
      float mx = sr[0];
      for (int64_t j = 1; j < visible; ++j) mx = std::max(mx, sr[j]);
      const float inv = 1.0f / ExpShiftSum(sr, visible, mx);
      for (int64_t j = 0; j < visible; ++j) sr[j] *= inv;
    }
  }
  // Pass 2: weighted sum of values, each value row read once.
  std::fill(acc, acc + rows * hd, 0.0f);
  for (int64_t j = 0; j < span; ++j) {
    if (j + kPrefetchPositions < span) PrefetchRow(cache.v, cache, s, j + kPrefetchPositions, kvh);
    const float* v = cache.v + RowOffset(cache, s, j, kvh);
    const int64_t t_start = std::max<int64_t>(0, j - first_pos);
    for (int64_t t = t_start; t < tile; ++t) {
      for (int g = 0; g < group; ++g) {
        const int64_t r = t * group + g;
        Axpy(df, scores[r * span + j], v, acc + r * hd, hd);
      }
    }
  }
  for (int64_t t = 0; t < tile; ++t) {
    for (int g = 0; g < group; ++g) {
      float* o = out + ((s.q_begin + tile_begin + t) * num_heads + kvh * group + g) * hd;
      std::memcpy(o, acc + (t * group + g) * hd, static_cast<size_t>(hd) * sizeof(float));
    }
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
  const int64_t row = static_cast<int64_t>(cache.num_kv_heads) * cache.head_dim;
  for (const AttentionSequence& s : seqs) {
    CheckSequence(cache, s);
    for (int64_t i = 0; i < s.q_len; ++i) {
      const int64_t pos = s.context_len - s.q_len + i;
      const int64_t dst = RowOffset(cache, s, pos, 0);
      std::memcpy(cache.k + dst, k + (s.q_begin + i) * row, static_cast<size_t>(row) * sizeof(float));
      std::memcpy(cache.v + dst, v + (s.q_begin + i) * row, static_cast<size_t>(row) * sizeof(float));
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
          const float* kv = cache.k + RowOffset(cache, s, j, h / group);
          double d = 0.0;
          for (int c = 0; c < hd; ++c) d += static_cast<double>(qv[c]) * kv[c];
          sc[static_cast<size_t>(j)] = d * scale;
          mx = std::max(mx, d * scale);
        }
        double sum = 0.0;
        for (double& x : sc) sum += (x = std::exp(x - mx));
        float* o = out + ((s.q_begin + i) * num_heads + h) * hd;
        for (int c = 0; c < hd; ++c) {
          double acc = 0.0;
          for (int64_t j = 0; j <= pos; ++j) {
            acc += sc[static_cast<size_t>(j)] * cache.v[RowOffset(cache, s, j, h / group) + c];
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
