// Rotary position embedding (Hugging Face rotate-half layout). Angles and
// their sines/cosines are evaluated in double, once per token, and applied to
// every head; the cost is small next to the projections around it.
#include <cmath>
#include <numbers>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/ops.h"

namespace tandem::cpu {

RopeTable::RopeTable(const RopeParams& p) : head_dim(p.head_dim) {
  CHECK(p.head_dim > 0 && p.head_dim % 2 == 0);
  const int half = p.head_dim / 2;
  inv_freq.resize(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    double base = 1.0 / std::pow(p.theta, static_cast<double>(2 * i) / p.head_dim);
    switch (p.scaling) {
      case RopeScaling::kNone:
        break;
      case RopeScaling::kLinear:
        base /= p.factor;
        break;
      case RopeScaling::kLlama3: {
        const double low_wavelen = p.original_max_position / p.low_freq_factor;
        const double high_wavelen = p.original_max_position / p.high_freq_factor;
        const double wavelen = 2.0 * std::numbers::pi / base;
        if (wavelen > low_wavelen) {
          base /= p.factor;
        } else if (!(wavelen < high_wavelen)) {
          const double smooth = (p.original_max_position / wavelen - p.low_freq_factor) /
                                (p.high_freq_factor - p.low_freq_factor);
          base = (1.0 - smooth) * base / p.factor + smooth * base;
        }
        break;
      }
    }
    inv_freq[static_cast<size_t>(i)] = base;
  }
}

namespace {

void RotateAllHeads(const RopeTable& table, float* x, int64_t T, int heads,
                    const int32_t* positions) {
  const int hd = table.head_dim;
  const int half = hd / 2;
  // Up to 512-wide heads without allocating.
  constexpr int kMaxHalf = 256;
  CHECK_LE(half, kMaxHalf);
  float cos_a[kMaxHalf], sin_a[kMaxHalf];
  for (int64_t t = 0; t < T; ++t) {
    CHECK_GE(positions[t], 0);
    for (int i = 0; i < half; ++i) {
      const double a = static_cast<double>(positions[t]) * table.inv_freq[static_cast<size_t>(i)];
      cos_a[i] = static_cast<float>(std::cos(a));
      sin_a[i] = static_cast<float>(std::sin(a));
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * hd;
      for (int i = 0; i < half; ++i) {
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cos_a[i] - x1 * sin_a[i];
        v[i + half] = x1 * cos_a[i] + x0 * sin_a[i];
      }
    }
  }
}

}  // namespace

void ApplyRope(const RopeTable& table, float* x, int64_t T, int heads, const int32_t* positions) {
  CHECK_GE(T, 0);
  CHECK_GT(heads, 0);
  RotateAllHeads(table, x, T, heads, positions);
}

namespace reference {
void ApplyRope(const RopeTable& table, float* x, int64_t T, int heads, const int32_t* positions) {
  const int hd = table.head_dim;
  const int half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    for (int h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * hd;
      for (int i = 0; i < half; ++i) {
        const double a = static_cast<double>(positions[t]) * table.inv_freq[static_cast<size_t>(i)];
        const double x0 = v[i], x1 = v[i + half];
        v[i] = static_cast<float>(x0 * std::cos(a) - x1 * std::sin(a));
        v[i + half] = static_cast<float>(x1 * std::cos(a) + x0 * std::sin(a));
      }
    }
  }
}
}  // namespace reference

}  // namespace tandem::cpu
