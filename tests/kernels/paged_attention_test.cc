// PagedAttention against a dense causal attention computed here from the
// unpaged keys/values, for mixed batches (prefill chunks with and without a
// cached prefix, decodes) with random block tables, GQA and MHA.
#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace tandem::cpu {
namespace {

struct SeqSpec {
  int64_t prefix;  // tokens already cached before this step
  int64_t q_len;   // new tokens this step
};

class PagedAttentionTest : public testing::SeededTest {
 protected:
  void Run(int num_heads, int num_kv_heads, int head_dim, int block_size,
           const std::vector<SeqSpec>& specs, int threads) {
    SCOPED_TRACE(::testing::Message() << "heads=" << num_heads << " kv_heads=" << num_kv_heads
                                      << " head_dim=" << head_dim << " block=" << block_size);
    const int64_t kv_row = static_cast<int64_t>(num_kv_heads) * head_dim;
    const int group = num_heads / num_kv_heads;
    // Random, non-overlapping block tables drawn from a shuffled pool (with spare blocks).
    int64_t total_blocks = 0;
    for (const SeqSpec& s : specs) total_blocks += (s.prefix + s.q_len + block_size - 1) / block_size;
    const int64_t num_blocks = total_blocks + 5;
    std::vector<int32_t> pool_ids(static_cast<size_t>(num_blocks));
    std::iota(pool_ids.begin(), pool_ids.end(), 0);
    std::shuffle(pool_ids.begin(), pool_ids.end(), rng_);
    std::vector<std::vector<int32_t>> tables;
    size_t next = 0;
    for (const SeqSpec& s : specs) {
      const int64_t blocks = (s.prefix + s.q_len + block_size - 1) / block_size;
      tables.emplace_back(pool_ids.begin() + static_cast<long>(next),
                          pool_ids.begin() + static_cast<long>(next + static_cast<size_t>(blocks)));
      next += static_cast<size_t>(blocks);
    }
    // Dense keys/values of every position of every sequence: [context, kv_heads, head_dim].
    std::vector<std::vector<float>> dense_k, dense_v;
    for (const SeqSpec& s : specs) {
      dense_k.push_back(Normal((s.prefix + s.q_len) * kv_row));
      dense_v.push_back(Normal((s.prefix + s.q_len) * kv_row));
    }
    const int64_t cache_floats = num_blocks * block_size * kv_row;
    std::vector<float> k_cache(static_cast<size_t>(cache_floats), NAN);
    std::vector<float> v_cache(static_cast<size_t>(cache_floats), NAN);
    PagedKv cache{.k = k_cache.data(), .v = v_cache.data(), .num_blocks = num_blocks,
                  .block_size = block_size, .num_kv_heads = num_kv_heads, .head_dim = head_dim};

    // Earlier step: the prefixes, written through WriteKv as one prefill each.
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].prefix == 0) continue;
      const AttentionSequence earlier{.q_begin = 0, .q_len = specs[i].prefix,
                                      .context_len = specs[i].prefix,
                                      .block_table = tables[i].data()};
      WriteKv(cache, dense_k[i].data(), dense_v[i].data(), {&earlier, 1});
    }
    // This step: all new tokens packed into one batch in order.
    std::vector<AttentionSequence> seqs;
    int64_t T = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      seqs.push_back({.q_begin = T, .q_len = specs[i].q_len,
                      .context_len = specs[i].prefix + specs[i].q_len,
                      .block_table = tables[i].data()});
      T += specs[i].q_len;
    }
    std::vector<float> new_k(static_cast<size_t>(T * kv_row)), new_v(new_k.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      std::copy_n(dense_k[i].begin() + specs[i].prefix * kv_row, specs[i].q_len * kv_row,
                  new_k.begin() + seqs[i].q_begin * kv_row);
      std::copy_n(dense_v[i].begin() + specs[i].prefix * kv_row, specs[i].q_len * kv_row,
                  new_v.begin() + seqs[i].q_begin * kv_row);
    }
    WriteKv(cache, new_k.data(), new_v.data(), seqs);

    const int64_t q_size = T * num_heads * head_dim;
    testing::MisalignedFloats q(q_size), out(q_size);
    FillNormal(q.data(), q_size);
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

    // Dense causal attention, double accumulation.
    std::vector<float> expected(static_cast<size_t>(q_size));
    for (size_t i = 0; i < specs.size(); ++i) {
      for (int64_t t = 0; t < specs[i].q_len; ++t) {
        const int64_t pos = specs[i].prefix + t;
        for (int h = 0; h < num_heads; ++h) {
          const int kvh = h / group;
          const float* qv = q.data() + ((seqs[i].q_begin + t) * num_heads + h) * head_dim;
          std::vector<double> p(static_cast<size_t>(pos + 1));
          double mx = -INFINITY, sum = 0.0;
          for (int64_t j = 0; j <= pos; ++j) {
            double d = 0.0;
            for (int c = 0; c < head_dim; ++c) {
              d += static_cast<double>(qv[c]) * dense_k[i][(j * num_kv_heads + kvh) * head_dim + c];
            }
            p[static_cast<size_t>(j)] = d * scale;
            mx = std::max(mx, d * scale);
          }
          for (double& x : p) sum += (x = std::exp(x - mx));
          float* e = expected.data() + ((seqs[i].q_begin + t) * num_heads + h) * head_dim;
          for (int c = 0; c < head_dim; ++c) {
            double acc = 0.0;
            for (int64_t j = 0; j <= pos; ++j) {
              acc += p[static_cast<size_t>(j)] * dense_v[i][(j * num_kv_heads + kvh) * head_dim + c];
            }
            e[c] = static_cast<float>(acc / sum);
          }
        }
      }
    }

    ThreadPool pool(threads);
    PagedAttention(pool, q.data(), cache, seqs, num_heads, scale, out.data());
    EXPECT_LT(testing::RelativeL2(out.data(), expected.data(), q_size), 1e-5);

    std::vector<float> ref(static_cast<size_t>(q_size));
    reference::PagedAttention(q.data(), cache, seqs, num_heads, scale, ref.data());
    EXPECT_LT(testing::RelativeL2(ref.data(), expected.data(), q_size), 1e-6);
  }
};

TEST_F(PagedAttentionTest, MixedBatchWithGqa) {
  // Prefill chunk after a cached prefix, decode, fresh prefill, decode at a block edge.
  Run(8, 2, 64, 16,
      {{.prefix = 13, .q_len = 20}, {.prefix = 39, .q_len = 1}, {.prefix = 0, .q_len = 9},
       {.prefix = 31, .q_len = 1}},
      2);
}

TEST_F(PagedAttentionTest, MultiHeadAttentionRandomShapes) {
  std::vector<SeqSpec> specs;
  const int n = static_cast<int>(UniformInt(1, 5));
  for (int i = 0; i < n; ++i) {
    const bool decode = UniformInt(0, 1) == 1;
    specs.push_back({.prefix = UniformInt(decode ? 0 : 0, 70), .q_len = decode ? 1 : UniformInt(2, 40)});
  }
  Run(4, 4, 24, 16, specs, 3);
}

TEST_F(PagedAttentionTest, OddHeadDimSmallBlocksSingleQueryPerKvHead) {
  Run(6, 3, 33, 4, {{.prefix = 5, .q_len = 11}, {.prefix = 0, .q_len = 1}, {.prefix = 17, .q_len = 1}},
      2);
}

TEST_F(PagedAttentionTest, LongPrefillSingleSequenceManyHeadsPerKvHead) {
  Run(16, 2, 64, 16, {{.prefix = 0, .q_len = 150}}, 2);
}

TEST_F(PagedAttentionTest, EverySimdTarget) {
  testing::ForEachSimdTarget([&] {
    Run(4, 2, 40, 16, {{.prefix = 7, .q_len = 12}, {.prefix = 20, .q_len = 1}}, 2);
  });
}

TEST_F(PagedAttentionTest, DecodeOnlyBatch) {
  std::vector<SeqSpec> specs;
  for (int i = 0; i < 6; ++i) specs.push_back({.prefix = UniformInt(0, 100), .q_len = 1});
  Run(8, 1, 64, 16, specs, 2);
}

}  // namespace
}  // namespace tandem::cpu
