// Element-wise and row-wise ops with run-time SIMD dispatch, and their scalar
// references. Compiled once per SIMD target (hwy/foreach_target.h).
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/ops.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
#include "kernels/cpu/vector_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace tandem::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

void RmsNormImpl(const float* x, const float* weight, float eps, int64_t T, int64_t H, float* y) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * H;
    float* yr = y + t * H;
    VF acc0 = hn::Zero(df), acc1 = hn::Zero(df);
    int64_t i = 0;
    for (; i + 2 * N <= H; i += 2 * N) {
      const VF a = hn::LoadU(df, xr + i), b = hn::LoadU(df, xr + i + N);
      acc0 = hn::MulAdd(a, a, acc0);
      acc1 = hn::MulAdd(b, b, acc1);
    }
    float ss = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
    for (; i < H; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(H) + eps);
    const VF vinv = hn::Set(df, inv);
    i = 0;
    for (; i + N <= H; i += N) {
      hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(df, xr + i), vinv), hn::LoadU(df, weight + i)), df,
                 yr + i);
    }
    for (; i < H; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

void AddInPlaceImpl(float* y, const float* x, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Add(hn::LoadU(df, y + i), hn::LoadU(df, x + i)), df, y + i);
  for (; i < n; ++i) y[i] += x[i];
}

// silu(g) * u with exp(-g) clamped below overflow (silu(g) -> -0 there anyway).
HWY_INLINE VF SiluMulVec(DF df, VF g, VF u) {
  const VF e = hn::Exp(df, hn::Min(hn::Neg(g), hn::Set(df, 88.0f)));
  return hn::Mul(hn::Div(g, hn::Add(hn::Set(df, 1.0f), e)), u);
}

void SiluMulImpl(const float* gate, const float* up, float* out, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(SiluMulVec(df, hn::LoadU(df, gate + i), hn::LoadU(df, up + i)), df, out + i);
  }
  if (i < n) {
    HWY_ALIGN float g[hn::MaxLanes(df)] = {};
    HWY_ALIGN float u[hn::MaxLanes(df)] = {};
    std::copy(gate + i, gate + n, g);
    std::copy(up + i, up + n, u);
    hn::Store(SiluMulVec(df, hn::Load(df, g), hn::Load(df, u)), df, g);
    std::copy(g, g + (n - i), out + i);
  }
}

double LogSumExpImpl(const float* x, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const float mx = MaxOf(x, n);
  const VF vmx = hn::Set(df, mx);
  // f32 lanes over blocks of 1024 values, the blocks' sums in double.
  constexpr int64_t kBlock = 1024;
  double sum = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    VF vsum = hn::Zero(df);
    int64_t i = b;
    for (; i + N <= end; i += N) vsum = hn::Add(vsum, hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vmx)));
    double block = hn::GetLane(hn::SumOfLanes(df, vsum));
    for (; i < end; ++i) block += std::exp(static_cast<double>(x[i]) - mx);
    sum += block;
  }
  return mx + std::log(sum);
}

// Two passes over x: the largest value, in four accumulators so that the
// maxima of consecutive vectors do not wait on one another, then the first
// position that holds it. A plain std::max_element took 0.2 ms of every
// greedy decode step over Llama 3's 128256 logits.
int64_t ArgMaxImpl(const float* x, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF lowest = hn::Set(df, -std::numeric_limits<float>::infinity());
  auto load = [&](int64_t i) {  // NaN lanes read as -inf
    const VF v = hn::LoadU(df, x + i);
    return hn::IfThenElse(hn::IsNaN(v), lowest, v);
  };
  VF m0 = lowest, m1 = lowest, m2 = lowest, m3 = lowest;
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    m0 = hn::Max(m0, load(i));
    m1 = hn::Max(m1, load(i + N));
    m2 = hn::Max(m2, load(i + 2 * N));
    m3 = hn::Max(m3, load(i + 3 * N));
  }
  for (; i + N <= n; i += N) m0 = hn::Max(m0, load(i));
  float mx = hn::GetLane(hn::MaxOfLanes(df, hn::Max(hn::Max(m0, m1), hn::Max(m2, m3))));
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  const VF vmx = hn::Set(df, mx);
  for (i = 0; i + N <= n; i += N) {
    const auto hit = hn::Eq(hn::LoadU(df, x + i), vmx);
    if (!hn::AllFalse(df, hit)) return i + static_cast<int64_t>(hn::FindKnownFirstTrue(df, hit));
  }
  for (; i < n; ++i) {
    if (x[i] == mx) return i;
  }
  return 0;  // every value is NaN
}

void SoftmaxImpl(float* x, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const float mx = MaxOf(x, n);
  int64_t i = 0;
  const float sum = ExpShiftSum(x, n, mx);
  const VF vinv = hn::Set(df, 1.0f / sum);
  i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(df, x + i), vinv), df, x + i);
  for (; i < n; ++i) x[i] *= 1.0f / sum;
}

}  // namespace HWY_NAMESPACE
}  // namespace tandem::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tandem::cpu {

HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(AddInPlaceImpl);
HWY_EXPORT(SiluMulImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(LogSumExpImpl);
HWY_EXPORT(ArgMaxImpl);

void RmsNorm(const float* x, const float* weight, float eps, int64_t T, int64_t H, float* y) {
  CHECK_GE(T, 0);
  CHECK_GT(H, 0);
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, weight, eps, T, H, y);
}

void AddInPlace(float* y, const float* x, int64_t n) {
  CHECK_GE(n, 0);
  HWY_DYNAMIC_DISPATCH(AddInPlaceImpl)(y, x, n);
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  CHECK_GE(n, 0);
  HWY_DYNAMIC_DISPATCH(SiluMulImpl)(gate, up, out, n);
}

void Softmax(float* x, int64_t n) {
  CHECK_GT(n, 0);
  HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n);
}

double LogSumExp(const float* x, int64_t n) {
  CHECK_GT(n, 0);
  return HWY_DYNAMIC_DISPATCH(LogSumExpImpl)(x, n);
}

int64_t ArgMax(const float* x, int64_t n) {
  CHECK_GT(n, 0);
  return HWY_DYNAMIC_DISPATCH(ArgMaxImpl)(x, n);
}

void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t T, float* out) {
  CHECK_GE(T, 0);
  for (int64_t t = 0; t < T; ++t) {
    CHECK(ids[t] >= 0 && ids[t] < table.rows);
    DequantizeRow(table, ids[t], out + t * table.cols);
  }
}

namespace reference {

void RmsNorm(const float* x, const float* weight, float eps, int64_t T, int64_t H, float* y) {
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < H; ++i) ss += static_cast<double>(x[t * H + i]) * x[t * H + i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(H) + eps);
    for (int64_t i = 0; i < H; ++i) {
      y[t * H + i] = static_cast<float>(x[t * H + i] * inv * weight[i]);
    }
  }
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void Softmax(float* x, int64_t n) {
  double mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max<double>(mx, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - mx);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(std::exp(x[i] - mx) / sum);
}

double LogSumExp(const float* x, int64_t n) {
  double mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max<double>(mx, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - mx);
  return mx + std::log(sum);
}

int64_t ArgMax(const float* x, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isnan(x[i]) && (best < 0 || x[i] > x[best])) best = i;
  }
  return best < 0 ? 0 : best;
}

}  // namespace reference
}  // namespace tandem::cpu
#endif  // HWY_ONCE
