#pragma once
// Byte-shuffle filter: splits `count` elements of `elem_size` bytes into
// elem_size planes (all first bytes, then all second bytes, ...). The high
// byte plane of bf16/f16/f32 activations is highly repetitive and compresses
// well, while the interleaved values hardly do.
#include <cstddef>
#include <cstdint>

namespace tandem {
// src and dst: count * elem_size bytes each, not overlapping.
void ByteShuffle(const uint8_t* src, uint8_t* dst, size_t count, size_t elem_size);
void ByteUnshuffle(const uint8_t* src, uint8_t* dst, size_t count, size_t elem_size);
}  // namespace tandem
