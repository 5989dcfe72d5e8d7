// Row-wise SIMD helpers shared by the kernels, compiled into each kernel's
// per-target code (include it after hwy/highway.h in a file that uses
// hwy/foreach_target.h). The include guard toggles per target, as Highway's
// own -inl.h headers do.
#if defined(TANDEM_KERNELS_CPU_VECTOR_MATH_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TANDEM_KERNELS_CPU_VECTOR_MATH_INL_H_
#undef TANDEM_KERNELS_CPU_VECTOR_MATH_INL_H_
#else
#define TANDEM_KERNELS_CPU_VECTOR_MATH_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace tandem::cpu {
namespace HWY_NAMESPACE {

// The largest of x[0, n), n >= 1.
HWY_INLINE float MaxOf(const float* x, int64_t n) {
  namespace hn = hwy::HWY_NAMESPACE;
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  float mx = x[0];
  int64_t i = 0;
  if (n >= N) {
    auto vmax = hn::LoadU(df, x);
    for (i = N; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(df, x + i));
    mx = hn::GetLane(hn::MaxOfLanes(df, vmax));
  }
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  return mx;
}

// x[0, n) = exp(x - mx); returns the sum of the new values.
HWY_INLINE float ExpShiftSum(float* x, int64_t n, float mx) {
  namespace hn = hwy::HWY_NAMESPACE;
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto vmx = hn::Set(df, mx);
  auto vsum = hn::Zero(df);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vmx));
    hn::StoreU(e, df, x + i);
    vsum = hn::Add(vsum, e);
  }
  float sum = hn::GetLane(hn::SumOfLanes(df, vsum));
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  return sum;
}

}  // namespace HWY_NAMESPACE
}  // namespace tandem::cpu
HWY_AFTER_NAMESPACE();

#endif  // include guard toggle
