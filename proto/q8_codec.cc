#include "proto/q8_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tandem {

bool Q8Supports(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

Status Q8Encode(DType dtype, const void* src, size_t count, std::string* out) {
  if (!Q8Supports(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("q8 codec: dtype ", std::string(DTypeName(dtype)), " is not f32, f16 or bf16"));
  }
  const size_t num_blocks = (count + kQ8Block - 1) / kQ8Block;
  out->resize(Q8EncodedBytes(count));
  auto* scales = reinterpret_cast<uint8_t*>(out->data());
  auto* values = reinterpret_cast<int8_t*>(out->data() + num_blocks * 2);
  const size_t elem = DTypeBytes(dtype, 1);
  float block[kQ8Block];
  for (size_t b = 0; b < num_blocks; ++b) {
    const size_t begin = b * kQ8Block;
    const size_t n = std::min(kQ8Block, count - begin);
    ConvertToF32(dtype, static_cast<const uint8_t*>(src) + begin * elem, block, n);
    float max_abs = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(block[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat("q8 codec: value ", begin + i, " is not finite"));
      }
      max_abs = std::max(max_abs, std::fabs(block[i]));
    }
    const float wanted = max_abs / 127.0f;
    if (wanted > 65504.0f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "q8 codec: magnitude ", max_abs, " near value ", begin, " exceeds what an f16 scale holds"));
    }
    Float16 scale = F32ToF16(wanted);
    if (F16ToF32(scale) < wanted) ++scale.bits;  // round up: no value clips
    const float s = F16ToF32(scale);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    scales[2 * b] = static_cast<uint8_t>(scale.bits & 0xff);
    scales[2 * b + 1] = static_cast<uint8_t>(scale.bits >> 8);
    for (size_t i = 0; i < n; ++i) {
      float q = std::nearbyint(block[i] * inv);
      q = std::clamp(q, -127.0f, 127.0f);
      values[begin + i] = static_cast<int8_t>(q);
    }
  }
  return absl::OkStatus();
}

Status Q8Decode(std::span<const uint8_t> src, DType dtype, void* dst, size_t count) {
  if (!Q8Supports(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("q8 codec: dtype ", std::string(DTypeName(dtype)), " is not f32, f16 or bf16"));
  }
  if (src.size() != Q8EncodedBytes(count)) {
    return absl::DataLossError(absl::StrCat("q8 codec: payload has ", src.size(),
                                            " bytes, expected ", Q8EncodedBytes(count), " for ",
                                            count, " values"));
  }
  const size_t num_blocks = (count + kQ8Block - 1) / kQ8Block;
  const uint8_t* scales = src.data();
  const auto* values = reinterpret_cast<const int8_t*>(src.data() + num_blocks * 2);
  const size_t elem = DTypeBytes(dtype, 1);
  float block[kQ8Block];
  for (size_t b = 0; b < num_blocks; ++b) {
    const size_t begin = b * kQ8Block;
    const size_t n = std::min(kQ8Block, count - begin);
    Float16 scale{static_cast<uint16_t>(scales[2 * b] | (scales[2 * b + 1] << 8))};
    const float s = F16ToF32(scale);
    if (!std::isfinite(s) || s < 0.0f) {
      return absl::DataLossError(absl::StrCat("q8 codec: block ", b, " has an invalid scale"));
    }
    for (size_t i = 0; i < n; ++i) block[i] = static_cast<float>(values[begin + i]) * s;
    ConvertFromF32(block, dtype, static_cast<uint8_t*>(dst) + begin * elem, n);
  }
  return absl::OkStatus();
}

}  // namespace tandem
