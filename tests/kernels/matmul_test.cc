// MatMul (decode and prefill paths, every weight dtype) against the scalar
// reference, over odd sizes and misaligned pointers.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/kernel_test_util.h"

namespace tandem::cpu {
namespace {

template <DType kType, int kGroup = 0>
struct WeightKind {
  static constexpr DType dtype = kType;
  static constexpr int group_size = kGroup;
};

// Weights of one dtype built from f32 values, stored one byte past a 64-byte
// boundary (two bytes for 16-bit types, four for f32) so loads are misaligned.
class TestWeights {
 public:
  TestWeights(DType dtype, int group_size, int64_t rows, int64_t cols, const float* values) {
    view_.dtype = dtype;
    view_.rows = rows;
    view_.cols = cols;
    view_.group_size = group_size;
    size_t bytes = 0;
    int offset = 1;
    switch (dtype) {
      case DType::kF32:
        bytes = static_cast<size_t>(rows * cols) * 4;
        offset = 4;
        break;
      case DType::kF16:
      case DType::kBF16:
        bytes = static_cast<size_t>(rows * cols) * 2;
        offset = 2;
        break;
      case DType::kI8:
        bytes = static_cast<size_t>(rows * cols);
        break;
      case DType::kI4:
        bytes = static_cast<size_t>(rows * Int4RowBytes(cols));
        break;
      default:
        ADD_FAILURE() << "unsupported dtype";
    }
    storage_.resize(bytes + 128);
    auto base = reinterpret_cast<uintptr_t>(storage_.data());
    uint8_t* data = reinterpret_cast<uint8_t*>(((base + 63) & ~uintptr_t{63}) + offset);
    switch (dtype) {
      case DType::kF32:
        std::memcpy(data, values, bytes);
        break;
      case DType::kF16:
      case DType::kBF16:
        ConvertFromF32(values, dtype, data, static_cast<size_t>(rows * cols));
        break;
      case DType::kI8:
        scales_.resize(static_cast<size_t>(rows));
        QuantizeInt8PerRow(values, rows, cols, reinterpret_cast<int8_t*>(data), scales_.data());
        break;
      case DType::kI4:
        scales_.resize(static_cast<size_t>(rows * Int4NumGroups(cols, group_size)));
        QuantizeInt4Grouped(values, rows, cols, group_size, data, scales_.data());
        break;
      default:
        break;
    }
    view_.data = data;
    view_.scales = scales_.empty() ? nullptr : scales_.data();
  }
  const WeightMatrix& view() const { return view_; }

 private:
  std::vector<uint8_t> storage_;
  std::vector<float> scales_;
  WeightMatrix view_;
};

// Relative L2 error allowed against MatMulReference: f32 rounding, except
// where MatMul rounds the activations (matmul.h, Numerics): 16 bits per block
// for int8 weights (about 2-3e-5 on Gaussian inputs), 8 bits for int4 (about
// 5e-3). Those two are averages, checked on 64 outputs or more (a few
// outputs that nearly cancel can be off by more); every size is checked
// tightly against the reference on activations rounded as documented.
constexpr double kF32Tolerance = 2e-5;
double Tolerance(const WeightMatrix& w, int64_t T) {
  if (!RoundsActivations(w, T)) return kF32Tolerance;
  return w.dtype == DType::kI8 ? 1e-4 : 3e-2;
}

// x [T, cols] rounded as the decode path rounds it for w's dtype (matmul.h,
// Numerics): per block, q = round_to_even(x * (qmax / m)), value
// q * (m / qmax), m = the block's largest |x| (a block with m < 1e-30 is 0).
// int4: qmax 127, blocks of 32 inputs from the start of each row; int8: qmax
// 32512, blocks of 16 inputs {256c + 64k + 4j + i : k, i < 4} for j < 16,
// and for one token (T = 1) blocks of 2048 inputs from the start of the row.
// MatMulReference on these values must match MatMul to f32 rounding.
std::vector<float> RoundedAsDecode(DType dtype, const float* x, int64_t T, int64_t cols) {
  const bool int4 = dtype == DType::kI4;
  const bool consecutive = int4 || T == 1;  // blocks of consecutive inputs
  const int64_t consecutive_block = int4 ? 32 : 2048;
  const float qmax = int4 ? 127.0f : 32512.0f;
  // Inputs whose blocks are laid out together.
  const int64_t span = consecutive ? consecutive_block : 256;
  std::vector<float> out(x, x + T * cols);
  std::vector<int64_t> block;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t s = 0; s < cols; s += span) {
      for (int64_t j = 0; j < (consecutive ? 1 : 16); ++j) {
        block.clear();
        if (consecutive) {
          for (int64_t i = s; i < std::min(cols, s + span); ++i) block.push_back(t * cols + i);
        } else {
          for (int64_t k = 0; k < 4; ++k) {
            for (int64_t i = 0; i < 4; ++i) {
              const int64_t c = s + 64 * k + 4 * j + i;
              if (c < cols) block.push_back(t * cols + c);
            }
          }
        }
        float m = 0.0f;
        for (int64_t i : block) m = std::max(m, std::fabs(out[i]));
        const float inverse = m >= 1e-30f ? qmax / m : 0.0f;
        const float step = m >= 1e-30f ? m / qmax : 0.0f;
        for (int64_t i : block) out[i] = std::nearbyint(out[i] * inverse) * step;
      }
    }
  }
  return out;
}

// Checks MatMul's y [T, w.rows] for x against MatMulReference.
void ExpectMatchesReference(const float* x, int64_t T, const WeightMatrix& w, const float* bias,
                            const float* y) {
  std::vector<float> expected(static_cast<size_t>(T * w.rows));
  MatMulReference(x, T, w, bias, expected.data());
  if (!RoundsActivations(w, T) || T * w.rows >= 64) {
    EXPECT_LT(testing::RelativeL2(y, expected.data(), T * w.rows), Tolerance(w, T));
  }
  if (RoundsActivations(w, T)) {
    const std::vector<float> rounded = RoundedAsDecode(w.dtype, x, T, w.cols);
    MatMulReference(rounded.data(), T, w, bias, expected.data());
    EXPECT_LT(testing::RelativeL2(y, expected.data(), T * w.rows), kF32Tolerance)
        << "against the reference on activations rounded as the decode path does";
  }
}

template <typename Kind>
class MatMulTest : public testing::SeededTest {
 protected:
  // Compares MatMul with MatMulReference for x [T, cols], w [rows, cols].
  // outliers: every 97th input is 50x larger, as in real activations.
  void Check(ThreadPool& pool, int64_t T, int64_t rows, int64_t cols, bool with_bias,
             bool outliers = false) {
    SCOPED_TRACE(::testing::Message() << "T=" << T << " rows=" << rows << " cols=" << cols
                                      << " bias=" << with_bias << " outliers=" << outliers);
    const std::vector<float> w_values = Normal(rows * cols, 0.05f);
    TestWeights w(Kind::dtype, Kind::group_size, rows, cols, w_values.data());
    testing::MisalignedFloats x(T * cols), y(T * rows), bias(rows);
    FillNormal(x.data(), T * cols);
    if (outliers) {
      for (int64_t i = 0; i < T * cols; i += 97) x[i] *= 50.0f;
    }
    FillNormal(bias.data(), rows);
    for (int64_t i = 0; i < T * rows; ++i) y[i] = 12345.0f;  // must be overwritten
    const float* b = with_bias ? bias.data() : nullptr;
    MatMul(pool, x.data(), T, w.view(), b, y.data());
    ExpectMatchesReference(x.data(), T, w.view(), b, y.data());
  }
};

using Kinds =
    ::testing::Types<WeightKind<DType::kF32>, WeightKind<DType::kF16>, WeightKind<DType::kBF16>,
                     WeightKind<DType::kI8>, WeightKind<DType::kI4, 32>, WeightKind<DType::kI4, 64>,
                     WeightKind<DType::kI4, 128>, WeightKind<DType::kI4, 256>>;
TYPED_TEST_SUITE(MatMulTest, Kinds);

TYPED_TEST(MatMulTest, DecodeOddSizes) {
  ThreadPool pool(2);
  for (int64_t cols : {1, 7, 33, 127, 1000}) {
    for (int64_t T : {1, 2, 3, 5, 8}) {
      this->Check(pool, T, this->UniformInt(1, 300), cols, T % 2 == 1);
    }
  }
  this->Check(pool, 1, 4, 256, false);  // exact multiples of every vector width
  // Several passes of tokens over each row tile, and (int8/int4 with VNNI)
  // several blocks of tokens, up to the largest T the decode path takes.
  for (int64_t T : {9, 33, 77, 128}) this->Check(pool, T, this->UniformInt(1, 70), 300, T % 2 == 1);
}

TYPED_TEST(MatMulTest, DecodeLongRows) {
  // Rows far longer than the cached-x fast path of one token, every decode
  // batch size, Gaussian and heavy-tailed inputs.
  ThreadPool pool(2);
  for (int64_t T : {1, 2, 3, 4, 5, 8}) {
    this->Check(pool, T, this->UniformInt(5, 40), 8192 + 96, T % 2 == 0, T % 3 == 0);
  }
  this->Check(pool, 1, 9, 4096 + 1, true, true);
}

TYPED_TEST(MatMulTest, DecodeZeroAndTinyBlocks) {
  // Runs of exact zeros and of values near the f32 subnormal range: blocks
  // whose largest input is (nearly) zero.
  ThreadPool pool(2);
  const int64_t T = 3, rows = 21, cols = 1000;
  const std::vector<float> w_values = this->Normal(rows * cols, 0.05f);
  TestWeights w(TypeParam::dtype, TypeParam::group_size, rows, cols, w_values.data());
  testing::MisalignedFloats x(T * cols), y(T * rows);
  this->FillNormal(x.data(), T * cols);
  for (int64_t i = 0; i < T * cols; ++i) {
    if ((i / 40) % 3 == 0) x[i] = 0.0f;
    if ((i / 40) % 3 == 1 && i % 2 == 0) x[i] *= 1e-36f;
  }
  MatMul(pool, x.data(), T, w.view(), nullptr, y.data());
  ExpectMatchesReference(x.data(), T, w.view(), nullptr, y.data());

  // One token: int8 with VNNI rounds it per 2048 inputs, so whole blocks of
  // zeros and of tiny values, then a partial block.
  const int64_t long_cols = 3 * 2048 + 5;
  const std::vector<float> long_values = this->Normal(rows * long_cols, 0.05f);
  TestWeights long_w(TypeParam::dtype, TypeParam::group_size, rows, long_cols, long_values.data());
  testing::MisalignedFloats x1(long_cols), y1(rows);
  this->FillNormal(x1.data(), long_cols);
  for (int64_t i = 2048; i < 2 * 2048; ++i) x1[i] = 0.0f;
  for (int64_t i = 2 * 2048; i < 3 * 2048; ++i) x1[i] *= 1e-36f;
  MatMul(pool, x1.data(), 1, long_w.view(), nullptr, y1.data());
  ExpectMatchesReference(x1.data(), 1, long_w.view(), nullptr, y1.data());
}

// T past the decode path's limit (matmul.h); int4 with VNNI takes the decode
// path at every T, and the prefill path in EverySimdTarget's other targets.
TYPED_TEST(MatMulTest, PrefillOddSizes) {
  ThreadPool pool(3);
  for (int64_t cols : {1, 7, 33, 127, 1000}) {
    for (int64_t T : {129, 141, 200}) {
      this->Check(pool, T, this->UniformInt(1, 120), cols, T != 141);
    }
  }
  // Depth beyond one packed panel, rows beyond one register tile.
  this->Check(pool, 150, 67, 600, true);
}

TYPED_TEST(MatMulTest, GroupAlignedColumns) {
  // Full int4 groups only (the SIMD path with no scalar tail), and a partial last group.
  ThreadPool pool(2);
  for (int64_t cols : {256, 384, 300}) {
    this->Check(pool, 1, 33, cols, false);
    this->Check(pool, 4, 9, cols, true);
    this->Check(pool, 20, 40, cols, false);
    this->Check(pool, 130, 12, cols, true);
  }
}

TYPED_TEST(MatMulTest, SingleThreadPoolMatchesReference) {
  ThreadPool pool(1);
  this->Check(pool, 1, 131, 515, true);
  this->Check(pool, 17, 45, 515, false);
  this->Check(pool, 133, 20, 515, true);
}

TYPED_TEST(MatMulTest, SharedProductsEqualSeparateOnes) {
  // Row counts that end inside a row block, a bias on some products only.
  ThreadPool pool(2);
  for (int64_t T : {1, 3, 40, 130}) {
    SCOPED_TRACE(::testing::Message() << "T=" << T);
    const int64_t cols = 300;
    std::vector<TestWeights> weights;
    for (int64_t rows : {37, 5, 64}) {
      const std::vector<float> values = this->Normal(rows * cols, 0.05f);
      weights.emplace_back(TypeParam::dtype, TypeParam::group_size, rows, cols, values.data());
    }
    testing::MisalignedFloats x(T * cols), bias(64);
    this->FillNormal(x.data(), T * cols);
    this->FillNormal(bias.data(), 64);
    std::vector<std::vector<float>> shared, separate;
    std::vector<MatMulProduct> products;
    for (size_t i = 0; i < weights.size(); ++i) {
      const WeightMatrix& w = weights[i].view();
      shared.emplace_back(static_cast<size_t>(T * w.rows), 12345.0f);
      separate.emplace_back(static_cast<size_t>(T * w.rows));
      const float* b = i == 1 ? nullptr : bias.data();
      products.push_back({.w = &w, .bias = b, .y = shared.back().data()});
      MatMul(pool, x.data(), T, w, b, separate.back().data());
    }
    MatMulShared(pool, x.data(), T, products);
    for (size_t i = 0; i < weights.size(); ++i) EXPECT_EQ(shared[i], separate[i]) << "product " << i;
  }
}

TYPED_TEST(MatMulTest, EverySimdTarget) {
  ThreadPool pool(2);
  testing::ForEachSimdTarget([&] {
    for (int64_t cols : {7, 256, 300}) {
      this->Check(pool, 1, 37, cols, true);
      this->Check(pool, 3, 5, cols, false);
      this->Check(pool, 23, 41, cols, true);
      this->Check(pool, 140, 9, cols, false);
    }
  });
}

class MatMulColumnBlocksTest : public testing::SeededTest {};

TEST_F(MatMulColumnBlocksTest, EqualTheRowMajorMatrixOnEveryPath) {
  ThreadPool pool(2);
  struct Case {
    int64_t rows, cols, col_block;
  };
  // Blocks that divide the row, a narrower last block, one of them shorter
  // than a SIMD step, and the stage's own choice for a wide row, once with
  // enough rows that the copy runs in several pieces.
  const Case cases[] = {{37, 1000, 256}, {21, 300, 128}, {9, 130, 64},
                        {13, 8192 + 96, ColumnBlockFor(DType::kBF16, 8192 + 96)},
                        {97, 8192 + 96, ColumnBlockFor(DType::kBF16, 8192 + 96)}};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " rows=" << c.rows
                                        << " cols=" << c.cols << " col_block=" << c.col_block);
      ASSERT_GT(c.col_block, 0);
      const std::vector<float> values = Normal(c.rows * c.cols, 0.05f);
      TestWeights plain(dtype, 0, c.rows, c.cols, values.data());
      const size_t elem = DTypeBytes(dtype, 1);
      std::vector<uint8_t> blocked_bytes(elem * static_cast<size_t>(c.rows * c.cols));
      CopyToColumnBlocks(pool, plain.view().data, static_cast<int64_t>(elem) * c.cols, c.rows, 0,
                         c.cols, elem, c.col_block, blocked_bytes.data());
      WeightMatrix blocked = plain.view();
      blocked.data = blocked_bytes.data();
      blocked.col_block = c.col_block;
      ASSERT_EQ(NumColumnBlocks(blocked), (c.cols + c.col_block - 1) / c.col_block);

      std::vector<float> want(static_cast<size_t>(c.cols)), got(want.size());
      for (int64_t r : {int64_t{0}, c.rows / 2, c.rows - 1}) {
        DequantizeRow(plain.view(), r, want.data());
        DequantizeRow(blocked, r, got.data());
        EXPECT_EQ(want, got) << "row " << r;
      }
      for (int64_t T : {1, 3, 8, 140}) {  // decode (one token, tiles) and prefill
        SCOPED_TRACE(::testing::Message() << "T=" << T);
        testing::MisalignedFloats x(T * c.cols), y(T * c.rows), bias(c.rows);
        FillNormal(x.data(), T * c.cols);
        FillNormal(bias.data(), c.rows);
        for (int64_t i = 0; i < T * c.rows; ++i) y[i] = 12345.0f;  // must be overwritten
        MatMul(pool, x.data(), T, blocked, bias.data(), y.data());
        ExpectMatchesReference(x.data(), T, plain.view(), bias.data(), y.data());
      }
    }
  }
}

TEST(ColumnBlockForTest, OnlyWideRowsOfWidenedDtypesAreBlocked) {
  EXPECT_EQ(ColumnBlockFor(DType::kBF16, 2048), 0);
  EXPECT_GT(ColumnBlockFor(DType::kBF16, 8192), 0);
  EXPECT_LT(ColumnBlockFor(DType::kF32, 4096), 4096);
  EXPECT_EQ(ColumnBlockFor(DType::kI8, 8192), 0);
  EXPECT_EQ(ColumnBlockFor(DType::kI4, 8192), 0);
  const WeightMatrix one_block{.dtype = DType::kBF16, .rows = 4, .cols = 100, .col_block = 100};
  EXPECT_EQ(NumColumnBlocks(one_block), 1);
}

TEST(MatMulReferenceTest, KnownSmallProduct) {
  // [[1, 2], [3, 4], [5, 6]] · [1, -1] + [0.5, 0, -0.5] = [-0.5, -1, -1.5]
  const float w[] = {1, 2, 3, 4, 5, 6};
  const float x[] = {1, -1};
  const float bias[] = {0.5f, 0.0f, -0.5f};
  const WeightMatrix view{.dtype = DType::kF32, .rows = 3, .cols = 2, .data = w};
  float ref[3], y[3];
  MatMulReference(x, 1, view, bias, ref);
  ThreadPool pool(2);
  MatMul(pool, x, 1, view, bias, y);
  const float expected[] = {-0.5f, -1.0f, -1.5f};
  for (int i = 0; i < 3; ++i) {
    EXPECT_FLOAT_EQ(ref[i], expected[i]);
    EXPECT_FLOAT_EQ(y[i], expected[i]);
  }
}

}  // namespace
}  // namespace tandem::cpu
