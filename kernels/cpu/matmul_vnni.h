#pragma once
// Internal to kernels/cpu (used by matmul.cc): the decode path of MatMul for
// int8 and int4 weights on x86-64 CPUs with AVX-512 VNNI. Dequantizing each
// weight to f32 costs more than streaming it from DRAM on a few cores, so
// here the activations are quantized instead and the products are summed as
// integers (vpdpbusd: 64 u8 x s8 products per instruction).
//
// Numerics: the activation rounding that matmul.h documents (Numerics),
// after which the integer sums are exact. int4 takes one 8-bit plane, half
// the integer work of int8's two: that is what lets the int4 kernel, which
// does twice the integer work per weight byte of int8, keep up with DRAM on
// few cores.
#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"

namespace tandem::cpu::vnni {

// Whether DecodeMatMul handles w: int8, or int4 whose group size is 32, 64 or
// a multiple of 128 (other multiples of 32 take the generic path). Callers
// dispatch here only on AVX-512 VNNI machines.
bool Handles(const WeightMatrix& w);

// MatMulShared for T >= 1 and 1 to kMaxProducts products whose weights all
// satisfy Handles, with the same dtype, cols (> 0) and group size: the
// activations are rounded once and every product's row blocks share one pass
// over the pool. Keeps per-thread scratch that only grows.
inline constexpr size_t kMaxProducts = 4;
void DecodeMatMul(ThreadPool& pool, const float* x, int64_t T,
                  std::span<const MatMulProduct> products);

}  // namespace tandem::cpu::vnni
