// Symmetric weight quantization (int8 per row, int4 per group) and the
// per-row dequantization shared by embedding lookup and tests.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/cpu/matmul.h"

namespace tandem::cpu {
namespace {

// clamp(round_half_away_from_zero(v * inv_scale), lo, hi), the product in
// double with inv_scale rounded to f32 (the documented format). Truncating
// |t| + 0.5 equals lround(t) here (the sum is exact except where it reaches a
// power of two, whose floor is lround's result too), and branch-free integer
// code keeps this off the load time of a quantized model (lround is a library
// call per weight). NaN or huge values end up clamped, never undefined.
inline int QuantizeValue(float v, float inv_scale, int lo, int hi) {
  const double t = static_cast<double>(v) * inv_scale;
  double a = std::fabs(t) + 0.5;
  a = a < 1024.0 ? a : 1024.0;
  const int m = static_cast<int>(a);
  return std::clamp(t < 0 ? -m : m, lo, hi);
}

float AbsMax(const float* v, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(v[i]));
  return m;
}

}  // namespace

void QuantizeInt8PerRow(const float* w, int64_t rows, int64_t cols, int8_t* out, float* scales) {
  CHECK_GE(rows, 0);
  CHECK_GE(cols, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = w + r * cols;
    int8_t* dst = out + r * cols;
    const float scale = AbsMax(src, cols) / 127.0f;
    scales[r] = scale;
    if (scale == 0.0f) {
      std::memset(dst, 0, static_cast<size_t>(cols));
      continue;
    }
    const double inv = 1.0 / static_cast<double>(scale);
    for (int64_t c = 0; c < cols; ++c) dst[c] = static_cast<int8_t>(QuantizeValue(src[c], inv, -127, 127));
  }
}

void QuantizeInt4Grouped(const float* w, int64_t rows, int64_t cols, int group_size,
                         uint8_t* packed, float* scales) {
  CHECK_GE(rows, 0);
  CHECK_GE(cols, 0);
  CHECK_GT(group_size, 0);
  const int64_t row_bytes = Int4RowBytes(cols);
  const int64_t groups = Int4NumGroups(cols, group_size);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = w + r * cols;
    uint8_t* dst = packed + r * row_bytes;
    std::memset(dst, 0, static_cast<size_t>(row_bytes));
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * group_size;
      const int64_t c1 = std::min<int64_t>(cols, c0 + group_size);
      const float scale = AbsMax(src + c0, c1 - c0) / 7.0f;
      scales[r * groups + g] = scale;
      if (scale == 0.0f) continue;
      const double inv = 1.0 / static_cast<double>(scale);
      int64_t c = c0;
      if (c % 2 == 1) {
        Int4Set(dst, static_cast<size_t>(c), static_cast<int8_t>(QuantizeValue(src[c], inv, -8, 7)));
        ++c;
      }
      for (; c + 1 < c1; c += 2) {  // whole bytes: element c low nibble, c + 1 high
        const int lo = QuantizeValue(src[c], inv, -8, 7);
        const int hi = QuantizeValue(src[c + 1], inv, -8, 7);
        dst[c / 2] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
      }
      if (c < c1) {
        Int4Set(dst, static_cast<size_t>(c), static_cast<int8_t>(QuantizeValue(src[c], inv, -8, 7)));
      }
    }
  }
}

void DequantizeRow(const WeightMatrix& w, int64_t row, float* out) {
  CHECK(row >= 0 && row < w.rows);
  if (NumColumnBlocks(w) > 1) {
    for (int64_t b = 0; b < NumColumnBlocks(w); ++b) {
      DequantizeRow(ColumnBlock(w, b), row, out + b * w.col_block);
    }
    return;
  }
  const uint8_t* base = static_cast<const uint8_t*>(w.data);
  const int64_t cols = w.cols;
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, base + row * cols * 4, static_cast<size_t>(cols) * 4);
      return;
    case DType::kF16:
    case DType::kBF16:
      ConvertToF32(w.dtype, base + row * cols * 2, out, static_cast<size_t>(cols));
      return;
    case DType::kI8: {
      const int8_t* q = reinterpret_cast<const int8_t*>(base + row * cols);
      const float scale = w.scales[row];
      for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<float>(q[c]) * scale;
      return;
    }
    case DType::kI4: {
      CHECK_GT(w.group_size, 0);
      const uint8_t* q = base + row * Int4RowBytes(cols);
      const float* scales = w.scales + row * Int4NumGroups(cols, w.group_size);
      for (int64_t c = 0; c < cols; ++c) {
        out[c] = static_cast<float>(Int4Get(q, static_cast<size_t>(c))) * scales[c / w.group_size];
      }
      return;
    }
    default:
      CHECK_MSG(false, "DequantizeRow: unsupported weight dtype");
  }
}

}  // namespace tandem::cpu
