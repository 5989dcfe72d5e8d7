// RoPE: inv_freq for default, linear and llama3 scaling against the formulas
// written out here independently, and the rotation against its reference and
// its defining properties (norm preserved, dot products depend only on the
// relative position).
#include <cmath>
#include <numbers>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace tandem::cpu {
namespace {

class RopeTest : public testing::SeededTest {};

// Hugging Face `_compute_llama3_parameters`, transcribed.
std::vector<double> ExpectedLlama3InvFreq(int dim, double base, double factor, double low,
                                          double high, double old_context) {
  std::vector<double> out;
  const double low_freq_wavelen = old_context / low;
  const double high_freq_wavelen = old_context / high;
  for (int i = 0; i < dim; i += 2) {
    const double inv_freq = 1.0 / std::pow(base, static_cast<double>(i) / dim);
    const double wavelen = 2 * std::numbers::pi / inv_freq;
    double llama = wavelen > low_freq_wavelen ? inv_freq / factor : inv_freq;
    const double smooth = (old_context / wavelen - low) / (high - low);
    const double smoothed = (1 - smooth) * llama / factor + smooth * llama;
    const bool is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    out.push_back(is_medium ? smoothed : llama);
  }
  return out;
}

TEST_F(RopeTest, Llama3InvFreqMatchesHuggingFaceFormula) {
  // Llama 3.2 1B: head_dim 64, theta 500000, factor 32, 1 / 4, 8192.
  const RopeTable table(RopeParams{.head_dim = 64, .theta = 500000.0,
                                   .scaling = RopeScaling::kLlama3, .factor = 32.0,
                                   .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                                   .original_max_position = 8192.0});
  const std::vector<double> expected = ExpectedLlama3InvFreq(64, 500000.0, 32.0, 1.0, 4.0, 8192.0);
  ASSERT_EQ(table.inv_freq.size(), expected.size());
  int high = 0, low = 0, medium = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(table.inv_freq[i], expected[i], 1e-12 * expected[i]) << i;
    const double unscaled = 1.0 / std::pow(500000.0, 2.0 * static_cast<double>(i) / 64);
    const double ratio = table.inv_freq[i] / unscaled;
    if (ratio == 1.0) {
      ++high;
    } else if (std::fabs(ratio - 1.0 / 32.0) < 1e-15) {
      ++low;
    } else {
      ++medium;
    }
  }
  // All three regimes are exercised by these parameters.
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);
  EXPECT_DOUBLE_EQ(table.inv_freq[0], 1.0);  // i = 0 is never scaled
}

TEST_F(RopeTest, DefaultAndLinearInvFreq) {
  const RopeTable plain(RopeParams{.head_dim = 8, .theta = 10000.0});
  const double expected[] = {1.0, 0.1, 0.01, 0.001};  // 10000^(-2i/8)
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(plain.inv_freq[i], expected[i], 1e-15);
  const RopeTable linear(
      RopeParams{.head_dim = 8, .theta = 10000.0, .scaling = RopeScaling::kLinear, .factor = 4.0});
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(linear.inv_freq[i], expected[i] / 4.0, 1e-15);
}

TEST_F(RopeTest, ApplyMatchesReferenceAndHandRotation) {
  for (int head_dim : {2, 64, 80, 128}) {
    SCOPED_TRACE(::testing::Message() << "head_dim=" << head_dim);
    const RopeTable table(RopeParams{.head_dim = head_dim, .theta = 500000.0,
                                     .scaling = RopeScaling::kLlama3, .factor = 8.0,
                                     .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                                     .original_max_position = 8192.0});
    const int64_t T = 7;
    const int heads = 3;
    std::vector<int32_t> pos(T);
    for (auto& p : pos) p = static_cast<int32_t>(UniformInt(0, 100000));
    pos[0] = 0;
    testing::MisalignedFloats x(T * heads * head_dim);
    FillNormal(x.data(), T * heads * head_dim);
    std::vector<float> original(x.data(), x.data() + T * heads * head_dim);
    std::vector<float> expected = original;
    reference::ApplyRope(table, expected.data(), T, heads, pos.data());
    ApplyRope(table, x.data(), T, heads, pos.data());
    EXPECT_LT(testing::RelativeL2(x.data(), expected.data(), T * heads * head_dim), 1e-6);
    // Position 0 is the identity.
    for (int i = 0; i < heads * head_dim; ++i) EXPECT_EQ(x[i], original[i]);
    // Token 1, head 2, pair 0 by hand.
    const int half = head_dim / 2;
    const double a = pos[1] * table.inv_freq[0];
    const float* v = original.data() + (1 * heads + 2) * head_dim;
    const float* r = x.data() + (1 * heads + 2) * head_dim;
    EXPECT_NEAR(r[0], v[0] * std::cos(a) - v[half] * std::sin(a), 1e-5);
    EXPECT_NEAR(r[half], v[half] * std::cos(a) + v[0] * std::sin(a), 1e-5);
  }
}

TEST_F(RopeTest, PreservesNormAndDependsOnlyOnRelativePosition) {
  const int hd = 64;
  const RopeTable table(RopeParams{.head_dim = hd, .theta = 10000.0});
  std::vector<float> q = Normal(hd), k = Normal(hd);
  auto rotated_dot = [&](int32_t pq, int32_t pk) {
    std::vector<float> a = q, b = k;
    ApplyRope(table, a.data(), 1, 1, &pq);
    ApplyRope(table, b.data(), 1, 1, &pk);
    double d = 0.0, na = 0.0, nq = 0.0;
    for (int i = 0; i < hd; ++i) {
      d += static_cast<double>(a[i]) * b[i];
      na += static_cast<double>(a[i]) * a[i];
      nq += static_cast<double>(q[i]) * q[i];
    }
    EXPECT_NEAR(na, nq, 1e-4 * nq);
    return d;
  };
  const int32_t shift = static_cast<int32_t>(UniformInt(1, 500));
  EXPECT_NEAR(rotated_dot(10, 3), rotated_dot(10 + shift, 3 + shift), 1e-3);
}

}  // namespace
}  // namespace tandem::cpu
