#include "proto/byte_shuffle.h"

#include <cstring>

namespace tandem {
namespace {
template <size_t kSize>
void ShuffleFixed(const uint8_t* src, uint8_t* dst, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    for (size_t b = 0; b < kSize; ++b) dst[b * count + i] = src[i * kSize + b];
  }
}
template <size_t kSize>
void UnshuffleFixed(const uint8_t* src, uint8_t* dst, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    for (size_t b = 0; b < kSize; ++b) dst[i * kSize + b] = src[b * count + i];
  }
}
}  // namespace

void ByteShuffle(const uint8_t* src, uint8_t* dst, size_t count, size_t elem_size) {
  switch (elem_size) {
    case 1: std::memcpy(dst, src, count); return;
    case 2: ShuffleFixed<2>(src, dst, count); return;
    case 4: ShuffleFixed<4>(src, dst, count); return;
    case 8: ShuffleFixed<8>(src, dst, count); return;
    default:
      for (size_t i = 0; i < count; ++i)
        for (size_t b = 0; b < elem_size; ++b) dst[b * count + i] = src[i * elem_size + b];
  }
}

void ByteUnshuffle(const uint8_t* src, uint8_t* dst, size_t count, size_t elem_size) {
  switch (elem_size) {
    case 1: std::memcpy(dst, src, count); return;
    case 2: UnshuffleFixed<2>(src, dst, count); return;
    case 4: UnshuffleFixed<4>(src, dst, count); return;
    case 8: UnshuffleFixed<8>(src, dst, count); return;
    default:
      for (size_t i = 0; i < count; ++i)
        for (size_t b = 0; b < elem_size; ++b) dst[i * elem_size + b] = src[b * count + i];
  }
}
}  // namespace tandem
