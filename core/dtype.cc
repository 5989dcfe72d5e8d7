#include "core/dtype.h"

#include <cmath>

#include "core/check.h"

namespace tandem {

int DTypeBits(DType t) {
  switch (t) {
    case DType::kF32: return 32;
    case DType::kF16: return 16;
    case DType::kBF16: return 16;
    case DType::kF64: return 64;
    case DType::kI8: return 8;
    case DType::kI4: return 4;
    case DType::kI32: return 32;
    case DType::kI64: return 64;
    case DType::kU8: return 8;
    case DType::kBool: return 8;
  }
  CHECK_MSG(false, "unknown dtype");
}

size_t DTypeBytes(DType t, size_t count) { return (count * DTypeBits(t) + 7) / 8; }

namespace {
struct DTypeNames {
  DType type;
  std::string_view name;
  std::string_view safetensors;
};
constexpr DTypeNames kNames[] = {
    {DType::kF32, "f32", "F32"},   {DType::kF16, "f16", "F16"}, {DType::kBF16, "bf16", "BF16"},
    {DType::kF64, "f64", "F64"},   {DType::kI8, "i8", "I8"},    {DType::kI4, "i4", ""},
    {DType::kI32, "i32", "I32"},   {DType::kI64, "i64", "I64"}, {DType::kU8, "u8", "U8"},
    {DType::kBool, "bool", "BOOL"},
};
}  // namespace

std::string_view DTypeName(DType t) {
  for (const auto& n : kNames)
    if (n.type == t) return n.name;
  CHECK_MSG(false, "unknown dtype");
}

std::optional<DType> DTypeFromName(std::string_view name) {
  for (const auto& n : kNames)
    if (n.name == name) return n.type;
  return std::nullopt;
}

std::optional<DType> DTypeFromSafetensors(std::string_view name) {
  for (const auto& n : kNames)
    if (!n.safetensors.empty() && n.safetensors == name) return n.type;
  return std::nullopt;
}

std::string_view DTypeSafetensorsName(DType t) {
  for (const auto& n : kNames)
    if (n.type == t) return n.safetensors;
  CHECK_MSG(false, "unknown dtype");
}

bool IsFloat(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}

float F16ToF32(Float16 v) {
  uint32_t sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
  uint32_t exp = (v.bits >> 10) & 0x1fu;
  uint32_t mant = v.bits & 0x3ffu;
  if (exp == 0x1f) {  // Inf or NaN: keep the payload
    return BitsToFloat(sign | 0x7f800000u | (mant << 13));
  }
  if (exp == 0) {
    if (mant == 0) return BitsToFloat(sign);
    // Subnormal: value = mant * 2^-24, exact in f32.
    float f = static_cast<float>(mant) * 0x1p-24f;
    return sign ? -f : f;
  }
  return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

Float16 F32ToF16(float f) {
  uint32_t u = FloatBits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {  // NaN: quiet, keep top payload bits
    return Float16{static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to Inf
    return Float16{static_cast<uint16_t>(sign | 0x7c00u)};
  }
  if (abs < 0x38800000u) {  // below the smallest normal f16 (2^-14): subnormal or zero
    // Scale so the f16 subnormal unit (2^-24) becomes 1, then round half to even.
    float scaled = BitsToFloat(abs) * 0x1p24f;  // exact: power-of-two scaling
    float r = std::nearbyint(scaled);           // default rounding mode: ties to even
    return Float16{static_cast<uint16_t>(sign | static_cast<uint16_t>(r))};
  }
  // Normal: rebias exponent and round the 13 dropped mantissa bits to nearest even.
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  uint32_t h = (rounded >> 13) - (112u << 10);
  return Float16{static_cast<uint16_t>(sign | h)};
}

void ConvertToF32(DType src_type, const void* src, float* dst, size_t count) {
  switch (src_type) {
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::kF16: {
      const auto* s = static_cast<const Float16*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = F16ToF32(s[i]);
      return;
    }
    case DType::kBF16: {
      const auto* s = static_cast<const BFloat16*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = BF16ToF32(s[i]);
      return;
    }
    case DType::kF64: {
      const auto* s = static_cast<const double*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
    default:
      CHECK_MSG(false, "ConvertToF32: not a float dtype");
  }
}

void ConvertFromF32(const float* src, DType dst_type, void* dst, size_t count) {
  switch (dst_type) {
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::kF16: {
      auto* d = static_cast<Float16*>(dst);
      for (size_t i = 0; i < count; ++i) d[i] = F32ToF16(src[i]);
      return;
    }
    case DType::kBF16: {
      auto* d = static_cast<BFloat16*>(dst);
      for (size_t i = 0; i < count; ++i) d[i] = F32ToBF16(src[i]);
      return;
    }
    default:
      CHECK_MSG(false, "ConvertFromF32: not f32, f16 or bf16");
  }
}

}  // namespace tandem
