#pragma once
// Lossy q8: blocks of kQ8Block values stored as int8 with one f16 scale per
// block (scale >= max|x| / 127, rounded up to f16, so |x - x'| <= scale / 2
// before the output dtype's own rounding). Layout of an encoded run of n
// values: ceil(n / 32) f16 scales (little endian), then n int8 values.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "core/dtype.h"
#include "core/status.h"

namespace tandem {
inline constexpr size_t kQ8Block = 32;

inline size_t Q8EncodedBytes(size_t count) {
  return (count + kQ8Block - 1) / kQ8Block * 2 + count;
}
// True for the dtypes q8 accepts: f32, f16, bf16.
bool Q8Supports(DType dtype);
// Encodes `count` values of `dtype` at `src` into `out` (resized). Fails on
// non-finite values and on magnitudes an f16 scale cannot hold.
Status Q8Encode(DType dtype, const void* src, size_t count, std::string* out);
// Decodes into `count` values of `dtype` at `dst`; `src` must be exactly
// Q8EncodedBytes(count) long.
Status Q8Decode(std::span<const uint8_t> src, DType dtype, void* dst, size_t count);
}  // namespace tandem
