#pragma once
// Element types of tensors on disk, in memory and on the wire, with exact
// conversions. f16/bf16 conversions round to nearest even and keep NaN/Inf.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace tandem {

enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kF64 = 3,
  kI8 = 4,   // quantized weights: one int8 per value
  kI4 = 5,   // quantized weights: two signed 4-bit values per byte, low nibble first
  kI32 = 6,
  kI64 = 7,
  kU8 = 8,
  kBool = 9,
};

// Bits per element (4 for kI4).
int DTypeBits(DType t);
// Bytes for `count` elements; kI4 rounds up to whole bytes.
size_t DTypeBytes(DType t, size_t count);
// Lower-case name: "f32", "f16", "bf16", "f64", "i8", "i4", "i32", "i64", "u8", "bool".
std::string_view DTypeName(DType t);
std::optional<DType> DTypeFromName(std::string_view name);
// safetensors spelling: "F32", "F16", "BF16", "F64", "I8", "I32", "I64", "U8", "BOOL".
std::optional<DType> DTypeFromSafetensors(std::string_view name);
std::string_view DTypeSafetensorsName(DType t);
bool IsFloat(DType t);

// Storage types: plain bit containers, converted explicitly.
struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float BF16ToF32(BFloat16 v) { return BitsToFloat(static_cast<uint32_t>(v.bits) << 16); }

inline BFloat16 F32ToBF16(float f) {
  uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep sign and payload top, force quiet
    return BFloat16{static_cast<uint16_t>((u >> 16) | 0x0040u)};
  }
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return BFloat16{static_cast<uint16_t>((u + rounding) >> 16)};
}

float F16ToF32(Float16 v);
Float16 F32ToF16(float f);

// Signed 4-bit values in [-8, 7], two per byte, element 2i in the low nibble.
inline int8_t Int4Get(const uint8_t* packed, size_t i) {
  uint8_t byte = packed[i >> 1];
  uint8_t nib = (i & 1) ? (byte >> 4) : (byte & 0x0f);
  return static_cast<int8_t>(static_cast<int8_t>(nib << 4) >> 4);
}
inline void Int4Set(uint8_t* packed, size_t i, int8_t v) {
  uint8_t nib = static_cast<uint8_t>(v) & 0x0f;
  uint8_t& byte = packed[i >> 1];
  byte = (i & 1) ? static_cast<uint8_t>((byte & 0x0f) | (nib << 4))
                 : static_cast<uint8_t>((byte & 0xf0) | nib);
}

// Widens `count` elements of a float dtype (f32, f16, bf16, f64) to f32.
void ConvertToF32(DType src_type, const void* src, float* dst, size_t count);
// Narrows f32 to a float dtype (f32, f16, bf16) with round-to-nearest-even.
void ConvertFromF32(const float* src, DType dst_type, void* dst, size_t count);

}  // namespace tandem
