#include "core/dtype.h"

#include <cmath>
#include <cstdint>
#include <random>

#include "gtest/gtest.h"

namespace tandem {
namespace {

// Reference: the f32 value nearest to x among all representable 16-bit
// values, ties to the one with an even bit pattern, computed by brute force in
// double over the sorted list of finite values.
template <typename T, float (*ToF32)(T)>
uint16_t NearestRef(float x) {
  double best_err = INFINITY;
  uint16_t best = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    float v = ToF32(T{static_cast<uint16_t>(b)});
    if (!std::isfinite(v) || std::signbit(v) != std::signbit(x)) continue;
    double err = std::fabs(static_cast<double>(v) - static_cast<double>(x));
    if (err < best_err || (err == best_err && (b & 1) == 0 && (best & 1) == 1)) {
      best_err = err;
      best = static_cast<uint16_t>(b);
    }
  }
  return best;
}

TEST(DTypeTest, BF16RoundTripsEveryBitPattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    BFloat16 v{static_cast<uint16_t>(b)};
    float f = BF16ToF32(v);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(f)))) << b;
      EXPECT_EQ(std::signbit(f), std::signbit(BF16ToF32(F32ToBF16(f)))) << b;
    } else {
      EXPECT_EQ(F32ToBF16(f).bits, b) << "bf16 pattern " << b;
    }
  }
}

TEST(DTypeTest, F16RoundTripsEveryBitPattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    Float16 v{static_cast<uint16_t>(b)};
    float f = F16ToF32(v);
    if (std::isnan(f)) {
      Float16 back = F32ToF16(f);
      EXPECT_TRUE(std::isnan(F16ToF32(back))) << b;
      EXPECT_EQ(back.bits & 0x8000, b & 0x8000) << b;
    } else {
      EXPECT_EQ(F32ToF16(f).bits, b) << "f16 pattern " << b;
    }
  }
}

TEST(DTypeTest, F16DecodesKnownValues) {
  EXPECT_EQ(F16ToF32(Float16{0x3c00}), 1.0f);
  EXPECT_EQ(F16ToF32(Float16{0xc000}), -2.0f);
  EXPECT_EQ(F16ToF32(Float16{0x7bff}), 65504.0f);
  EXPECT_EQ(F16ToF32(Float16{0x0001}), 0x1p-24f);
  EXPECT_EQ(F16ToF32(Float16{0x0400}), 0x1p-14f);
  EXPECT_TRUE(std::isinf(F16ToF32(Float16{0x7c00})));
  EXPECT_TRUE(std::isinf(F16ToF32(Float16{0xfc00})));
}

// Every midpoint between two adjacent 16-bit values must round to the even one,
// and points just beside a midpoint to the nearer one.
template <typename T, float (*ToF32)(T), T (*FromF32)(float)>
void CheckMidpoints() {
  for (uint32_t b = 0; b < 65535; ++b) {
    if ((b & 0x7fff) == 0x7fff) continue;
    float lo = ToF32(T{static_cast<uint16_t>(b)});
    float hi = ToF32(T{static_cast<uint16_t>(b + 1)});
    if (!std::isfinite(lo) || !std::isfinite(hi)) continue;
    if (std::signbit(lo) != std::signbit(hi)) continue;
    double mid_d = (static_cast<double>(lo) + static_cast<double>(hi)) / 2;
    float mid = static_cast<float>(mid_d);
    if (static_cast<double>(mid) != mid_d) continue;  // not representable in f32
    uint16_t even = (b & 1) ? static_cast<uint16_t>(b + 1) : static_cast<uint16_t>(b);
    ASSERT_EQ(FromF32(mid).bits, even) << "midpoint after pattern " << b;
    float below = std::nextafter(mid, lo);
    float above = std::nextafter(mid, hi);
    ASSERT_EQ(FromF32(below).bits, b) << "just below midpoint after " << b;
    ASSERT_EQ(FromF32(above).bits, b + 1) << "just above midpoint after " << b;
  }
}

TEST(DTypeTest, BF16RoundsToNearestEven) { CheckMidpoints<BFloat16, BF16ToF32, F32ToBF16>(); }
TEST(DTypeTest, F16RoundsToNearestEven) { CheckMidpoints<Float16, F16ToF32, F32ToF16>(); }

TEST(DTypeTest, RandomFloatsMatchBruteForceNearest) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> exponent(-26.0f, 17.0f);
  for (int i = 0; i < 200; ++i) {
    float x = std::exp2(exponent(rng)) * ((rng() & 1) ? 1.0f : -1.0f);
    if (std::fabs(x) < 65504.0f) {
      EXPECT_EQ(F32ToF16(x).bits, (NearestRef<Float16, F16ToF32>(x))) << x;
    }
    EXPECT_EQ(F32ToBF16(x).bits, (NearestRef<BFloat16, BF16ToF32>(x))) << x;
  }
}

TEST(DTypeTest, OverflowAndSpecials) {
  EXPECT_EQ(F32ToF16(65520.0f).bits, 0x7c00);  // the tie rounds up to Inf
  EXPECT_EQ(F32ToF16(65519.0f).bits, 0x7bff);
  EXPECT_EQ(F32ToF16(1e30f).bits, 0x7c00);
  EXPECT_EQ(F32ToF16(-INFINITY).bits, 0xfc00);
  EXPECT_EQ(F32ToBF16(INFINITY).bits, 0x7f80);
  EXPECT_EQ(F32ToBF16(3.4028235e38f).bits, 0x7f80);  // rounds past the max bf16
  EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(NAN))));
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(NAN))));
  EXPECT_EQ(F32ToF16(-0.0f).bits, 0x8000);
  EXPECT_EQ(F32ToBF16(-0.0f).bits, 0x8000);
  EXPECT_EQ(F32ToF16(0x1p-25f).bits, 0x0000);         // tie to even: zero
  EXPECT_EQ(F32ToF16(0x1.8p-25f).bits, 0x0001);       // above the tie
}

TEST(DTypeTest, Int4PacksSignedNibbles) {
  uint8_t packed[4] = {};
  for (int i = 0; i < 8; ++i) Int4Set(packed, i, static_cast<int8_t>(i - 8 + (i % 2) * 7));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(Int4Get(packed, i), i - 8 + (i % 2) * 7);
  EXPECT_EQ(DTypeBytes(DType::kI4, 7), 4u);
  EXPECT_EQ(DTypeBytes(DType::kBF16, 7), 14u);
}

TEST(DTypeTest, NamesRoundTrip) {
  for (auto t : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8, DType::kI4}) {
    EXPECT_EQ(DTypeFromName(DTypeName(t)), t);
  }
  EXPECT_EQ(DTypeFromSafetensors("BF16"), DType::kBF16);
  EXPECT_FALSE(DTypeFromSafetensors("F8_E4M3").has_value());
  EXPECT_FALSE(DTypeFromName("float").has_value());
}

}  // namespace
}  // namespace tandem
