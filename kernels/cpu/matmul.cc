// MatMul: run-time SIMD dispatch over the decode (streaming) and prefill
// (packed-panel, register-tiled) paths. This file is compiled once per SIMD
// target by hwy/foreach_target.h; only the HWY_ONCE part is ordinary code.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_vnni.h"
#include "kernels/cpu/prefetch.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/matmul.cc"
#include "hwy/foreach_target.h"  // must come before highway.h
#include "hwy/highway.h"

#ifndef TANDEM_KERNELS_CPU_MATMUL_SHARED_
#define TANDEM_KERNELS_CPU_MATMUL_SHARED_
namespace tandem::cpu::matmul_internal {

// Up to this many tokens the decode path (each weight row read once per pass
// of a few tokens) beats the prefill path (weights widened into f32 panels,
// a cost per call that few tokens do not amortize): measured with
// Llama-3.2-1B shapes on 2 AVX-512 cores, 1.3-4x faster below 64 tokens and
// even at 256 for 16/32-bit weights and int8 with VNNI.
inline constexpr int64_t kDecodeMaxTokens = 128;
// The same for int8/int4 weights without VNNI, whose decode path dequantizes
// the weights again on every pass.
inline constexpr int64_t kDequantizingDecodeMaxTokens = 8;
// Depth of a packed prefill panel: panel (kPanelDepth x 2 vectors of f32)
// stays in L1 while every token of the batch passes over it.
inline constexpr int64_t kPanelDepth = 256;
// How far ahead of its current position the decode path prefetches each row
// (PrefetchAhead): 1 KiB into L2 streamed bf16 as fast as 4 or 8 KiB and a
// little faster than none (2-core AVX-512 VM). 0 turns software prefetch off.
inline constexpr int64_t kPrefetchBytes = 1024;

inline int64_t RowBytes(const WeightMatrix& w) {
  switch (w.dtype) {
    case DType::kF32:
      return w.cols * 4;
    case DType::kF16:
    case DType::kBF16:
      return w.cols * 2;
    case DType::kI8:
      return w.cols;
    case DType::kI4:
      return Int4RowBytes(w.cols);
    default:
      CHECK_MSG(false, "MatMul: unsupported weight dtype");
  }
  return 0;
}

// out[0, n) = w[row][c0, c0 + n) as f32 (scales applied).
inline void WidenRange(const WeightMatrix& w, int64_t row, int64_t c0, int64_t n, float* out) {
  if (NumColumnBlocks(w) > 1) {
    while (n > 0) {
      const int64_t b = c0 / w.col_block, begin = b * w.col_block;
      const int64_t take = std::min(n, std::min(w.cols, begin + w.col_block) - c0);
      WidenRange(ColumnBlock(w, b), row, c0 - begin, take, out);
      c0 += take;
      out += take;
      n -= take;
    }
    return;
  }
  const uint8_t* p = static_cast<const uint8_t*>(w.data) + row * RowBytes(w);
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, reinterpret_cast<const float*>(p) + c0, static_cast<size_t>(n) * 4);
      break;
    case DType::kF16: {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(p) + c0;
      for (int64_t i = 0; i < n; ++i) out[i] = F16ToF32(Float16{s[i]});
      break;
    }
    case DType::kBF16: {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(p) + c0;
      for (int64_t i = 0; i < n; ++i) out[i] = BitsToFloat(static_cast<uint32_t>(s[i]) << 16);
      break;
    }
    case DType::kI8: {
      const int8_t* s = reinterpret_cast<const int8_t*>(p) + c0;
      const float scale = w.scales[row];
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(s[i]) * scale;
      break;
    }
    case DType::kI4: {
      const float* scales = w.scales + row * Int4NumGroups(w.cols, w.group_size);
      for (int64_t i = 0; i < n; ++i) {
        int64_t c = c0 + i;
        out[i] = static_cast<float>(Int4Get(p, static_cast<size_t>(c))) * scales[c / w.group_size];
      }
      break;
    }
    default:
      CHECK_MSG(false, "MatMul: unsupported weight dtype");
  }
}

// Per-thread scratch that only grows, so steady-state calls never allocate.
inline float* Scratch(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace tandem::cpu::matmul_internal
#endif  // TANDEM_KERNELS_CPU_MATMUL_SHARED_

HWY_BEFORE_NAMESPACE();
namespace tandem::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using namespace matmul_internal;  // NOLINT(build/namespaces)

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// ---------------------------------------------------------------- decode path

// Lanes(df) consecutive weights of a row starting at column c, as f32 (int8:
// the raw integers; the row scale is applied after the reduction).
template <DType kType>
HWY_INLINE VF LoadWeights(DF df, const uint8_t* row, int64_t c) {
  if constexpr (kType == DType::kF32) {
    return hn::LoadU(df, reinterpret_cast<const float*>(row) + c);
  } else if constexpr (kType == DType::kBF16) {
    const hn::Rebind<uint16_t, DF> d16;
    const hn::RebindToUnsigned<DF> du32;
    const auto wide = hn::PromoteTo(du32, hn::LoadU(d16, reinterpret_cast<const uint16_t*>(row) + c));
    return hn::BitCast(df, hn::ShiftLeft<16>(wide));
  } else if constexpr (kType == DType::kF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + c));
  } else {
    static_assert(kType == DType::kI8);
    const hn::Rebind<int8_t, DF> d8;
    const hn::RebindToSigned<DF> di32;
    return hn::ConvertTo(df, hn::PromoteTo(di32, hn::LoadU(d8, reinterpret_cast<const int8_t*>(row) + c)));
  }
}

template <DType kType>
constexpr size_t WeightBytes() {
  return kType == DType::kF32 ? 4 : (kType == DType::kI8 ? 1 : 2);
}

template <DType kType>
HWY_INLINE float WeightScalar(const uint8_t* row, int64_t c) {
  if constexpr (kType == DType::kF32) {
    return reinterpret_cast<const float*>(row)[c];
  } else if constexpr (kType == DType::kBF16) {
    return BitsToFloat(static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(row)[c]) << 16);
  } else if constexpr (kType == DType::kF16) {
    return F16ToF32(Float16{reinterpret_cast<const uint16_t*>(row)[c]});
  } else {
    return static_cast<float>(reinterpret_cast<const int8_t*>(row)[c]);
  }
}

// Prefetch of the line kPrefetchBytes past p (none when 0).
HWY_INLINE void PrefetchAhead(const uint8_t* p) {
  if constexpr (kPrefetchBytes > 0) PrefetchToL2(p + kPrefetchBytes);
}

// bf16 weights in pairs: Lanes(df) 32-bit words hold the 2 * Lanes weights
// of columns [c, c + 2 * Lanes), the even column in each word's low half
// (little-endian), so a shift and a mask widen them exactly. One full load per
// 2 * Lanes weights, where LoadWeights zero-extends Lanes at a time, streams
// DRAM 1.15-1.25x faster on AVX-512 (measured against the same kernel with
// LoadWeights); x enters with each such block reordered evens-then-odds
// (PermuteEvensOdds).
HWY_INLINE void LoadBF16Pair(DF df, const uint8_t* row, int64_t c, VF* even, VF* odd) {
  const hn::RebindToUnsigned<DF> du;
  auto words = hn::LoadU(du, reinterpret_cast<const uint32_t*>(row + c * 2));
#if HWY_ARCH_X86 && HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
  // One load into a register for both uses: GCC folds the load into each of
  // them instead, and the extra load costs stream rate (Llama-3.2-1B bf16
  // decode matrices at 2 AVX-512 threads, in-process A/B: 1.03-1.10x median
  // over 3 runs of 8 rounds).
  asm("" : "+x"(words.raw));
#endif
  *even = hn::BitCast(df, hn::ShiftLeft<16>(words));
  *odd = hn::BitCast(df, hn::And(words, hn::Set(du, 0xFFFF0000u)));
}

// Columns of a bf16 row that take the paired layout: whole blocks of
// max(4 * Lanes, one cache line), so both decode kernels' paired loops end
// exactly there; the columns after it stay in natural order.
inline int64_t BF16PairedCols(int64_t cols) {
  const int64_t block = std::max<int64_t>(32, 4 * static_cast<int64_t>(hn::Lanes(DF())));
  return cols / block * block;
}

// y[t0 + t][r0 + r] for r < R, t < TT: R weight rows streamed once against TT
// tokens. x: [T, cols]; y: [T, ldy].
// bf16: the first paired_cols columns of x are in the paired layout
// (LoadBF16Pair); other dtypes pass 0.
template <DType kType, int R, int TT>
HWY_NOINLINE void DecodeTile(const WeightMatrix& w, int64_t r0, const float* x, int64_t t0,
                             int64_t paired_cols, const float* bias, float* y, int64_t ldy) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t cols = w.cols;
  const int64_t row_bytes = RowBytes(w);
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = static_cast<const uint8_t*>(w.data) + (r0 + r) * row_bytes;
  const float* xs[TT];
  for (int t = 0; t < TT; ++t) xs[t] = x + (t0 + t) * cols;

  VF acc[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = hn::Zero(df);
  // One cache line of every row per unrolled step, with a software prefetch
  // kPrefetchBytes ahead: keeps enough lines in flight to saturate DRAM.
  constexpr int64_t kUnroll = std::max<int64_t>(
      1, 64 / static_cast<int64_t>(hn::MaxLanes(DF()) * WeightBytes<kType>()));
  int64_t c = 0;
  if constexpr (kType == DType::kBF16) {
    // One cache line of every row per step, as below, in pairs.
    constexpr int64_t kPairs = std::max<int64_t>(1, 64 / (4 * hn::MaxLanes(DF())));
    for (; c + kPairs * 2 * N <= paired_cols; c += kPairs * 2 * N) {
      for (int r = 0; r < R; ++r) PrefetchAhead(rows[r] + c * 2);
      for (int64_t u = 0; u < kPairs; ++u) {
        VF xe[TT], xo[TT];
        for (int t = 0; t < TT; ++t) {
          xe[t] = hn::LoadU(df, xs[t] + c + 2 * u * N);
          xo[t] = hn::LoadU(df, xs[t] + c + 2 * u * N + N);
        }
        for (int r = 0; r < R; ++r) {
          VF even, odd;
          LoadBF16Pair(df, rows[r], c + 2 * u * N, &even, &odd);
          for (int t = 0; t < TT; ++t) {
            acc[r][t] = hn::MulAdd(even, xe[t], acc[r][t]);
            acc[r][t] = hn::MulAdd(odd, xo[t], acc[r][t]);
          }
        }
      }
    }
  } else {
    (void)paired_cols;
  }
  for (; c + kUnroll * N <= cols; c += kUnroll * N) {
    for (int r = 0; r < R; ++r) PrefetchAhead(rows[r] + c * WeightBytes<kType>());
    for (int64_t u = 0; u < kUnroll; ++u) {
      VF xv[TT];
      for (int t = 0; t < TT; ++t) xv[t] = hn::LoadU(df, xs[t] + c + u * N);
      for (int r = 0; r < R; ++r) {
        const VF wv = LoadWeights<kType>(df, rows[r], c + u * N);
        for (int t = 0; t < TT; ++t) acc[r][t] = hn::MulAdd(wv, xv[t], acc[r][t]);
      }
    }
  }
  for (; c + N <= cols; c += N) {
    VF xv[TT];
    for (int t = 0; t < TT; ++t) xv[t] = hn::LoadU(df, xs[t] + c);
    for (int r = 0; r < R; ++r) {
      const VF wv = LoadWeights<kType>(df, rows[r], c);
      for (int t = 0; t < TT; ++t) acc[r][t] = hn::MulAdd(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < TT; ++t) {
      float s = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
      for (int64_t k = c; k < cols; ++k) s += WeightScalar<kType>(rows[r], k) * xs[t][k];
      if constexpr (kType == DType::kI8) s *= w.scales[r0 + r];
      if (bias != nullptr) s += bias[r0 + r];
      y[(t0 + t) * ldy + r0 + r] = s;
    }
  }
}

// One token (T == 1): kRows adjacent rows streamed start to end together,
// so each thread reads few, long sequential streams (what the hardware
// prefetchers and DRAM pages like best) while every load of x serves kRows
// rows; kRows * kChains independent accumulators hide the FMA latency (at
// least two chains per row: a bf16 pair fills two).
// bf16: paired_cols as for DecodeTile.
template <DType kType, int kRows>
HWY_NOINLINE void DecodeRowsSequential(const WeightMatrix& w, int64_t r0, const float* x,
                                       int64_t paired_cols, const float* bias, float* y) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t cols = w.cols;
  const int64_t row_bytes = RowBytes(w);
  constexpr int kChains = std::max(2, 4 / kRows);
  constexpr int64_t kStepBytes = kChains * hn::MaxLanes(DF()) * WeightBytes<kType>();
  const uint8_t* rows[kRows];
  for (int r = 0; r < kRows; ++r) rows[r] = static_cast<const uint8_t*>(w.data) + (r0 + r) * row_bytes;
  VF acc[kRows][kChains];
  for (int r = 0; r < kRows; ++r)
    for (int u = 0; u < kChains; ++u) acc[r][u] = hn::Zero(df);
  // Each step streams kChains vectors of every row from column c and
  // prefetches kPrefetchBytes ahead. Where that runs past the row's end, the
  // prefetch goes to the same place in the row kRows further on (the next
  // group's row r), not into row r + 1, which this call streams already: so
  // the next group's rows start in cache too (Llama-3.2-1B bf16 decode,
  // alternated: 0.72-0.77 of the roofline against 0.61-0.70). `stream` runs
  // the steps up to column `end` in two loops, before and after that point,
  // so the hot loop tests nothing per step (a per-step test streamed a large
  // bf16 matrix at 0.88-0.91 of the same loop without one; 0.94-1.0 split).
  const int64_t step_cols = kChains * N;
  int64_t c = 0;
  const auto stream = [&](int64_t end, int64_t col_bytes, auto&& step) {
    const int64_t own_row_cols =
        row_bytes > kPrefetchBytes ? (row_bytes - kPrefetchBytes + col_bytes - 1) / col_bytes : 0;
    const int64_t own_row_end = std::min(own_row_cols, end - step_cols + 1);
    for (; c < own_row_end; c += step_cols) step(c * col_bytes);
    for (; c + step_cols <= end; c += step_cols) step(c * col_bytes + (kRows - 1) * row_bytes);
  };
  const auto prefetch = [&](int64_t ahead) {
    for (int r = 0; r < kRows; ++r)
      for (int64_t b = 0; b < kStepBytes; b += 64) PrefetchAhead(rows[r] + ahead + b);
  };
  if constexpr (kType == DType::kBF16) {
    static_assert(kChains % 2 == 0, "bf16 pairs fill two chains each");
    stream(paired_cols, 2, [&](int64_t ahead) {
      prefetch(ahead);
      for (int u = 0; u < kChains; u += 2) {
        const VF xe = hn::LoadU(df, x + c + u * N), xo = hn::LoadU(df, x + c + (u + 1) * N);
        for (int r = 0; r < kRows; ++r) {
          VF even, odd;
          LoadBF16Pair(df, rows[r], c + u * N, &even, &odd);
          acc[r][u] = hn::MulAdd(even, xe, acc[r][u]);
          acc[r][u + 1] = hn::MulAdd(odd, xo, acc[r][u + 1]);
        }
      }
    });
  } else {
    (void)paired_cols;
  }
  stream(cols, static_cast<int64_t>(WeightBytes<kType>()), [&](int64_t ahead) {
    prefetch(ahead);
    for (int u = 0; u < kChains; ++u) {
      const VF xv = hn::LoadU(df, x + c + u * N);
      for (int r = 0; r < kRows; ++r) {
        acc[r][u] = hn::MulAdd(LoadWeights<kType>(df, rows[r], c + u * N), xv, acc[r][u]);
      }
    }
  });
  for (; c + N <= cols; c += N) {
    const VF xv = hn::LoadU(df, x + c);
    for (int r = 0; r < kRows; ++r) {
      acc[r][0] = hn::MulAdd(LoadWeights<kType>(df, rows[r], c), xv, acc[r][0]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    VF sum = acc[r][0];
    for (int u = 1; u < kChains; ++u) sum = hn::Add(sum, acc[r][u]);
    float s = hn::GetLane(hn::SumOfLanes(df, sum));
    for (int64_t k = c; k < cols; ++k) s += WeightScalar<kType>(rows[r], k) * x[k];
    if constexpr (kType == DType::kI8) s *= w.scales[r0 + r];
    if (bias != nullptr) s += bias[r0 + r];
    y[r0 + r] = s;
  }
}

// int4: x has been permuted (PermuteEvensOdds) so that within each block of
// 2 * Lanes columns of the full-group region the even columns (scaled by
// 2^-28) come first, then the odd ones, matching the low/high nibble split of
// one vector of bytes. Columns past the last full group are in their natural order.
template <int R, int TT>
HWY_NOINLINE void DecodeTileI4(const WeightMatrix& w, int64_t r0, const float* xp, int64_t t0,
                               int64_t full_groups, const float* bias, float* y, int64_t ldy) {
  const DF df;
  const hn::RebindToSigned<DF> di32;
  const hn::Rebind<int8_t, DF> d8;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t cols = w.cols;
  const int64_t g = w.group_size;
  const int64_t num_groups = Int4NumGroups(cols, w.group_size);
  const int64_t row_bytes = Int4RowBytes(cols);
  const uint8_t* rows[R];
  const float* scales[R];
  for (int r = 0; r < R; ++r) {
    rows[r] = static_cast<const uint8_t*>(w.data) + (r0 + r) * row_bytes;
    scales[r] = w.scales + (r0 + r) * num_groups;
  }
  const float* xs[TT];
  for (int t = 0; t < TT; ++t) xs[t] = xp + (t0 + t) * cols;

  VF acc[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = hn::Zero(df);
  for (int64_t gi = 0; gi < full_groups; ++gi) {
    VF gacc[R][TT];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) gacc[r][t] = hn::Zero(df);
    for (int64_t c = gi * g; c < (gi + 1) * g; c += 2 * N) {
      VF xe[TT], xo[TT];
      for (int t = 0; t < TT; ++t) {
        xe[t] = hn::LoadU(df, xs[t] + c);
        xo[t] = hn::LoadU(df, xs[t] + c + N);
      }
      for (int r = 0; r < R; ++r) {
        // Byte b = 16 * hi + (lo & 15) sign-extended: b >> 4 (arithmetic) is
        // the high nibble; b << 28 is the low nibble times 2^28, which the
        // permuted even columns of x carry as 2^-28 (PermuteEvensOdds).
        const auto bytes = hn::PromoteTo(di32, hn::LoadU(d8, reinterpret_cast<const int8_t*>(rows[r]) + c / 2));
        const VF lo = hn::ConvertTo(df, hn::ShiftLeft<28>(bytes));
        const VF hi = hn::ConvertTo(df, hn::ShiftRight<4>(bytes));
        for (int t = 0; t < TT; ++t) {
          gacc[r][t] = hn::MulAdd(lo, xe[t], gacc[r][t]);
          gacc[r][t] = hn::MulAdd(hi, xo[t], gacc[r][t]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const VF sv = hn::Set(df, scales[r][gi]);
      for (int t = 0; t < TT; ++t) acc[r][t] = hn::MulAdd(gacc[r][t], sv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < TT; ++t) {
      float s = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
      for (int64_t k = full_groups * g; k < cols; ++k) {
        s += static_cast<float>(Int4Get(rows[r], static_cast<size_t>(k))) * scales[r][k / g] *
             xs[t][k];
      }
      if (bias != nullptr) s += bias[r0 + r];
      y[(t0 + t) * ldy + r0 + r] = s;
    }
  }
}

// Rows streamed together by one decode tile: enough independent FMA chains
// and cache-line streams to keep DRAM busy (8 measured best on AVX-512 for
// every dtype; 2 and 16 were slower), few enough accumulators for the
// register file.
template <DType kType>
constexpr int kDecodeRows = 8;

template <DType kType, int TT>
HWY_INLINE void DecodeRowsTT(const WeightMatrix& w, int64_t r0, int64_t nr, const float* x,
                             int64_t t0, int64_t permuted_cols, const float* bias, float* y) {
  if constexpr (kType == DType::kI4) {
    const int64_t full_groups = permuted_cols / w.group_size;
    if (nr == kDecodeRows<kType>) {
      DecodeTileI4<kDecodeRows<kType>, TT>(w, r0, x, t0, full_groups, bias, y, w.rows);
    } else {
      for (int64_t r = r0; r < r0 + nr; ++r) DecodeTileI4<1, TT>(w, r, x, t0, full_groups, bias, y, w.rows);
    }
  } else {
    if (nr == kDecodeRows<kType>) {
      DecodeTile<kType, kDecodeRows<kType>, TT>(w, r0, x, t0, permuted_cols, bias, y, w.rows);
    } else {
      for (int64_t r = r0; r < r0 + nr; ++r) {
        DecodeTile<kType, 1, TT>(w, r, x, t0, permuted_cols, bias, y, w.rows);
      }
    }
  }
}

// x: [T, cols], its first permuted_cols columns reordered by PermuteEvensOdds
// (int4: whole groups; bf16: BF16PairedCols; others 0).
template <DType kType>
void DecodeMatMulT(ThreadPool& pool, const float* x, int64_t T, const WeightMatrix& w,
                   const float* bias, float* y, int64_t permuted_cols) {
  if constexpr (kType != DType::kI4) {
    // Rows streamed kSequentialRows at a time, in pieces of at least 16 KiB
    // of rows (a whole number of such groups): each thread streams its share
    // of them as one long sequential read. 8 rows at a time against one:
    // bf16 0.72-0.77 of the probe against 0.62-0.72, f32 0.93 against
    // 0.71-0.75, f16 the same (8192x2048, 2 AVX-512 threads, alternated
    // runs); one at a time had beaten the tiled path 1.05-1.35x.
    if (T == 1) {
      constexpr int kSequentialRows = 8;
      const int64_t min_rows = std::max<int64_t>(1, (int64_t{16} << 10) / RowBytes(w));
      pool.ParallelFor(w.rows, [&](int64_t r0, int64_t r1) {
        int64_t r = r0;
        for (; r + kSequentialRows <= r1; r += kSequentialRows) {
          DecodeRowsSequential<kType, kSequentialRows>(w, r, x, permuted_cols, bias, y);
        }
        for (; r < r1; ++r) DecodeRowsSequential<kType, 1>(w, r, x, permuted_cols, bias, y);
      }, (min_rows + kSequentialRows - 1) / kSequentialRows * kSequentialRows);
      return;
    }
  }
  constexpr int64_t kRows = kDecodeRows<kType>;
  const int64_t num_blocks = (w.rows + kRows - 1) / kRows;
  // Tokens per tile: at most 16 accumulators; int4 keeps a per-group
  // accumulator beside each running sum, so it takes one token at a time.
  constexpr int kMaxTT = kType == DType::kI4 ? 1 : std::max(1, 16 / kDecodeRows<kType>);
  pool.ParallelFor(num_blocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRows;
      const int64_t nr = std::min<int64_t>(kRows, w.rows - r0);
      for (int64_t t0 = 0; t0 < T;) {
        const int64_t tt = std::min<int64_t>(kMaxTT, T - t0);
        switch (tt) {
          case 1:
            DecodeRowsTT<kType, 1>(w, r0, nr, x, t0, permuted_cols, bias, y);
            break;
          case 2:
            DecodeRowsTT<kType, 2>(w, r0, nr, x, t0, permuted_cols, bias, y);
            break;
          case 3:
            if constexpr (kMaxTT >= 3) DecodeRowsTT<kType, 3>(w, r0, nr, x, t0, permuted_cols, bias, y);
            break;
          default:
            if constexpr (kMaxTT >= 4) DecodeRowsTT<kType, 4>(w, r0, nr, x, t0, permuted_cols, bias, y);
            break;
        }
        t0 += tt;
      }
    }
  }, 1);
}

// The low nibbles are multiplied as q * 2^28 (one shift instead of two), so
// the even columns of x enter as x * 2^-28 (exact unless |x| < 2^-98).
constexpr float kLowNibbleScale = 1.0f / 268435456.0f;

// xp[t] = x[t] with each block of 2 * Lanes columns in [0, permuted_cols)
// reordered evens-then-odds, the evens multiplied by even_scale (a power of
// two, so exactly), matching weights whose even and odd columns are split
// into two vectors (int4 nibbles, bf16 pairs).
void PermuteEvensOdds(const float* x, int64_t T, int64_t cols, int64_t permuted_cols,
                      float even_scale, float* xp) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t t = 0; t < T; ++t) {
    const float* src = x + t * cols;
    float* dst = xp + t * cols;
    for (int64_t b = 0; b < permuted_cols; b += 2 * N) {
      for (int64_t j = 0; j < N; ++j) {
        dst[b + j] = src[b + 2 * j] * even_scale;
        dst[b + N + j] = src[b + 2 * j + 1];
      }
    }
    std::memcpy(dst + permuted_cols, src + permuted_cols,
                static_cast<size_t>(cols - permuted_cols) * sizeof(float));
  }
}

void DecodeMatMul(ThreadPool& pool, const float* x, int64_t T, const WeightMatrix& w,
                  const float* bias, float* y);

// Column blocks one after another, each against its columns of x (gathered
// contiguous), the first adding the bias and writing y, the others adding
// to it.
void DecodeColumnBlocks(ThreadPool& pool, const float* x, int64_t T, const WeightMatrix& w,
                        const float* bias, float* y) {
  static thread_local std::vector<float> x_block, y_block;
  float* yb = Scratch(y_block, static_cast<size_t>(T * w.rows));
  for (int64_t b = 0; b < NumColumnBlocks(w); ++b) {
    const WeightMatrix block = ColumnBlock(w, b);
    const int64_t c0 = b * w.col_block;
    float* xb = Scratch(x_block, static_cast<size_t>(T * block.cols));
    for (int64_t t = 0; t < T; ++t) {
      std::memcpy(xb + t * block.cols, x + t * w.cols + c0,
                  static_cast<size_t>(block.cols) * sizeof(float));
    }
    if (b == 0) {
      DecodeMatMul(pool, xb, T, block, bias, y);
      continue;
    }
    DecodeMatMul(pool, xb, T, block, nullptr, yb);
    for (int64_t i = 0; i < T * w.rows; ++i) y[i] += yb[i];
  }
}

void DecodeMatMul(ThreadPool& pool, const float* x, int64_t T, const WeightMatrix& w,
                  const float* bias, float* y) {
  if (NumColumnBlocks(w) > 1) return DecodeColumnBlocks(pool, x, T, w, bias, y);
#if HWY_TARGET == HWY_AVX3_DL
  // Integer dot products on quantized activations (matmul_vnni.h): the f32
  // path below is bound by dequantization, not by memory, on few cores.
  if (vnni::Handles(w)) {
    const MatMulProduct product{.w = &w, .bias = bias, .y = y};
    return vnni::DecodeMatMul(pool, x, T, {&product, 1});
  }
#endif
  // x reordered for bf16 pairs and int4 nibbles (PermuteEvensOdds).
  static thread_local std::vector<float> permuted;
  switch (w.dtype) {
    case DType::kF32:
      return DecodeMatMulT<DType::kF32>(pool, x, T, w, bias, y, 0);
    case DType::kF16:
      return DecodeMatMulT<DType::kF16>(pool, x, T, w, bias, y, 0);
    case DType::kBF16: {
      const int64_t paired_cols = BF16PairedCols(w.cols);
      float* xp = Scratch(permuted, static_cast<size_t>(T * w.cols));
      PermuteEvensOdds(x, T, w.cols, paired_cols, 1.0f, xp);
      return DecodeMatMulT<DType::kBF16>(pool, xp, T, w, bias, y, paired_cols);
    }
    case DType::kI8:
      return DecodeMatMulT<DType::kI8>(pool, x, T, w, bias, y, 0);
    case DType::kI4: {
      const DF df;
      const int64_t step = 2 * static_cast<int64_t>(hn::Lanes(df));
      const int64_t full_groups = w.group_size % step == 0 ? w.cols / w.group_size : 0;
      float* xp = Scratch(permuted, static_cast<size_t>(T * w.cols));
      PermuteEvensOdds(x, T, w.cols, full_groups * w.group_size, kLowNibbleScale, xp);
      return DecodeMatMulT<DType::kI4>(pool, xp, T, w, bias, y, full_groups * w.group_size);
    }
    default:
      CHECK_MSG(false, "MatMul: unsupported weight dtype");
  }
}

// --------------------------------------------------------------- prefill path

// Tokens per register tile: MT x 2 vectors of accumulators must fit in the
// register file beside two weight vectors and a broadcast.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL || HWY_TARGET == HWY_NEON
constexpr int kPrefillTokens = 12;
#else
constexpr int kPrefillTokens = 6;
#endif

// y[m][0, nr) (+)= sum_k x[m][k] * panel[k][0, nr) for m < MT.
// panel: [kc, 2 * Lanes] f32; x: rows of stride ldx; y: rows of stride ldy.
template <int MT>
HWY_NOINLINE void PanelKernel(const float* HWY_RESTRICT panel, const float* HWY_RESTRICT x,
                              int64_t ldx, int64_t kc, float* HWY_RESTRICT y, int64_t ldy,
                              int64_t nr, bool accumulate) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF c0[MT], c1[MT];
  for (int m = 0; m < MT; ++m) {
    c0[m] = hn::Zero(df);
    c1[m] = hn::Zero(df);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const VF w0 = hn::LoadU(df, panel + k * 2 * N);
    const VF w1 = hn::LoadU(df, panel + k * 2 * N + N);
    for (int m = 0; m < MT; ++m) {
      const VF xb = hn::Set(df, x[m * ldx + k]);
      c0[m] = hn::MulAdd(w0, xb, c0[m]);
      c1[m] = hn::MulAdd(w1, xb, c1[m]);
    }
  }
  if (nr == 2 * N) {
    for (int m = 0; m < MT; ++m) {
      float* yr = y + m * ldy;
      if (accumulate) {
        c0[m] = hn::Add(c0[m], hn::LoadU(df, yr));
        c1[m] = hn::Add(c1[m], hn::LoadU(df, yr + N));
      }
      hn::StoreU(c0[m], df, yr);
      hn::StoreU(c1[m], df, yr + N);
    }
  } else {
    HWY_ALIGN float tmp[2 * hn::MaxLanes(df)];
    for (int m = 0; m < MT; ++m) {
      float* yr = y + m * ldy;
      hn::Store(c0[m], df, tmp);
      hn::Store(c1[m], df, tmp + N);
      for (int64_t j = 0; j < nr; ++j) yr[j] = accumulate ? yr[j] + tmp[j] : tmp[j];
    }
  }
}

template <int MT>
HWY_INLINE void PanelKernelUpTo(int64_t mt, const float* panel, const float* x, int64_t ldx,
                                int64_t kc, float* y, int64_t ldy, int64_t nr, bool accumulate) {
  if constexpr (MT > 0) {
    if (mt == MT) return PanelKernel<MT>(panel, x, ldx, kc, y, ldy, nr, accumulate);
    return PanelKernelUpTo<MT - 1>(mt, panel, x, ldx, kc, y, ldy, nr, accumulate);
  }
}

// Work unit: a strip of up to kMaxStripPanels panels (2 * Lanes rows each).
// For each depth block the strip's panels are packed together (they stay in
// L2), then every token tile is multiplied with all of them, so a tile of x
// is loaded into L1 once per strip rather than once per panel.
constexpr int64_t kMaxStripPanels = 8;
constexpr int64_t kTileStride = kPanelDepth + 16;  // floats between token rows of a packed tile

void PrefillMatMul(ThreadPool& pool, const float* x, int64_t T, const WeightMatrix& w,
                   const float* bias, float* y) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t panel_rows = 2 * N;
  const int64_t num_panels = (w.rows + panel_rows - 1) / panel_rows;
  // Enough strips for every thread to get about two.
  const int64_t strip_panels =
      std::clamp<int64_t>(num_panels / (2 * pool.size()), 1, kMaxStripPanels);
  const int64_t num_strips = (num_panels + strip_panels - 1) / strip_panels;
  const int64_t cols = w.cols;
  const int64_t panel_floats = kPanelDepth * panel_rows;
  pool.ParallelFor(
      num_strips,
      [&](int64_t s0, int64_t s1) {
        static thread_local std::vector<float> panel_storage, row_storage, tile_storage;
        float* panels = Scratch(panel_storage, static_cast<size_t>(kMaxStripPanels * panel_floats));
        float* x_tile = Scratch(tile_storage, static_cast<size_t>(kPrefillTokens * kTileStride));
        float* row = Scratch(row_storage, static_cast<size_t>(kPanelDepth));
        for (int64_t strip = s0; strip < s1; ++strip) {
          const int64_t p_begin = strip * strip_panels;
          const int64_t p_end = std::min(num_panels, p_begin + strip_panels);
          for (int64_t k0 = 0; k0 < cols; k0 += kPanelDepth) {
            const int64_t kc = std::min(kPanelDepth, cols - k0);
            for (int64_t p = p_begin; p < p_end; ++p) {
              float* panel = panels + (p - p_begin) * panel_floats;
              const int64_t r0 = p * panel_rows;
              const int64_t nr = std::min(panel_rows, w.rows - r0);
              for (int64_t j = 0; j < panel_rows; ++j) {
                if (j < nr) {
                  WidenRange(w, r0 + j, k0, kc, row);
                  for (int64_t k = 0; k < kc; ++k) panel[k * panel_rows + j] = row[k];
                } else {
                  for (int64_t k = 0; k < kc; ++k) panel[k * panel_rows + j] = 0.0f;
                }
              }
            }
            for (int64_t t0 = 0; t0 < T; t0 += kPrefillTokens) {
              const int64_t mt = std::min<int64_t>(kPrefillTokens, T - t0);
              // Copy the token tile to a short, padded stride: rows of x are
              // often a multiple of 4 KiB apart and would collide in L1 sets.
              for (int64_t m = 0; m < mt; ++m) {
                std::memcpy(x_tile + m * kTileStride, x + (t0 + m) * cols + k0,
                            static_cast<size_t>(kc) * sizeof(float));
              }
              for (int64_t p = p_begin; p < p_end; ++p) {
                const int64_t r0 = p * panel_rows;
                const int64_t nr = std::min(panel_rows, w.rows - r0);
                PanelKernelUpTo<kPrefillTokens>(mt, panels + (p - p_begin) * panel_floats, x_tile,
                                                kTileStride, kc, y + t0 * w.rows + r0, w.rows, nr,
                                                k0 > 0);
              }
            }
          }
          if (bias != nullptr) {
            const int64_t r0 = p_begin * panel_rows;
            const int64_t r1 = std::min(w.rows, p_end * panel_rows);
            for (int64_t t = 0; t < T; ++t) {
              for (int64_t r = r0; r < r1; ++r) y[t * w.rows + r] += bias[r];
            }
          }
        }
      },
      1);
}

// Whether T tokens take the decode path. int4 with VNNI always does: integer
// dot products outrun the f32 prefill path at every size (1.6x at 512 tokens).
bool UsesDecodePath(const WeightMatrix& w, int64_t T) {
#if HWY_TARGET == HWY_AVX3_DL
  if (vnni::Handles(w)) return w.dtype == DType::kI4 || T <= kDecodeMaxTokens;
#endif
  const bool quantized = w.dtype == DType::kI8 || w.dtype == DType::kI4;
  return T <= (quantized ? kDequantizingDecodeMaxTokens : kDecodeMaxTokens);
}

bool RoundsActivationsImpl(const WeightMatrix& w, int64_t T) {
#if HWY_TARGET == HWY_AVX3_DL
  return T >= 1 && vnni::Handles(w) && UsesDecodePath(w, T);
#else
  (void)w;
  (void)T;
  return false;
#endif
}

// Whether MatMulShared's products can share one pass: rounded activations
// (so one rounding serves them all), same dtype, cols and group size.
bool SharesOnePass(int64_t T, std::span<const MatMulProduct> products) {
#if HWY_TARGET == HWY_AVX3_DL
  if (products.size() > vnni::kMaxProducts) return false;
  const WeightMatrix& first = *products[0].w;
  for (const MatMulProduct& p : products) {
    const WeightMatrix& w = *p.w;
    if (!RoundsActivationsImpl(w, T) || w.dtype != first.dtype || w.cols != first.cols ||
        w.group_size != first.group_size) {
      return false;
    }
  }
  return true;
#else
  (void)T;
  (void)products;
  return false;
#endif
}

void MatMulImpl(ThreadPool& pool, const float* x, int64_t T, const WeightMatrix& w,
                const float* bias, float* y) {
  if (UsesDecodePath(w, T)) {
    DecodeMatMul(pool, x, T, w, bias, y);
  } else {
    PrefillMatMul(pool, x, T, w, bias, y);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace tandem::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tandem::cpu {

WeightMatrix ColumnBlock(const WeightMatrix& w, int64_t b) {
  CHECK(b >= 0 && b < NumColumnBlocks(w));
  if (NumColumnBlocks(w) == 1) {
    WeightMatrix plain = w;
    plain.col_block = 0;
    return plain;
  }
  const int64_t c0 = b * w.col_block;
  WeightMatrix block{.dtype = w.dtype, .rows = w.rows,
                     .cols = std::min(w.col_block, w.cols - c0)};
  block.data = static_cast<const uint8_t*>(w.data) +
               DTypeBytes(w.dtype, static_cast<size_t>(c0 * w.rows));
  return block;
}

int64_t ColumnBlockFor(DType dtype, int64_t cols) {
  constexpr int64_t kColumns = 2048;  // 8 KiB of f32 activations per token
  const bool widened = dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
  return widened && cols > kColumns ? kColumns : 0;
}

void CopyToColumnBlocks(ThreadPool& pool, const void* src, int64_t src_row_bytes, int64_t rows,
                        int64_t c0, int64_t cols, size_t elem, int64_t col_block, void* dst) {
  if (col_block <= 0 || col_block >= cols) col_block = cols;
  const uint8_t* from = static_cast<const uint8_t*>(src);
  uint8_t* to = static_cast<uint8_t*>(dst);
  // Block b holds rows x its width, after the whole blocks before it.
  const size_t full_block_bytes = elem * static_cast<size_t>(col_block * rows);
  constexpr int64_t kPieceBytes = int64_t{1} << 20;
  const int64_t piece_rows =
      std::max<int64_t>(1, kPieceBytes / std::max<int64_t>(1, static_cast<int64_t>(elem) * cols));
  pool.ParallelFor(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t b0 = 0; b0 < cols; b0 += col_block) {
      const size_t width = elem * static_cast<size_t>(std::min(col_block, cols - b0));
      uint8_t* block = to + full_block_bytes * static_cast<size_t>(b0 / col_block);
      for (int64_t r = r0; r < r1; ++r) {
        std::memcpy(block + width * static_cast<size_t>(r),
                    from + r * src_row_bytes + elem * static_cast<size_t>(c0 + b0), width);
      }
    }
  }, piece_rows);
}

HWY_EXPORT(MatMulImpl);
HWY_EXPORT(SharesOnePass);
HWY_EXPORT(RoundsActivationsImpl);

bool RoundsActivations(const WeightMatrix& w, int64_t T) {
  return HWY_DYNAMIC_DISPATCH(RoundsActivationsImpl)(w, T);
}

void MatMul(ThreadPool& pool, const float* x, int64_t T, const WeightMatrix& w, const float* bias,
            float* y) {
  CHECK_GE(T, 0);
  CHECK_GE(w.rows, 0);
  CHECK_GE(w.cols, 0);
  if (T == 0 || w.rows == 0) return;
  CHECK(w.data != nullptr || w.cols == 0);
  if (w.dtype == DType::kI8) CHECK(w.scales != nullptr);
  if (w.dtype == DType::kI4) {
    CHECK(w.scales != nullptr);
    CHECK_GT(w.group_size, 0);
  }
  CHECK_MSG(NumColumnBlocks(w) == 1 || w.dtype == DType::kF32 || w.dtype == DType::kF16 ||
                w.dtype == DType::kBF16,
            "MatMul: column blocks are for f32, f16 and bf16 weights");
  if (w.cols == 0) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < w.rows; ++r) y[t * w.rows + r] = bias ? bias[r] : 0.0f;
    return;
  }
  HWY_DYNAMIC_DISPATCH(MatMulImpl)(pool, x, T, w, bias, y);
}

void MatMulShared(ThreadPool& pool, const float* x, int64_t T,
                  std::span<const MatMulProduct> products) {
  bool shared = T >= 1 && !products.empty();
  for (const MatMulProduct& p : products) {
    CHECK(p.w != nullptr && p.y != nullptr);
    CHECK_EQ(p.w->cols, products[0].w->cols);  // one x [T, cols] for all
    // Empty matrices take MatMul's own handling.
    shared = shared && p.w->rows > 0 && p.w->cols > 0;
  }
  if (shared && HWY_DYNAMIC_DISPATCH(SharesOnePass)(T, products)) {
    for (const MatMulProduct& p : products) CHECK(p.w->data != nullptr && p.w->scales != nullptr);
    return vnni::DecodeMatMul(pool, x, T, products);
  }
  for (const MatMulProduct& p : products) MatMul(pool, x, T, *p.w, p.bias, p.y);
}

}  // namespace tandem::cpu
#endif  // HWY_ONCE
