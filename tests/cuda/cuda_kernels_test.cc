// The CUDA layer ops and matrix multiplies against the CPU references, over
// every weight dtype, odd sizes (the element-wise fallback) and sizes the
// vectorized GEMV takes. On a machine without a GPU every test skips.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "tests/cuda/require_gpu.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/paged_attention.h"
#include "tests/kernels/kernel_test_util.h"

namespace tandem::cuda {
namespace {

using cpu::testing::RelativeL2;

class CudaKernelTest : public cpu::testing::SeededTest {
 protected:
  template <typename T>
  static DeviceBuffer Upload(const std::vector<T>& v) {
    return DeviceBuffer::FromHost(std::span<const T>(v));
  }
  static std::vector<float> Download(const DeviceBuffer& b, size_t n) {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> out(n);
    b.CopyToHost(out.data(), n * sizeof(float));
    return out;
  }
};

// Host weights of one dtype plus their device copy and both views.
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  cpu::WeightMatrix host;
  DeviceBuffer d_bytes, d_scales;
  DeviceMatrix device;
};

Weights MakeWeights(DType dtype, int group, int64_t rows, int64_t cols, const std::vector<float>& f) {
  Weights w;
  w.host = {.dtype = dtype, .rows = rows, .cols = cols, .group_size = group};
  if (dtype == DType::kI8) {
    w.bytes.resize(static_cast<size_t>(rows * cols));
    w.scales.resize(static_cast<size_t>(rows));
    cpu::QuantizeInt8PerRow(f.data(), rows, cols, reinterpret_cast<int8_t*>(w.bytes.data()),
                            w.scales.data());
  } else if (dtype == DType::kI4) {
    w.bytes.resize(static_cast<size_t>(rows * cpu::Int4RowBytes(cols)));
    w.scales.resize(static_cast<size_t>(rows * cpu::Int4NumGroups(cols, group)));
    cpu::QuantizeInt4Grouped(f.data(), rows, cols, group, w.bytes.data(), w.scales.data());
  } else {
    w.bytes.resize(DTypeBytes(dtype, static_cast<size_t>(rows * cols)));
    ConvertFromF32(f.data(), dtype, w.bytes.data(), static_cast<size_t>(rows * cols));
  }
  w.host.data = w.bytes.data();
  w.host.scales = w.scales.empty() ? nullptr : w.scales.data();
  w.d_bytes = DeviceBuffer::FromHost(std::span<const uint8_t>(w.bytes));
  if (!w.scales.empty()) w.d_scales = DeviceBuffer::FromHost(std::span<const float>(w.scales));
  w.device = {.dtype = dtype, .rows = rows, .cols = cols, .data = w.d_bytes.data(),
              .scales = w.d_scales.As<float>(), .group_size = group};
  return w;
}

TEST_F(CudaKernelTest, RmsNormAndFusedResidualMatchTheCpu) {
  REQUIRE_GPU();
  for (int64_t H : {64, 1000, 4096 + 7}) {
    const int64_t T = UniformInt(1, 9);
    std::vector<float> x = Normal(T * H), res = Normal(T * H), weight = Normal(H);
    DeviceBuffer dx = Upload(x), dres = Upload(res), dw = Upload(weight), dy(x.size() * 4);
    RmsNorm(dx.As<float>(), dw.As<float>(), 1e-5f, T, H, dy.As<float>(), nullptr);
    std::vector<float> want(x.size());
    cpu::reference::RmsNorm(x.data(), weight.data(), 1e-5f, T, H, want.data());
    EXPECT_LT(RelativeL2(Download(dy, x.size()).data(), want.data(), T * H), 1e-6) << "H " << H;

    AddRmsNorm(dres.As<float>(), dx.As<float>(), dw.As<float>(), 1e-5f, T, H, dy.As<float>(),
               nullptr);
    std::vector<float> sum(x.size());
    for (size_t i = 0; i < x.size(); ++i) sum[i] = res[i] + x[i];
    cpu::reference::RmsNorm(sum.data(), weight.data(), 1e-5f, T, H, want.data());
    EXPECT_LT(RelativeL2(Download(dres, x.size()).data(), sum.data(), T * H), 1e-7);
    EXPECT_LT(RelativeL2(Download(dy, x.size()).data(), want.data(), T * H), 1e-6) << "H " << H;
  }
}

TEST_F(CudaKernelTest, SiluMulAndAddMatchTheCpu) {
  REQUIRE_GPU();
  const int64_t n = UniformInt(1, 100000);
  std::vector<float> gate = Normal(n, 3.0f), up = Normal(n);
  DeviceBuffer dg = Upload(gate), du = Upload(up), dout(n * 4);
  SiluMul(dg.As<float>(), du.As<float>(), dout.As<float>(), n, nullptr);
  std::vector<float> want(n);
  cpu::reference::SiluMul(gate.data(), up.data(), want.data(), n);
  EXPECT_LT(RelativeL2(Download(dout, n).data(), want.data(), n), 1e-6);
  AddInPlace(dg.As<float>(), du.As<float>(), n, nullptr);
  for (int64_t i = 0; i < n; ++i) want[i] = gate[i] + up[i];
  EXPECT_LT(RelativeL2(Download(dg, n).data(), want.data(), n), 1e-7);
}

TEST_F(CudaKernelTest, RopeWithLlama3ScalingMatchesTheCpu) {
  REQUIRE_GPU();
  cpu::RopeParams p{.head_dim = 64, .theta = 500000.0, .scaling = cpu::RopeScaling::kLlama3,
                    .factor = 32.0, .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                    .original_max_position = 8192.0};
  cpu::RopeTable table(p);
  const int64_t T = UniformInt(1, 40);
  const int heads = 3;
  std::vector<float> x = Normal(T * heads * p.head_dim);
  std::vector<int32_t> positions(static_cast<size_t>(T));
  for (auto& pos : positions) pos = static_cast<int32_t>(UniformInt(0, 131071));
  DeviceBuffer dx = Upload(x), dpos = Upload(positions), dfreq = Upload(table.inv_freq);
  ApplyRope(dfreq.As<double>(), p.head_dim, dx.As<float>(), T, heads, dpos.As<int32_t>(), nullptr);
  cpu::reference::ApplyRope(table, x.data(), T, heads, positions.data());
  EXPECT_LT(RelativeL2(Download(dx, x.size()).data(), x.data(), static_cast<int64_t>(x.size())),
            1e-6);
}

struct DTypeCase {
  DType dtype;
  int group;
};
const DTypeCase kCases[] = {{DType::kF32, 0}, {DType::kBF16, 0}, {DType::kF16, 0},
                            {DType::kI8, 0},  {DType::kI4, 32},  {DType::kI4, 128}};

TEST_F(CudaKernelTest, EmbeddingMatchesDequantizeRowForEveryDType) {
  REQUIRE_GPU();
  for (const DTypeCase& c : kCases) {
    const int64_t vocab = 300, H = 256 + 32 * UniformInt(0, 4);
    Weights w = MakeWeights(c.dtype, c.group, vocab, H, Normal(vocab * H));
    std::vector<int32_t> ids = {0, 299, 17, 17, 150};
    DeviceBuffer dids = Upload(ids), dout(ids.size() * H * 4);
    EmbeddingLookup(w.device, dids.As<int32_t>(), static_cast<int64_t>(ids.size()),
                    dout.As<float>(), nullptr);
    std::vector<float> got = Download(dout, ids.size() * H), want(static_cast<size_t>(H));
    for (size_t t = 0; t < ids.size(); ++t) {
      cpu::DequantizeRow(w.host, ids[t], want.data());
      ASSERT_EQ(std::memcmp(got.data() + t * H, want.data(), H * 4), 0)
          << DTypeName(c.dtype) << " token " << t;
    }
  }
}

// Decode GEMV (T <= 8) and MatMul (cuBLAS for larger T) against the scalar
// reference on the same quantized weights. Columns that are a multiple of 32
// take the vectorized kernel; odd ones the element-wise fallback.
TEST_F(CudaKernelTest, MatMulMatchesTheReferenceForEveryDType) {
  REQUIRE_GPU();
  cublasHandle_t cublas;
  CUBLAS_CHECK(cublasCreate(&cublas));
  for (const DTypeCase& c : kCases) {
    for (int64_t cols : {int64_t{4096}, int64_t{2048 + 128}, int64_t{1000 + 3}}) {
      for (int64_t T : {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{37}}) {
        SCOPED_TRACE(::testing::Message() << DTypeName(c.dtype) << " group " << c.group
                                          << " cols " << cols << " T " << T);
        const int64_t rows = UniformInt(1, 300);
        Weights w = MakeWeights(c.dtype, c.group, rows, cols, Normal(rows * cols, 0.05f));
        std::vector<float> x = Normal(T * cols), bias = Normal(rows);
        DeviceBuffer dx = Upload(x), dbias = Upload(bias), dy(T * rows * 4);
        DeviceBuffer scratch(PrefillScratchBytes(T, cols));
        GemmContext ctx{.cublas = cublas, .scratch = scratch.data(),
                        .scratch_bytes = scratch.bytes()};
        MatMul(ctx, dx.As<float>(), T, w.device, dbias.As<float>(), dy.As<float>(), nullptr);
        std::vector<float> want(static_cast<size_t>(T * rows));
        cpu::MatMulReference(x.data(), T, w.host, bias.data(), want.data());
        // The cuBLAS path rounds activations to the 16-bit weight type.
        const bool rounded = T > kMaxDecodeTokens &&
                             (c.dtype == DType::kBF16 || c.dtype == DType::kF16);
        const double tolerance = rounded ? (c.dtype == DType::kBF16 ? 1e-2 : 2e-3) : 1e-5;
        EXPECT_LT(RelativeL2(Download(dy, want.size()).data(), want.data(), T * rows), tolerance);
      }
    }
  }
  CUBLAS_CHECK(cublasDestroy(cublas));
}

// A mixed batch (decode steps and prefill chunks with cached prefixes, GQA)
// written and attended on the GPU equals the CPU WriteKv + scalar reference.
// Every sequence's cached prefix is written by an earlier WriteKv on both
// sides (the device lays a block out its own way), then the step's rows are
// written and attend. The row kernel covers every row; the tiled prefill
// kernel the rows of the prefill chunks, cut into tiles as the stage does.
TEST_F(CudaKernelTest, PagedAttentionMixedBatchMatchesTheReference) {
  REQUIRE_GPU();
  for (int head_dim : {64, 128, 80}) {
    SCOPED_TRACE(::testing::Message() << "head_dim " << head_dim);
    const int kv_heads = 2, heads = 8, block = 16;
    const int64_t num_blocks = 64;
    const int64_t width = int64_t{kv_heads} * head_dim;
    // Sequences: (q_len, context_len): decode, long decode, prefill chunk
    // after a prefix, a first chunk, a chunk of 2 after a prefix.
    const std::vector<std::pair<int64_t, int64_t>> shapes = {
        {1, 1}, {1, 200}, {37, 90}, {20, 20}, {2, 33}};
    std::vector<std::vector<int32_t>> tables;
    std::vector<int32_t> free_blocks(num_blocks);
    for (int32_t b = 0; b < num_blocks; ++b) free_blocks[b] = b;
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng_);
    std::vector<cpu::AttentionSequence> seqs, prefixes;
    std::vector<int32_t> positions, prefix_positions, flat_tables;
    std::vector<int64_t> offsets, prefix_offsets;
    std::vector<DeviceAttentionTile> tiles;
    int64_t T = 0, P = 0;
    for (auto [q_len, context] : shapes) {
      std::vector<int32_t> table;
      for (int64_t i = 0; i < (context + block - 1) / block; ++i) {
        table.push_back(free_blocks.back());
        free_blocks.pop_back();
      }
      tables.push_back(table);
      const int64_t offset = static_cast<int64_t>(flat_tables.size());
      flat_tables.insert(flat_tables.end(), table.begin(), table.end());
      const int64_t prefix = context - q_len;
      for (int64_t i = 0; i < prefix; ++i) {
        prefix_positions.push_back(static_cast<int32_t>(i));
        prefix_offsets.push_back(offset);
      }
      if (prefix > 0) {
        prefixes.push_back({.q_begin = P, .q_len = prefix, .context_len = prefix,
                            .block_table = tables.back().data()});
      }
      P += prefix;
      for (int64_t i = 0; i < q_len; ++i) {
        positions.push_back(static_cast<int32_t>(prefix + i));
        offsets.push_back(offset);
      }
      if (q_len > 1) {
        for (int64_t r = 0; r < q_len; r += kPrefillTileRows) {
          tiles.push_back({.first_row = static_cast<int32_t>(T + r),
                           .count = static_cast<int32_t>(std::min<int64_t>(kPrefillTileRows, q_len - r))});
        }
      }
      seqs.push_back({.q_begin = T, .q_len = q_len, .context_len = context,
                      .block_table = tables.back().data()});
      T += q_len;
    }
    positions.push_back(-1);  // a padding row nobody owns
    offsets.push_back(0);
    const int64_t rows = T + 1;
    std::vector<float> q = Normal(rows * heads * head_dim), k = Normal(rows * width),
                       v = Normal(rows * width), prefix_k = Normal(P * width),
                       prefix_v = Normal(P * width);
    std::vector<float> out_init(static_cast<size_t>(rows * heads * head_dim), 7.0f);
    const int64_t cache_n = num_blocks * block * width;
    std::vector<float> zeros(static_cast<size_t>(cache_n), 0.0f);

    DeviceBuffer dk_cache = Upload(zeros), dv_cache = Upload(zeros), dq = Upload(q),
                 dk = Upload(k), dv = Upload(v), dpos = Upload(positions),
                 doff = Upload(offsets), dtables = Upload(flat_tables), dout = Upload(out_init),
                 dtiled_out = Upload(out_init), dtiles = Upload(tiles),
                 dprefix_k = Upload(prefix_k), dprefix_v = Upload(prefix_v),
                 dprefix_pos = Upload(prefix_positions), dprefix_off = Upload(prefix_offsets);
    DevicePagedKv dcache{.k = dk_cache.As<float>(), .v = dv_cache.As<float>(),
                         .num_blocks = num_blocks, .block_size = block, .num_kv_heads = kv_heads,
                         .head_dim = head_dim};
    DeviceAttentionRows dprefix{.positions = dprefix_pos.As<int32_t>(),
                                .table_offsets = dprefix_off.As<int64_t>(),
                                .block_tables = dtables.As<int32_t>(), .rows = P};
    DeviceAttentionRows drows{.positions = dpos.As<int32_t>(), .table_offsets = doff.As<int64_t>(),
                              .block_tables = dtables.As<int32_t>(), .rows = rows};
    WriteKv(dcache, dprefix_k.As<float>(), dprefix_v.As<float>(), dprefix, nullptr);
    WriteKv(dcache, dk.As<float>(), dv.As<float>(), drows, nullptr);
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    DeviceBuffer dscratch(PagedAttentionScratchFloats(rows, heads, head_dim) * sizeof(float));
    PagedAttention(dq.As<float>(), dcache, drows, heads, scale, dscratch.As<float>(),
                   dout.As<float>(), nullptr);
    PagedPrefillAttention(dq.As<float>(), dcache, drows, dtiles.As<DeviceAttentionTile>(),
                          static_cast<int64_t>(tiles.size()), heads, scale,
                          dtiled_out.As<float>(), nullptr);

    std::vector<float> k_cache = zeros, v_cache = zeros;
    cpu::PagedKv cache{.k = k_cache.data(), .v = v_cache.data(), .num_blocks = num_blocks,
                       .block_size = block, .num_kv_heads = kv_heads, .head_dim = head_dim};
    cpu::WriteKv(cache, prefix_k.data(), prefix_v.data(), prefixes);
    cpu::WriteKv(cache, k.data(), v.data(), seqs);
    std::vector<float> want = out_init;
    cpu::reference::PagedAttention(q.data(), cache, seqs, heads, scale, want.data());

    const int64_t row_floats = int64_t{heads} * head_dim;
    std::vector<float> got = Download(dout, want.size());
    EXPECT_LT(RelativeL2(got.data(), want.data(), T * row_floats), 1e-5);
    for (int64_t i = T * row_floats; i < rows * row_floats; ++i) {
      ASSERT_EQ(got[i], 7.0f) << "the padding row was written";
    }
    std::vector<float> tiled = Download(dtiled_out, want.size());
    std::vector<bool> in_tile(static_cast<size_t>(rows), false);
    for (const DeviceAttentionTile& t : tiles) {
      for (int32_t r = 0; r < t.count; ++r) in_tile[static_cast<size_t>(t.first_row + r)] = true;
      const int64_t begin = int64_t{t.first_row} * row_floats;
      EXPECT_LT(RelativeL2(tiled.data() + begin, want.data() + begin, t.count * row_floats), 1e-5)
          << "tile at row " << t.first_row;
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (in_tile[static_cast<size_t>(r)]) continue;
      for (int64_t i = r * row_floats; i < (r + 1) * row_floats; ++i) {
        ASSERT_EQ(tiled[i], 7.0f) << "row " << r << " is in no tile but was written";
      }
    }
  }
}

TEST_F(CudaKernelTest, AllocationFailureNamesTheBytes) {
  REQUIRE_GPU();
  try {
    DeviceBuffer huge(size_t{1} << 50);
    FAIL() << "a petabyte allocation succeeded";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(size_t{1} << 50)), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace tandem::cuda
