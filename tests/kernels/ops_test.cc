// RmsNorm, SiluMul, Softmax, LogSumExp, ArgMax, AddInPlace and EmbeddingLookup against their
// scalar references over odd sizes and misaligned pointers.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace tandem::cpu {
namespace {

class OpsTest : public testing::SeededTest {};

constexpr int64_t kOddSizes[] = {1, 7, 33, 127, 1000, 2048};
// The SIMD exp is accurate to a few ulp; double-precision references differ by that.
constexpr double kExpTolerance = 5e-6;

TEST_F(OpsTest, RmsNormMatchesReference) {
  for (int64_t H : kOddSizes) {
    SCOPED_TRACE(::testing::Message() << "H=" << H);
    const int64_t T = UniformInt(1, 5);
    testing::MisalignedFloats x(T * H), w(H), y(T * H);
    FillNormal(x.data(), T * H, 3.0f);
    FillNormal(w.data(), H);
    std::vector<float> expected(static_cast<size_t>(T * H));
    reference::RmsNorm(x.data(), w.data(), 1e-5f, T, H, expected.data());
    RmsNorm(x.data(), w.data(), 1e-5f, T, H, y.data());
    EXPECT_LT(testing::RelativeL2(y.data(), expected.data(), T * H), 1e-6);
    RmsNorm(x.data(), w.data(), 1e-5f, T, H, x.data());  // in place
    EXPECT_LT(testing::RelativeL2(x.data(), expected.data(), T * H), 1e-6);
  }
}

TEST_F(OpsTest, EverySimdTarget) {
  testing::ForEachSimdTarget([&] {
    for (int64_t n : {5, 33, 1000}) {
      testing::MisalignedFloats a(n), b(n), w(n), out(n);
      FillNormal(a.data(), n, 4.0f);
      FillNormal(b.data(), n);
      FillNormal(w.data(), n);
      std::vector<float> expected(static_cast<size_t>(n));
      reference::RmsNorm(a.data(), w.data(), 1e-6f, 1, n, expected.data());
      RmsNorm(a.data(), w.data(), 1e-6f, 1, n, out.data());
      EXPECT_LT(testing::RelativeL2(out.data(), expected.data(), n), 1e-6);
      reference::SiluMul(a.data(), b.data(), expected.data(), n);
      SiluMul(a.data(), b.data(), out.data(), n);
      EXPECT_LT(testing::RelativeL2(out.data(), expected.data(), n), kExpTolerance);
      std::copy(a.data(), a.data() + n, expected.begin());
      reference::Softmax(expected.data(), n);
      Softmax(a.data(), n);
      EXPECT_LT(testing::RelativeL2(a.data(), expected.data(), n), kExpTolerance);
    }
  });
}

TEST_F(OpsTest, LogSumExpMatchesReference) {
  // Past one block of 1024 and a vocabulary's size, with large logits (the
  // maximum must be taken out first) and a misaligned start.
  for (int64_t n : {1, 7, 1000, 1025, 128256}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    testing::MisalignedFloats x(n);
    FillNormal(x.data(), n, 8.0f);
    x.data()[n / 2] += 90.0f;
    const double want = reference::LogSumExp(x.data(), n);
    EXPECT_NEAR(LogSumExp(x.data(), n), want, 1e-6 * std::max(1.0, std::fabs(want)));
  }
  const float two[] = {0.0f, 0.0f};
  EXPECT_NEAR(reference::LogSumExp(two, 2), std::log(2.0), 1e-12);
}

TEST_F(OpsTest, ArgMaxMatchesReference) {
  // Every lane position of the maximum, ties (the lowest index wins) and NaNs
  // (passed over), up to a vocabulary's size, misaligned.
  for (int64_t n : {2, 7, 33, 127, 1000, 2048, 128256}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    testing::MisalignedFloats x(n);
    FillNormal(x.data(), n, 4.0f);
    EXPECT_EQ(ArgMax(x.data(), n), reference::ArgMax(x.data(), n));
    const int64_t at = UniformInt(0, n - 2);
    x[at] = 100.0f;
    EXPECT_EQ(ArgMax(x.data(), n), at);
    x[n - 1] = 100.0f;  // a tie later on
    EXPECT_EQ(ArgMax(x.data(), n), at);
    x[at] = std::nanf("");
    EXPECT_EQ(ArgMax(x.data(), n), n - 1);
    EXPECT_EQ(ArgMax(x.data(), n), reference::ArgMax(x.data(), n));
  }
  const float one[] = {-3.0f};
  EXPECT_EQ(ArgMax(one, 1), 0);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const float lows[] = {nan, -inf, -inf};
  EXPECT_EQ(ArgMax(lows, 3), 1);
  EXPECT_EQ(reference::ArgMax(lows, 3), 1);
  const float nans[] = {nan, nan};
  EXPECT_EQ(ArgMax(nans, 2), 0);
  EXPECT_EQ(reference::ArgMax(nans, 2), 0);
}

TEST_F(OpsTest, RmsNormReferenceIsTheDefinition) {
  const float x[] = {3.0f, 4.0f};  // mean square 12.5
  const float w[] = {1.0f, 2.0f};
  float y[2];
  reference::RmsNorm(x, w, 0.0f, 1, 2, y);
  EXPECT_FLOAT_EQ(y[0], 3.0f / std::sqrt(12.5f));
  EXPECT_FLOAT_EQ(y[1], 8.0f / std::sqrt(12.5f));
}

TEST_F(OpsTest, SiluMulMatchesReferenceIncludingLargeInputs) {
  for (int64_t n : kOddSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    testing::MisalignedFloats g(n), u(n), out(n);
    FillNormal(g.data(), n, 4.0f);
    FillNormal(u.data(), n);
    if (n >= 7) {
      g[0] = -200.0f;  // exp overflow territory
      g[1] = 200.0f;
      g[2] = -90.0f;
    }
    std::vector<float> expected(static_cast<size_t>(n));
    reference::SiluMul(g.data(), u.data(), expected.data(), n);
    SiluMul(g.data(), u.data(), out.data(), n);
    EXPECT_LT(testing::RelativeL2(out.data(), expected.data(), n), kExpTolerance);
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(out[i])) << i;
    SiluMul(g.data(), u.data(), g.data(), n);  // in place over gate
    EXPECT_LT(testing::RelativeL2(g.data(), expected.data(), n), kExpTolerance);
  }
  const float g1[] = {1.0f}, u1[] = {2.0f};
  float o1[1];
  SiluMul(g1, u1, o1, 1);
  EXPECT_NEAR(o1[0], 2.0 / (1.0 + std::exp(-1.0)), 1e-6);
}

TEST_F(OpsTest, SoftmaxMatchesReferenceAndIsStable) {
  for (int64_t n : kOddSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    testing::MisalignedFloats x(n);
    FillNormal(x.data(), n, 5.0f);
    const float shift = Uniform(-1000.0f, 1000.0f);  // large offsets must not overflow
    for (int64_t i = 0; i < n; ++i) x[i] += shift;
    std::vector<float> expected(x.data(), x.data() + n);
    reference::Softmax(expected.data(), n);
    Softmax(x.data(), n);
    EXPECT_LT(testing::RelativeL2(x.data(), expected.data(), n), kExpTolerance);
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += x[i];
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST_F(OpsTest, AddInPlace) {
  for (int64_t n : kOddSizes) {
    testing::MisalignedFloats y(n), x(n);
    FillNormal(y.data(), n);
    FillNormal(x.data(), n);
    std::vector<float> expected(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) expected[i] = y[i] + x[i];
    AddInPlace(y.data(), x.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], expected[i]) << i;
  }
}

TEST_F(OpsTest, EmbeddingLookupEveryDtype) {
  const int64_t vocab = 50, H = 37;
  std::vector<float> table = Normal(vocab * H);
  std::vector<int32_t> ids = {0, 49, 7, 7, 23};
  const int64_t T = static_cast<int64_t>(ids.size());

  std::vector<uint16_t> half(static_cast<size_t>(vocab * H));
  std::vector<int8_t> q8(static_cast<size_t>(vocab * H));
  std::vector<float> s8(static_cast<size_t>(vocab));
  std::vector<uint8_t> q4(static_cast<size_t>(vocab * Int4RowBytes(H)));
  std::vector<float> s4(static_cast<size_t>(vocab * Int4NumGroups(H, 32)));
  QuantizeInt8PerRow(table.data(), vocab, H, q8.data(), s8.data());
  QuantizeInt4Grouped(table.data(), vocab, H, 32, q4.data(), s4.data());

  std::vector<float> out(static_cast<size_t>(T * H)), row(static_cast<size_t>(H));
  auto check = [&](const WeightMatrix& view) {
    EmbeddingLookup(view, ids.data(), T, out.data());
    for (int64_t t = 0; t < T; ++t) {
      DequantizeRow(view, ids[t], row.data());
      for (int64_t i = 0; i < H; ++i) ASSERT_EQ(out[t * H + i], row[i]);
    }
  };
  check({.dtype = DType::kF32, .rows = vocab, .cols = H, .data = table.data()});
  EXPECT_EQ(out[H * 1 + 3], table[49 * H + 3]);  // f32 rows are copied exactly
  ConvertFromF32(table.data(), DType::kBF16, half.data(), half.size());
  check({.dtype = DType::kBF16, .rows = vocab, .cols = H, .data = half.data()});
  EXPECT_EQ(out[0], BF16ToF32(F32ToBF16(table[0])));
  ConvertFromF32(table.data(), DType::kF16, half.data(), half.size());
  check({.dtype = DType::kF16, .rows = vocab, .cols = H, .data = half.data()});
  EXPECT_EQ(out[0], F16ToF32(F32ToF16(table[0])));
  check({.dtype = DType::kI8, .rows = vocab, .cols = H, .data = q8.data(), .scales = s8.data()});
  check({.dtype = DType::kI4, .rows = vocab, .cols = H, .data = q4.data(), .scales = s4.data(),
         .group_size = 32});
  EXPECT_LT(testing::RelativeL2(out.data(), table.data() + 0, H), 0.2);  // row 0 ~ table row 0
}

}  // namespace
}  // namespace tandem::cpu
