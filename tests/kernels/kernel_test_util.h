#pragma once
// Shared helpers for the kernel tests: a per-test random seed (fresh each run,
// printed with every failure, fixed with TANDEM_TEST_SEED=N to reproduce),
// random buffers at deliberately misaligned addresses, relative L2 error.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"

namespace tandem::cpu::testing {

inline uint32_t TestSeed() {
  if (const char* env = std::getenv("TANDEM_TEST_SEED")) {
    return static_cast<uint32_t>(std::strtoul(env, nullptr, 10));
  }
  return std::random_device{}();
}

// Fixture base: owns the generator and adds "seed=N" to every failure.
class SeededTest : public ::testing::Test {
 protected:
  SeededTest()
      : seed_(TestSeed()),
        rng_(seed_),
        trace_(__FILE__, __LINE__,
               "seed=" + std::to_string(seed_) + " (rerun with TANDEM_TEST_SEED=" +
                   std::to_string(seed_) + ")") {}

  float Uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng_); }
  int64_t UniformInt(int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  void FillNormal(float* p, int64_t n, float stddev = 1.0f) {
    std::normal_distribution<float> dist(0.0f, stddev);
    for (int64_t i = 0; i < n; ++i) p[i] = dist(rng_);
  }
  std::vector<float> Normal(int64_t n, float stddev = 1.0f) {
    std::vector<float> v(static_cast<size_t>(n));
    FillNormal(v.data(), n, stddev);
    return v;
  }

  uint32_t seed_;
  std::mt19937 rng_;
  ::testing::ScopedTrace trace_;
};

// A float buffer whose data() is offset by one element from a 64-byte
// boundary, so SIMD code sees misaligned pointers.
class MisalignedFloats {
 public:
  explicit MisalignedFloats(int64_t n, int offset = 1)
      : storage_(static_cast<size_t>(n + 32)), offset_(offset) {}
  float* data() { return Aligned() + offset_; }
  float& operator[](int64_t i) { return data()[i]; }

 private:
  float* Aligned() {
    auto p = reinterpret_cast<uintptr_t>(storage_.data());
    return reinterpret_cast<float*>((p + 63) & ~uintptr_t{63});
  }
  std::vector<float> storage_;
  int offset_;
};

// Runs fn() once for every SIMD target this machine supports (AVX3, AVX2,
// SSE4, the emulated fallback, NEON, ...), forcing run-time dispatch to it.
template <typename Fn>
void ForEachSimdTarget(Fn&& fn) {
  for (int64_t targets = hwy::SupportedTargets(); targets != 0; targets &= targets - 1) {
    const int64_t target = targets & -targets;
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(::testing::Message() << "SIMD target " << hwy::TargetName(target));
    fn();
    hwy::SetSupportedTargetsForTest(0);  // back to the real CPU
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// ||a - b|| / ||b|| over n values (b must not be all zero).
inline double RelativeL2(const float* a, const float* b, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  EXPECT_GT(den, 0.0) << "reference is all zero: the comparison would be meaningless";
  return std::sqrt(num / den);
}

}  // namespace tandem::cpu::testing
