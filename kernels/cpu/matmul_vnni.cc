// Decode GEMV for int8/int4 weights with AVX-512 VNNI integer dot products.
// Only the kernels carry the AVX-512 target attributes; matmul.cc calls in
// from its AVX3_DL target, which the CPU dispatch picks only where AVX-512
// VNNI (and VBMI) exist, so this file adds no requirement to other machines.
#include "kernels/cpu/matmul_vnni.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/prefetch.h"
#include "hwy/base.h"

#if HWY_ARCH_X86_64 && (HWY_COMPILER_GCC || HWY_COMPILER_CLANG)
#define TANDEM_HAVE_VNNI_KERNELS 1
#include <immintrin.h>
#else
#define TANDEM_HAVE_VNNI_KERNELS 0
#endif

namespace tandem::cpu::vnni {

bool Handles(const WeightMatrix& w) {
#if TANDEM_HAVE_VNNI_KERNELS
  if (w.dtype == DType::kI8) return true;
  if (w.dtype != DType::kI4) return false;
  const int g = w.group_size;
  return g == 32 || g == 64 || (g > 0 && g % 128 == 0);
#else
  (void)w;
  return false;
#endif
}

#if TANDEM_HAVE_VNNI_KERNELS
namespace {

// Activations of one call against int8 weights, quantized (see
// matmul_vnni.h) into one record per (token, chunk) of 256 inputs (four
// 64-byte vectors, the span one step of the kernel multiplies):
//   two planes of one int8 per input (high plane first), in input order like
//     the weight bytes;
//   16 int32: per 32-bit lane of vpdpbusd, -128 * (sum of the q the lane
//     multiplies), which cancels the bias that makes the weights unsigned
//     (w + 128);
//   16 floats: per lane, the quantization step d of the lane's block.
// Lane j of a chunk multiplies one block: inputs 64k + 4j + i (k, i < 4).
constexpr float kI8QMax = 32512.0f;  // q = 256 * hi + lo keeps hi in int8
constexpr int64_t kI8ChunkInputs = 256;
constexpr int64_t kI8PlaneBytes = 256;
constexpr int64_t kI8RecordBytes = 2 * kI8PlaneBytes + 64 + 64;

// Activations against int4 weights: one record per token, laid out
//   per chunk of 128 inputs (one 64-byte vector of packed nibbles), a plane
//     of one int8 per input: the 64 even inputs, then the 64 odd ones (the
//     low and high nibbles of the weight bytes);
//   per chunk, 4 floats: the quantization step d / 16 of each of its blocks
//     of 32 inputs (the 1 / 16 undoes the factor 16 of the weights, see
//     StepI4);
//   per weight group, a float: the sum over the group's blocks of
//     -128 * (sum of the block's q) * d / 16, which cancels the bias that
//     makes the weights unsigned (16 (q + 8)) once the group's scale
//     multiplies it (AddGroupBias); zero past the last group, up to a
//     multiple of 16 groups.
// Lane j of a chunk (the 32-bit lane of vpdpbusd) multiplies inputs 8j ..
// 8j + 7, of block j / 4. Steps per 32 inputs, and the bias per row rather
// than per chunk, keep a chunk's loads to its weights, its two activation
// vectors and 32 bytes of scales (StepI4).
constexpr float kI4QMax = 127.0f;
constexpr int64_t kI4ChunkInputs = 128;
constexpr int64_t kI4BlockInputs = 32;
constexpr int64_t kI4BlocksPerChunk = kI4ChunkInputs / kI4BlockInputs;  // steps per chunk

// Where the steps and the group bias terms of a token's int4 record start,
// in bytes from the record, for rows of `chunks` chunks.
constexpr int64_t I4StepsOffset(int64_t chunks) { return chunks * kI4ChunkInputs; }
constexpr int64_t I4GroupBiasOffset(int64_t chunks) {
  return I4StepsOffset(chunks) + chunks * kI4BlocksPerChunk * static_cast<int64_t>(sizeof(float));
}

struct QuantizedX {
  const uint8_t* data = nullptr;  // 64-byte aligned
  int64_t chunks = 0;
  int64_t record_bytes = 0;
  // int8: [T, chunks] records; against one token, one record per block of
  // kRowBlockInputs instead (chunks counts blocks).
  const uint8_t* Record(int64_t t, int64_t c) const {
    return data + (t * chunks + c) * record_bytes;
  }
  // int4: token t's record, its parts.
  const uint8_t* Planes(int64_t t) const { return data + t * record_bytes; }
  const float* Steps(int64_t t) const {
    return reinterpret_cast<const float*>(Planes(t) + I4StepsOffset(chunks));
  }
  const float* GroupBias(int64_t t) const {
    return reinterpret_cast<const float*>(Planes(t) + I4GroupBiasOffset(chunks));
  }
};

// Bytes of one token's int4 record (a multiple of 64).
int64_t I4RecordBytes(int64_t chunks, int64_t num_groups) {
  const int64_t bytes = I4GroupBiasOffset(chunks) + (num_groups + 15) / 16 * 64;
  return (bytes + 63) / 64 * 64;
}

// One token against int8 weights (RowsOneToken) takes records of its own:
// one per block of kRowBlockInputs consecutive inputs (the last block of a
// row may be partial, its tail zero), laid out
//   the high plane, then the low plane, kRowBlockInputs int8 each, in input
//     order like the weight bytes;
//   16 int32: per lane of vpdpbusd, -128 * (sum of the high plane's values
//     that the lane multiplies: inputs 64k + 4j + i of lane j), which
//     cancels the bias of the unsigned weights (w + 128);
//   16 int32: the same for the low plane;
//   16 floats: the block's quantization step d, in every lane.
// A row's integer sums then run through a whole block, 2 KiB of int8
// weights, before one conversion to f32. Records per chunk of 256 inputs
// convert and scale every 256 bytes, which cost stream rate where DRAM gives
// the cores 55-70 GB/s (a model of the loop streamed at 0.80-0.85 of a plain
// read, against 0.88-0.90 for whole blocks).
constexpr int64_t kRowBlockInputs = 2048;
constexpr int64_t kRowBlockRecordBytes = 2 * kRowBlockInputs + 3 * 64;

// Per-thread scratch for the quantized activations, 64-byte aligned.
uint8_t* Scratch(size_t bytes) {
  static thread_local std::vector<uint8_t> storage;
  if (storage.size() < bytes + 64) storage.resize(bytes + 64);
  auto p = reinterpret_cast<uintptr_t>(storage.data());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t{63});
}

// How far ahead of its current position each streamed row is prefetched (at
// least), into L2 (prefetch.h), except by int8's one-token loop
// (kOneTokenPrefetchBytesI8). When DRAM gives 45-55 GB/s to 2 AVX-512
// cores, the int8 and int4 matrices of a Llama-3.2-1B decode step stream at
// 0.84 and 0.82 of the bandwidth probe with 8 KiB, 0.71 with 4 KiB, and no
// better with 12 or 16 KiB (the lines in flight must cover DRAM latency at
// the higher rate); at 30 GB/s every distance from 4 KiB up reads the same.
// Into L1 (int4) streamed at 0.67-0.79, no prefetch at 0.92-0.99 of 30 GB/s.
constexpr int64_t kPrefetchBytes = 8192;
// How far ahead the int4 one-token loop also prefetches into L1 (StepI4).
constexpr int64_t kL1PrefetchBytes = 1024;

// Distance of the software prefetch of each streamed row: a whole number of
// tiles. A tile's R rows are one contiguous block, so each row prefetches the
// same row of a later tile rather than a row this tile streams already.
inline int64_t PrefetchDistance(int R, int64_t row_bytes) {
  const int64_t tile = R * row_bytes;
  return (kPrefetchBytes + tile - 1) / tile * tile;
}

}  // namespace

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which its
// -Wuninitialized flags when inlined (GCC bug 105593).
HWY_DIAGNOSTICS(push)
HWY_DIAGNOSTICS_OFF(disable : 4700, ignored "-Wuninitialized")
HWY_DIAGNOSTICS_OFF(disable : 4701, ignored "-Wmaybe-uninitialized")
HWY_PUSH_ATTRIBUTES("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,fma,bmi2")
namespace {

// The first n bytes of 64 (n may be out of [0, 64]).
HWY_INLINE __mmask64 FirstBytes(int64_t n) {
  if (n >= 64) return ~__mmask64{0};
  if (n <= 0) return 0;
  return (__mmask64{1} << n) - 1;
}

// Integer dot products of one int8 chunk for one token and one row, exact
// in int32: sum over the lane's inputs of q16 * w, where the record's init
// cancels the bias of the unsigned weights.
HWY_INLINE __m512i ChunkDotI8(const __m512i (&w)[4], const uint8_t* rec) {
  __m512i hi = _mm512_setzero_si512();
  __m512i lo = _mm512_load_si512(rec + 2 * kI8PlaneBytes);
  for (int k = 0; k < 4; ++k) {
    hi = _mm512_dpbusd_epi32(hi, w[k], _mm512_load_si512(rec + 64 * k));
    lo = _mm512_dpbusd_epi32(lo, w[k], _mm512_load_si512(rec + kI8PlaneBytes + 64 * k));
  }
  return _mm512_add_epi32(_mm512_slli_epi32(hi, 8), lo);
}

HWY_INLINE __m512 RecordScaleI8(const uint8_t* rec) {
  return _mm512_load_ps(rec + 2 * kI8PlaneBytes + 64);
}

// The first n lanes of 16 (n may be out of [0, 16]).
HWY_INLINE __mmask16 FirstFloats(int64_t n) {
  if (n >= 16) return 0xFFFF;
  if (n <= 0) return 0;
  return static_cast<__mmask16>((1u << n) - 1);
}

// Lane j of the result = m[j / 4][4 * (j % 4)].
HWY_INLINE __m512i PickEvery4th(const __m512i (&m)[4]) {
  const __m512i idx = _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
  const __m512i a = _mm512_permutex2var_epi32(m[0], idx, m[1]);
  const __m512i b = _mm512_permutex2var_epi32(m[2], idx, m[3]);
  return _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0));
}

// Every lane of each 128-bit group becomes the group's maximum.
HWY_INLINE __m512 GroupMax4(__m512 v) {
  v = _mm512_max_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_max_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
}

// Every lane of each 128-bit group becomes the group's sum.
HWY_INLINE __m512i GroupSum4(__m512i v) {
  v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
  return _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));
}

// Quantizes q = round(v * inv) of kN vectors into two planes, q = 256 * hi +
// lo: planes[0][m] (hi) and planes[1][m] (lo, in [-128, 127]) of vector m.
template <int kN>
HWY_INLINE void SplitPlanes(const __m512 (&v)[kN], const __m512 (&inv)[kN], __m512i (&q16)[kN],
                            __m512i (&planes)[2][kN]) {
  for (int m = 0; m < kN; ++m) {
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v[m], inv[m]));
    q16[m] = q;
    const __m512i hi = _mm512_srai_epi32(_mm512_add_epi32(q, _mm512_set1_epi32(128)), 8);
    planes[0][m] = hi;
    planes[1][m] = _mm512_sub_epi32(q, _mm512_slli_epi32(hi, 8));
  }
}

// Where the largest |x| of a block is below this, the block is all zero
// (its contribution is far below f32 resolution; avoids an infinite inverse).
constexpr float kTinyBlock = 1e-30f;

// qmax / amax and amax / qmax per lane, 0 for blocks below kTinyBlock.
HWY_INLINE __m512 InverseStep(__m512 amax, float qmax) {
  const __mmask16 live = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(kTinyBlock), _CMP_GE_OQ);
  return _mm512_maskz_div_ps(live, _mm512_set1_ps(qmax), amax);
}

HWY_INLINE __m512 Step(__m512 amax, float qmax) {
  const __mmask16 live = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(kTinyBlock), _CMP_GE_OQ);
  return _mm512_maskz_div_ps(live, amax, _mm512_set1_ps(qmax));
}

// One int8-weight chunk: x[0, n) of the chunk's 256 inputs (zero past n).
HWY_INLINE void QuantizeChunkI8(const float* x, int64_t n, uint8_t* rec) {
  __m512 v[16], inv[16];
  for (int m = 0; m < 16; ++m) v[m] = _mm512_maskz_loadu_ps(FirstFloats(n - 16 * m), x + 16 * m);
  // Block j = lane j of the weight vectors: inputs 64k + 4j + i, found in
  // float vector 4k + j / 4 at lanes 4 (j % 4) + i.
  __m512 amax[4];
  __m512i amax_bits[4];
  for (int q = 0; q < 4; ++q) {
    __m512 a = _mm512_abs_ps(v[q]);
    for (int k = 1; k < 4; ++k) a = _mm512_max_ps(a, _mm512_abs_ps(v[4 * k + q]));
    amax[q] = GroupMax4(a);
    amax_bits[q] = _mm512_castps_si512(amax[q]);
  }
  for (int m = 0; m < 16; ++m) inv[m] = InverseStep(amax[m % 4], kI8QMax);
  __m512i q16[16], planes[2][16];
  SplitPlanes<16>(v, inv, q16, planes);
  for (int p = 0; p < 2; ++p) {
    for (int m = 0; m < 16; ++m) {
      _mm_store_si128(reinterpret_cast<__m128i*>(rec + p * kI8PlaneBytes + 16 * m),
                      _mm512_cvtepi32_epi8(planes[p][m]));
    }
  }
  __m512i sums[4];
  for (int q = 0; q < 4; ++q) {
    __m512i sum = q16[q];
    for (int k = 1; k < 4; ++k) sum = _mm512_add_epi32(sum, q16[4 * k + q]);
    sums[q] = GroupSum4(sum);
  }
  _mm512_store_si512(rec + 2 * kI8PlaneBytes,
                     _mm512_mullo_epi32(PickEvery4th(sums), _mm512_set1_epi32(-128)));
  _mm512_store_ps(rec + 2 * kI8PlaneBytes + 64,
                  Step(_mm512_castsi512_ps(PickEvery4th(amax_bits)), kI8QMax));
}

// One int4-weight chunk: x[0, n) of the chunk's 128 inputs (zero past n)
// into its plane and the steps of its 4 blocks, and block_bias[b] = -128 *
// (sum of block b's q) * step / 16 (see QuantizedX).
HWY_INLINE void QuantizeChunkI4(const float* x, int64_t n, uint8_t* plane, float* steps,
                                float (&block_bias)[4]) {
  __m512 v[8];
  for (int m = 0; m < 8; ++m) v[m] = _mm512_maskz_loadu_ps(FirstFloats(n - 16 * m), x + 16 * m);
  __m512i q[8];
  for (int b = 0; b < 4; ++b) {  // block b: vectors 2b and 2b + 1
    const float amax =
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[2 * b]), _mm512_abs_ps(v[2 * b + 1])));
    const __m512 inv = InverseStep(_mm512_set1_ps(amax), kI4QMax);
    q[2 * b] = _mm512_cvtps_epi32(_mm512_mul_ps(v[2 * b], inv));
    q[2 * b + 1] = _mm512_cvtps_epi32(_mm512_mul_ps(v[2 * b + 1], inv));
    const float step = amax >= kTinyBlock ? amax / kI4QMax : 0.0f;
    const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[2 * b], q[2 * b + 1]));
    steps[b] = step * (1.0f / 16);
    block_bias[b] = static_cast<float>(-128 * sum) * (step * (1.0f / 16));
  }
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  for (int m = 0; m < 8; m += 2) {
    _mm_store_si128(reinterpret_cast<__m128i*>(plane + 8 * m),
                    _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(q[m], even, q[m + 1])));
    _mm_store_si128(reinterpret_cast<__m128i*>(plane + 64 + 8 * m),
                    _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(q[m], odd, q[m + 1])));
  }
}

// One token x [cols] into one record per block of kRowBlockInputs (see
// kRowBlockRecordBytes): q = round_to_even(x * (32512 / m)) with m the
// block's largest |x|, split as q = 256 * hi + lo.
HWY_NOINLINE void QuantizeRowBlocksI8(const float* x, int64_t cols, uint8_t* out) {
  constexpr int64_t kVectors = kRowBlockInputs / 16;
  for (int64_t b0 = 0; b0 < cols; b0 += kRowBlockInputs, out += kRowBlockRecordBytes) {
    const int64_t n = std::min(kRowBlockInputs, cols - b0);
    __m512 amax = _mm512_setzero_ps();
    for (int64_t m = 0; m < kVectors; ++m) {
      const __m512 v = _mm512_maskz_loadu_ps(FirstFloats(n - 16 * m), x + b0 + 16 * m);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    }
    const __m512 block_max = _mm512_set1_ps(_mm512_reduce_max_ps(amax));
    const __m512 inv = InverseStep(block_max, kI8QMax);
    // Sums of each plane by m % 4: vector m's value e is multiplied in lane
    // 4 (m % 4) + e / 4 of vpdpbusd.
    __m512i sums[2][4];
    for (int p = 0; p < 2; ++p) {
      for (int q = 0; q < 4; ++q) sums[p][q] = _mm512_setzero_si512();
    }
    for (int64_t m = 0; m < kVectors; ++m) {
      const __m512 v[1] = {_mm512_maskz_loadu_ps(FirstFloats(n - 16 * m), x + b0 + 16 * m)};
      const __m512 invs[1] = {inv};
      __m512i q16[1], planes[2][1];
      SplitPlanes<1>(v, invs, q16, planes);
      _mm_store_si128(reinterpret_cast<__m128i*>(out + 16 * m), _mm512_cvtepi32_epi8(planes[0][0]));
      _mm_store_si128(reinterpret_cast<__m128i*>(out + kRowBlockInputs + 16 * m),
                      _mm512_cvtepi32_epi8(planes[1][0]));
      for (int p = 0; p < 2; ++p) sums[p][m % 4] = _mm512_add_epi32(sums[p][m % 4], planes[p][0]);
    }
    uint8_t* tail = out + 2 * kRowBlockInputs;
    for (int p = 0; p < 2; ++p) {
      __m512i lane_sums[4];
      for (int q = 0; q < 4; ++q) lane_sums[q] = GroupSum4(sums[p][q]);
      _mm512_store_si512(tail + 64 * p,
                         _mm512_mullo_epi32(PickEvery4th(lane_sums), _mm512_set1_epi32(-128)));
    }
    _mm512_store_ps(tail + 128, Step(block_max, kI8QMax));
  }
}

// Quantizes x [T, cols] into records [T, chunks] (int8 weights) or one
// record per token of qx.record_bytes (int4 weights of group_size).
template <bool kInt4>
HWY_NOINLINE void QuantizeActivations(const float* x, int64_t T, int64_t cols, int64_t chunks,
                                      int group_size, int64_t record_bytes, uint8_t* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * cols;
    if constexpr (kInt4) {
      uint8_t* planes = out + t * record_bytes;
      float* steps = reinterpret_cast<float*>(planes + I4StepsOffset(chunks));
      float* group_bias = reinterpret_cast<float*>(planes + I4GroupBiasOffset(chunks));
      const int64_t num_groups = Int4NumGroups(cols, group_size);
      std::fill(group_bias, group_bias + (num_groups + 15) / 16 * 16, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t c0 = c * kI4ChunkInputs;
        float block_bias[kI4BlocksPerChunk];
        QuantizeChunkI4(xt + c0, std::min(kI4ChunkInputs, cols - c0), planes + c0,
                        steps + kI4BlocksPerChunk * c, block_bias);
        for (int64_t b = 0; b < kI4BlocksPerChunk && c0 + b * kI4BlockInputs < cols; ++b) {
          group_bias[(c0 + b * kI4BlockInputs) / group_size] += block_bias[b];
        }
      }
    } else {
      (void)group_size;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t c0 = c * kI8ChunkInputs;
        QuantizeChunkI8(xt + c0, std::min(kI8ChunkInputs, cols - c0),
                        out + (t * chunks + c) * record_bytes);
      }
    }
  }
}

// One chunk (256 inputs) of R int8 rows against TT tokens; kMasked: the
// chunk runs past the end of the rows.
template <int R, int TT, bool kMasked>
HWY_INLINE void StepI8(const uint8_t* const (&rows)[R], int64_t b0, int64_t cols,
                       const uint8_t* const (&recs)[TT], __m512 (&acc)[R][TT]) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t prefetch = PrefetchDistance(R, cols);
  for (int r = 0; r < R; ++r) {
    __m512i wv[4];
    for (int k = 0; k < 4; ++k) {
      if constexpr (kMasked) {
        wv[k] = _mm512_maskz_loadu_epi8(FirstBytes(cols - b0 - 64 * k), rows[r] + b0 + 64 * k);
      } else {
        PrefetchToL2(rows[r] + b0 + 64 * k + prefetch);
        wv[k] = _mm512_loadu_si512(rows[r] + b0 + 64 * k);
      }
      wv[k] = _mm512_xor_si512(wv[k], flip);
    }
    for (int t = 0; t < TT; ++t) {
      acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ChunkDotI8(wv, recs[t])),
                                  RecordScaleI8(recs[t]), acc[r][t]);
    }
  }
}

// out[r][t] = the sum over the accumulator sets acc[u][r][t].
template <int kSets, int R, int TT>
HWY_INLINE void SumSets(const __m512 (&acc)[kSets][R][TT], __m512 (&out)[R][TT]) {
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < TT; ++t) {
      out[r][t] = acc[0][r][t];
      for (int u = 1; u < kSets; ++u) out[r][t] = _mm512_add_ps(out[r][t], acc[u][r][t]);
    }
  }
}

// acc[r][t]: 16 lanes whose sum is row r0 + r times token t0 + t before the
// row scale, int8 weights: R rows streamed once against TT tokens.
template <int R, int TT>
HWY_INLINE void AccumulateI8(const WeightMatrix& w, int64_t r0, const QuantizedX& qx, int64_t t0,
                             __m512 (&out)[R][TT]) {
  // One row against one token (a tile's last row and token at T >= 2; one
  // token alone takes RowsDotI8) rotates 4 sets of accumulators, as
  // AccumulateI4 does: measured when whole decode steps took this path, at
  // 0.79-0.94 of the bandwidth probe against 0.81-0.87 with one set.
  constexpr int kChains = R * TT == 1 ? 4 : 1;
  const int64_t cols = w.cols;
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = static_cast<const uint8_t*>(w.data) + (r0 + r) * cols;
  const uint8_t* recs[TT];
  for (int t = 0; t < TT; ++t) recs[t] = qx.Record(t0 + t, 0);
  __m512 acc[kChains][R][TT];
  for (int u = 0; u < kChains; ++u)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) acc[u][r][t] = _mm512_setzero_ps();
  const int64_t full = cols / 256;
  int64_t c = 0;
  for (; c + kChains <= full; c += kChains) {
    for (int u = 0; u < kChains; ++u) {
      StepI8<R, TT, false>(rows, (c + u) * 256, cols, recs, acc[u]);
      for (int t = 0; t < TT; ++t) recs[t] += kI8RecordBytes;
    }
  }
  for (; c < full; ++c) {
    StepI8<R, TT, false>(rows, c * 256, cols, recs, acc[0]);
    for (int t = 0; t < TT; ++t) recs[t] += kI8RecordBytes;
  }
  if (full < qx.chunks) StepI8<R, TT, true>(rows, full * 256, cols, recs, acc[0]);
  SumSets(acc, out);
}

// How far ahead of its current position each int8 row that one token
// streams (ChunkI8) is prefetched into L2: within the row, and past its end
// to the same place in the row R further on, the next group's row r (rows
// r + 1 .. R - 1 stream already). One group of rows ahead (16 KiB for rows of
// 2 KiB), as the tiles for several tokens prefetch, streamed Llama-3.2-1B
// int8 decode matrices 1.11x slower on one core and 1.11-1.16x slower on two
// (in-process A/B); 384 B and 1 KiB lost 3-7% against 512 B.
constexpr int64_t kOneTokenPrefetchBytesI8 = 512;

// One chunk (256 inputs) of R int8 rows of `cols` weights against one
// token's block record: each 64-byte column k of the chunk goes to
// accumulator pair k % kPairs of its row, and each activation vector is
// loaded once for all R rows. kMasked: the row's last, partial chunk (n
// inputs left; the record is 0 past them).
template <int R, int kPairs, bool kMasked>
HWY_INLINE void ChunkI8(const uint8_t* const (&rows)[R], int64_t at, int64_t n, int64_t cols,
                        const uint8_t* rec, __m512i (&hi)[R][kPairs], __m512i (&lo)[R][kPairs]) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int k = 0; k < 4; ++k) {
    const __m512i xh = _mm512_load_si512(rec + 64 * k);
    const __m512i xl = _mm512_load_si512(rec + kRowBlockInputs + 64 * k);
    for (int r = 0; r < R; ++r) {
      __m512i wv;
      if constexpr (kMasked) {
        wv = _mm512_maskz_loadu_epi8(FirstBytes(n - 64 * k), rows[r] + at + 64 * k);
      } else {
        const int64_t ahead = at + 64 * k + kOneTokenPrefetchBytesI8;
        PrefetchToL2(rows[r] + (ahead < cols ? ahead : ahead + (R - 1) * cols));
        wv = _mm512_loadu_si512(rows[r] + at + 64 * k);
      }
      wv = _mm512_xor_si512(wv, flip);
      hi[r][k % kPairs] = _mm512_dpbusd_epi32(hi[r][k % kPairs], wv, xh);
      lo[r][k % kPairs] = _mm512_dpbusd_epi32(lo[r][k % kPairs], wv, xl);
    }
  }
}

// Rows of int8 weights one token streams together (RowsOneToken): they share
// each activation load and keep 8 streams in flight per thread. Llama-3.2-1B
// decode steps at 2 threads, alternated: 8 rows 6-10% more tokens/s than 4,
// and 4 had given 4-7% more than one.
constexpr int kOneTokenRowsI8 = 8;

// sum[0, R): 16 lanes each, whose sum is int8 row r (of cols weights) times
// one token before the row scale, against the token's block records
// (QuantizeRowBlocksI8). A row's integer sums run through a whole block
// before one conversion; R > 1 rows share each activation load.
template <int R>
HWY_INLINE void RowsDotI8(const uint8_t* const (&rows)[R], int64_t cols, const uint8_t* rec,
                          __m512* sum) {
  // Accumulator pairs per row: 4 hide the latency for one row; 8 rows'
  // 16 accumulators are independent enough with one pair each, and more would
  // not fit the 32 vector registers.
  static_assert(R == 1 || R == kOneTokenRowsI8, "RowsOneToken's row counts");
  constexpr int kPairs = R == 1 ? 4 : 1;
  for (int r = 0; r < R; ++r) sum[r] = _mm512_setzero_ps();
  for (int64_t b0 = 0; b0 < cols; b0 += kRowBlockInputs, rec += kRowBlockRecordBytes) {
    const int64_t n = std::min(kRowBlockInputs, cols - b0);
    // The accumulators start at zero and the record's bias terms are added
    // once, after the block. Started from the same bias vector, the 16
    // accumulators were copied among registers and spilled in every chunk
    // (32 vector moves per 64 dot products, against 2 now): a 65536 x
    // 2048 matrix then streamed at 0.74-0.83 of a plain read of its bytes
    // where the read gave 60-78 GB/s, against 0.80-0.95 now. Llama-3.2-1B
    // int8 decode at 2 threads, 9 alternated pairs: 33.2 tokens/s against
    // 32.1 on average, within the host's swings.
    const __m512i bias_hi = _mm512_load_si512(rec + 2 * kRowBlockInputs);
    const __m512i bias_lo = _mm512_load_si512(rec + 2 * kRowBlockInputs + 64);
    __m512i hi[R][kPairs], lo[R][kPairs];
    for (int r = 0; r < R; ++r) {
      for (int k = 0; k < kPairs; ++k) hi[r][k] = lo[r][k] = _mm512_setzero_si512();
    }
    int64_t c = 0;
    for (; c + 256 <= n; c += 256) {
      ChunkI8<R, kPairs, false>(rows, b0 + c, 256, cols, rec + c, hi, lo);
    }
    if (c < n) ChunkI8<R, kPairs, true>(rows, b0 + c, n - c, cols, rec + c, hi, lo);
    // Each lane holds the exact sum of its 128 products w * q per plane
    // (below 2^21 in magnitude), so the conversions to f32 are exact too.
    const __m512 step = _mm512_load_ps(rec + 2 * kRowBlockInputs + 128);
    for (int r = 0; r < R; ++r) {
      __m512i h = _mm512_add_epi32(bias_hi, hi[r][0]), l = _mm512_add_epi32(bias_lo, lo[r][0]);
      for (int k = 1; k < kPairs; ++k) {
        h = _mm512_add_epi32(h, hi[r][k]);
        l = _mm512_add_epi32(l, lo[r][k]);
      }
      const __m512 q =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(h), _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(l));
      sum[r] = _mm512_fmadd_ps(q, step, sum[r]);
    }
  }
}

// The weight scales of the 4 activation blocks (32 inputs each) of int4
// chunk c of a row; kGroup 0 means another multiple of 128. kMasked: the
// chunk is the last, partial one (fewer groups may remain).
template <int kGroup, bool kMasked>
HWY_INLINE __m128 BlockScales(const float* scales, int64_t num_groups, int64_t c, int group_size) {
  if constexpr (kGroup == 32 || kGroup == 64) {
    constexpr int kPerChunk = 128 / kGroup;
    const int64_t g0 = c * kPerChunk;
    const int64_t left = kMasked ? std::clamp<int64_t>(num_groups - g0, 0, kPerChunk) : kPerChunk;
    const __m128 s = _mm_maskz_loadu_ps(static_cast<__mmask8>((1u << left) - 1), scales + g0);
    if constexpr (kGroup == 32) return s;
    return _mm_permute_ps(s, _MM_SHUFFLE(1, 1, 0, 0));
  } else if constexpr (kGroup == 128) {
    (void)num_groups;
    (void)group_size;
    return _mm_set1_ps(scales[c]);
  } else {
    (void)num_groups;
    return _mm_set1_ps(scales[c * 128 / group_size]);
  }
}

// vpternlogd's truth table of (a & b) ^ c.
constexpr int kAndXor = (0xF0 & 0xCC) ^ 0xAA;

// Lane j of the result = lane j / 4 of s (the block that lane j multiplies).
HWY_INLINE __m512 PerLane(__m128 s) {
  const __m512i block_of_lane = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  return _mm512_permutexvar_ps(block_of_lane, _mm512_castps128_ps512(s));
}

// One chunk (128 inputs, 64 bytes) of R int4 rows against TT tokens, whose
// planes and steps start at this chunk's. A chunk loads its 64 weight bytes
// once, each token's two activation vectors, and 16 bytes each of weight and
// activation scales: its loads, more than its 9 vector operations, had bound
// the one-token loop (Zen 4 takes one 64-byte load per cycle), which now
// streams as fast as the same loop without its arithmetic (in-process A/B on
// Llama-3.2-1B int4 decode matrices): the memory access is what remains.
template <int kGroup, int R, int TT, bool kMasked>
HWY_INLINE void StepI4(const uint8_t* const (&rows)[R], const float* const (&scales)[R], int64_t c,
                       int64_t row_bytes, int64_t num_groups, int group_size,
                       const uint8_t* const (&planes)[TT], const float* const (&steps)[TT],
                       __m512 (&acc)[R][TT]) {
  const __m512i high_half = _mm512_set1_epi8(static_cast<char>(0xF0));
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t prefetch = PrefetchDistance(R, row_bytes);
  const int64_t b0 = c * 64;
  // Several rows or tokens spread each scale vector to the lanes once;
  // one row against one token multiplies the two 4-block vectors first.
  constexpr bool kSpread = R * TT > 1;
  __m512 xs[TT];
  if constexpr (kSpread) {
    for (int t = 0; t < TT; ++t) xs[t] = PerLane(_mm_load_ps(steps[t]));
  }
  for (int r = 0; r < R; ++r) {
    __m512i bytes;
    if constexpr (kMasked) {
      bytes = _mm512_maskz_loadu_epi8(FirstBytes(row_bytes - b0), rows[r] + b0);
    } else {
      PrefetchToL2(rows[r] + b0 + prefetch);
      // One row against one token (RowsOneToken, rows one after another)
      // also pulls its line 1 KiB ahead into L1: one core then streams
      // Llama-3.2-1B int4 decode matrices 1.05-1.09x faster (in-process
      // A/B, 5 runs of 4 rounds), 1.02-1.08x at 2 threads; 2 KiB gains as
      // much, 16 KiB to L2 with it less, L1 alone loses 15%.
      if constexpr (R * TT == 1) PrefetchToL1(rows[r] + b0 + kL1PrefetchBytes);
      // The row's scales are a stream of their own (a quarter of the weight
      // bytes for groups of 32): the same distance ahead, in inputs, once
      // per 64-byte line (16 scales). The group size is a constant here: a
      // division per chunk cost more than the rest of the chunk's work
      // (whole int4 decode steps at about 0.6-0.7 of the bandwidth probe
      // when it read 40 GB/s or more). Other multiples of 128 (kGroup 0)
      // have at most 1/64 of the weight bytes in scales and leave them to
      // the hardware prefetchers.
      if constexpr (kGroup > 0) {
        constexpr int64_t kChunksPerLine = 16 * kGroup / 128;
        if (c % kChunksPerLine == 0) PrefetchToL2(scales[r] + (b0 + prefetch) * 2 / kGroup);
      }
      bytes = _mm512_loadu_si512(rows[r] + b0);
      // One load into a register for both unpacking ops below: GCC folds
      // the load into each of them instead. Llama-3.2-1B int4 decode
      // matrices, 8 alternated rounds at 2 threads: 1.06-1.26x faster
      // (median 1.13x).
      asm("" : "+v"(bytes));
    }
    // Each nibble q becomes the unsigned byte 16 (q + 8): the nibble moved
    // to the high half of the byte (the low one by a 16-bit shift, which
    // never crosses into the byte's high half), its sign bit flipped, the
    // low half cleared; one ternary-logic op each. Shifts and logic ops run
    // beside the dot products, where the GF(2) affine unpack competed with
    // them (Zen 4: a chunk in about 4.8 cycles instead of 6.4).
    const __m512i low =
        _mm512_ternarylogic_epi32(_mm512_slli_epi16(bytes, 4), high_half, sign, kAndXor);
    const __m512i high = _mm512_ternarylogic_epi32(bytes, high_half, sign, kAndXor);
    const __m128 ws = BlockScales<kGroup, kMasked>(scales[r], num_groups, c, group_size);
    __m512 ws16;
    if constexpr (kSpread) ws16 = PerLane(ws);
    for (int t = 0; t < TT; ++t) {
      // The products 16 (q + 8) * q_x, exact in int32; AddGroupBias takes
      // the 8 * 16 * q_x back out.
      __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, _mm512_load_si512(planes[t]));
      dot = _mm512_dpbusd_epi32(dot, high, _mm512_load_si512(planes[t] + 64));
      const __m512 scale =
          kSpread ? _mm512_mul_ps(ws16, xs[t]) : PerLane(_mm_mul_ps(ws, _mm_load_ps(steps[t])));
      acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][t]);
    }
  }
}

// out[r][t] += the lanes of the sum over the rows' groups g of
// scales[r][g] * bias[t][g]: the part of each result that cancels the
// weights' bias (QuantizedX). Each 16 groups' scales and biases are loaded
// once for all R * TT products.
template <int R, int TT>
HWY_INLINE void AddGroupBias(const float* const (&scales)[R], const float* const (&bias)[TT],
                             int64_t num_groups, __m512 (&out)[R][TT]) {
  for (int64_t g = 0; g < num_groups; g += 16) {
    __m512 b[TT];
    for (int t = 0; t < TT; ++t) b[t] = _mm512_loadu_ps(bias[t] + g);
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_maskz_loadu_ps(FirstFloats(num_groups - g), scales[r] + g);
      for (int t = 0; t < TT; ++t) out[r][t] = _mm512_fmadd_ps(s, b[t], out[r][t]);
    }
  }
}

// As AccumulateI8 for int4 weights, scales included. A chunk is one FMA per
// accumulator, so small tiles rotate several sets of accumulators: each
// chunk's latency (two dot products, a conversion and the FMA) then overlaps
// the next ones'. One row against one token takes 4: against 8, Llama-3.2-1B
// int4 decode matrices streamed 1.05-1.08x faster on one core and 1.04x on
// two (in-process A/B; a row of 2048 inputs is only 16 chunks, so summing the
// sets counts); 2 sets gave 1.04-1.05x. (An earlier form of this loop, with
// twice the loads per chunk, had been fastest with 8.)
template <int kGroup, int R, int TT>
HWY_INLINE void AccumulateI4(const WeightMatrix& w, int64_t r0, const QuantizedX& qx, int64_t t0,
                             __m512 (&out)[R][TT]) {
  constexpr int kChains = R * TT == 1 ? 4 : (R * TT <= 4 ? 2 : 1);
  const int64_t row_bytes = Int4RowBytes(w.cols);
  const int64_t num_groups = Int4NumGroups(w.cols, w.group_size);
  const int g = w.group_size;
  const uint8_t* rows[R];
  const float* scales[R];
  for (int r = 0; r < R; ++r) {
    rows[r] = static_cast<const uint8_t*>(w.data) + (r0 + r) * row_bytes;
    scales[r] = w.scales + (r0 + r) * num_groups;
  }
  const uint8_t* planes[TT];
  const float* steps[TT];
  for (int t = 0; t < TT; ++t) {
    planes[t] = qx.Planes(t0 + t);
    steps[t] = qx.Steps(t0 + t);
  }
  auto next = [&] {
    for (int t = 0; t < TT; ++t) {
      planes[t] += kI4ChunkInputs;
      steps[t] += 4;
    }
  };
  __m512 acc[kChains][R][TT];
  for (int u = 0; u < kChains; ++u)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) acc[u][r][t] = _mm512_setzero_ps();
  const int64_t full = row_bytes / 64;
  int64_t c = 0;
  for (; c + kChains <= full; c += kChains) {
    // Unrolled, so each set of accumulators stays in its registers.
#pragma GCC unroll 8
    for (int u = 0; u < kChains; ++u) {
      StepI4<kGroup, R, TT, false>(rows, scales, c + u, row_bytes, num_groups, g, planes, steps,
                                   acc[u]);
      next();
    }
  }
  for (; c < full; ++c) {
    StepI4<kGroup, R, TT, false>(rows, scales, c, row_bytes, num_groups, g, planes, steps, acc[0]);
    next();
  }
  if (full < qx.chunks) {
    StepI4<kGroup, R, TT, true>(rows, scales, full, row_bytes, num_groups, g, planes, steps,
                                acc[0]);
  }
  SumSets(acc, out);
  const float* bias[TT];
  for (int t = 0; t < TT; ++t) bias[t] = qx.GroupBias(t0 + t);
  AddGroupBias(scales, bias, num_groups, out);
}

template <bool kInt4, int kGroup, int R, int TT>
HWY_INLINE void Accumulate(const WeightMatrix& w, int64_t r0, const QuantizedX& qx, int64_t t0,
                           __m512 (&acc)[R][TT]) {
  if constexpr (kInt4) {
    AccumulateI4<kGroup, R, TT>(w, r0, qx, t0, acc);
  } else {
    AccumulateI8<R, TT>(w, r0, qx, t0, acc);
  }
}

// y[t0 + t][r0 + r] for r < R, t < TT: R rows streamed once against TT
// tokens. y is [T, w.rows].
template <bool kInt4, int kGroup, int R, int TT>
HWY_NOINLINE void Tile(const WeightMatrix& w, int64_t r0, const QuantizedX& qx, int64_t t0,
                       const float* bias, float* y) {
  __m512 acc[R][TT];
  Accumulate<kInt4, kGroup, R, TT>(w, r0, qx, t0, acc);
  for (int r = 0; r < R; ++r) {
    const float scale = kInt4 ? 1.0f : w.scales[r0 + r];
    for (int t = 0; t < TT; ++t) {
      float s = _mm512_reduce_add_ps(acc[r][t]) * scale;
      if (bias != nullptr) s += bias[r0 + r];
      y[(t0 + t) * w.rows + r0 + r] = s;
    }
  }
}

// Lane j of the result = the sum of the 16 lanes of v[j]: a transpose-and-add
// tree, 3 instructions per vector instead of a full reduction each.
HWY_INLINE __m512 SumEach(const __m512 (&v)[16]) {
  // Halves: lanes of 256-bit half h of w[k] sum to v[2k + h].
  __m512 w[8];
  for (int k = 0; k < 8; ++k) {
    w[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Quarters: the lanes of 128-bit quarter q of x[k] sum to v[4k + q].
  __m512 x[4];
  for (int k = 0; k < 4; ++k) {
    x[k] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // Pairs: lanes 2i, 2i + 1 of quarter q of z[k] sum to v[8k + 4i + q].
  __m512 z[2];
  for (int k = 0; k < 2; ++k) {
    z[k] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * k], x[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(x[2 * k], x[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Lane i of quarter q is the sum of v[4i + q].
  const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // v[j] with j = 4i + q sits at lane 4q + i.
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_ps(order, u);
}

// y[r0 .. r0 + n) for one token (T = 1), n <= 16: the rows one after another
// (int4), or kOneTokenRowsI8 at a time (int8), so each thread streams one
// contiguous range, as the DRAM prefetchers like best, while the token's
// records stay in L1; the rows' sums are reduced together.
template <bool kInt4, int kGroup>
HWY_NOINLINE void RowsOneToken(const WeightMatrix& w, int64_t r0, int64_t n, const QuantizedX& qx,
                               const float* bias, float* y) {
  __m512 sums[16];
  int64_t j = 0;
  if constexpr (kInt4) {
    for (; j < n; ++j) {
      __m512 acc[1][1];
      AccumulateI4<kGroup, 1, 1>(w, r0 + j, qx, 0, acc);
      sums[j] = acc[0][0];
    }
  } else {
    const auto* data = static_cast<const uint8_t*>(w.data);
    for (; j + kOneTokenRowsI8 <= n; j += kOneTokenRowsI8) {
      const uint8_t* rows[kOneTokenRowsI8];
      for (int r = 0; r < kOneTokenRowsI8; ++r) rows[r] = data + (r0 + j + r) * w.cols;
      RowsDotI8<kOneTokenRowsI8>(rows, w.cols, qx.data, sums + j);
    }
    for (; j < n; ++j) {
      const uint8_t* rows[1] = {data + (r0 + j) * w.cols};
      RowsDotI8<1>(rows, w.cols, qx.data, sums + j);
    }
  }
  for (; j < 16; ++j) sums[j] = _mm512_setzero_ps();
  const __mmask16 live = FirstFloats(n);
  __m512 out = SumEach(sums);
  if constexpr (!kInt4) out = _mm512_mul_ps(out, _mm512_maskz_loadu_ps(live, w.scales + r0));
  if (bias != nullptr) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(live, bias + r0));
  _mm512_mask_storeu_ps(y + r0, live, out);
}

}  // namespace
HWY_POP_ATTRIBUTES
HWY_DIAGNOSTICS(pop)

namespace {

// Tiles for T >= 2: 4 rows share each load of the quantized activations
// against up to 4 tokens at a time (R * TT accumulators plus the weight
// vectors within the 32 registers); later passes over more tokens find the
// tile's rows in cache. One token takes RowsOneToken instead.
constexpr int kTileRows = 4;
constexpr int kTileTokens = 4;

template <bool kInt4, int kGroup, int R>
void TileTokens(const WeightMatrix& w, int64_t r0, const QuantizedX& qx, int64_t t0, int64_t t1,
                const float* bias, float* y) {
  static_assert(kTileTokens == 4);
  for (; t1 - t0 >= 4; t0 += 4) Tile<kInt4, kGroup, R, 4>(w, r0, qx, t0, bias, y);
  switch (t1 - t0) {
    case 1:
      return Tile<kInt4, kGroup, R, 1>(w, r0, qx, t0, bias, y);
    case 2:
      return Tile<kInt4, kGroup, R, 2>(w, r0, qx, t0, bias, y);
    case 3:
      return Tile<kInt4, kGroup, R, 3>(w, r0, qx, t0, bias, y);
  }
}

// Tokens per pass of all row tiles when T > 1: their records (at most 20 KiB
// a token) stay in L2 while every tile passes over them.
constexpr int64_t kTokenBlock = 32;

// The row tiles of every product. kGroup: int4's group size (0: another
// multiple of 128).
template <bool kInt4, int kGroup>
void RunTiles(ThreadPool& pool, const QuantizedX& qx, int64_t T,
              std::span<const MatMulProduct> products) {
  const int64_t rows_per_block = T == 1 ? 16 : kTileRows;
  // The row blocks of every product, numbered one product after another.
  int64_t first_block[kMaxProducts + 1] = {0};
  for (size_t i = 0; i < products.size(); ++i) {
    first_block[i + 1] =
        first_block[i] + (products[i].w->rows + rows_per_block - 1) / rows_per_block;
  }
  const int64_t num_blocks = first_block[products.size()];
  for (int64_t t0 = 0; t0 < T; t0 += kTokenBlock) {
    const int64_t t1 = std::min(T, t0 + kTokenBlock);
    pool.ParallelFor(
        num_blocks,
        [&](int64_t b0, int64_t b1) {
          size_t i = 0;
          for (int64_t b = b0; b < b1; ++b) {
            while (b >= first_block[i + 1]) ++i;
            const WeightMatrix& w = *products[i].w;
            const float* bias = products[i].bias;
            float* y = products[i].y;
            const int64_t r0 = (b - first_block[i]) * rows_per_block;
            const int64_t n = std::min(rows_per_block, w.rows - r0);
            if (T == 1) {
              RowsOneToken<kInt4, kGroup>(w, r0, n, qx, bias, y);
            } else if (n == kTileRows) {
              TileTokens<kInt4, kGroup, kTileRows>(w, r0, qx, t0, t1, bias, y);
            } else {
              for (int64_t r = r0; r < r0 + n; ++r) {
                TileTokens<kInt4, kGroup, 1>(w, r, qx, t0, t1, bias, y);
              }
            }
          }
        },
        1);  // one block per piece: threads stream their shares and finish together
  }
}

template <bool kInt4>
void DecodeMatMulT(ThreadPool& pool, const float* x, int64_t T,
                   std::span<const MatMulProduct> products) {
  const WeightMatrix& w = *products[0].w;
  QuantizedX qx;
  if (!kInt4 && T == 1) {
    qx.chunks = (w.cols + kRowBlockInputs - 1) / kRowBlockInputs;
    qx.record_bytes = kRowBlockRecordBytes;
    uint8_t* records = Scratch(static_cast<size_t>(qx.chunks * qx.record_bytes));
    QuantizeRowBlocksI8(x, w.cols, records);
    qx.data = records;
    return RunTiles<false, 0>(pool, qx, T, products);
  }
  constexpr int64_t kChunkInputs = kInt4 ? kI4ChunkInputs : kI8ChunkInputs;
  qx.chunks = (w.cols + kChunkInputs - 1) / kChunkInputs;
  qx.record_bytes =
      kInt4 ? I4RecordBytes(qx.chunks, Int4NumGroups(w.cols, w.group_size)) : kI8RecordBytes;
  // Bytes of one token's records.
  const int64_t token_bytes = kInt4 ? qx.record_bytes : qx.chunks * qx.record_bytes;
  uint8_t* records = Scratch(static_cast<size_t>(T * token_bytes));
  if (T < kTokenBlock) {  // a few tokens: not worth a hand-off to the pool
    QuantizeActivations<kInt4>(x, T, w.cols, qx.chunks, w.group_size, qx.record_bytes, records);
  } else {
    pool.ParallelFor(T, [&](int64_t t0, int64_t t1) {
      QuantizeActivations<kInt4>(x + t0 * w.cols, t1 - t0, w.cols, qx.chunks, w.group_size,
                                 qx.record_bytes, records + t0 * token_bytes);
    });
  }
  qx.data = records;
  if constexpr (!kInt4) return RunTiles<false, 0>(pool, qx, T, products);
  switch (w.group_size) {
    case 32:
      return RunTiles<true, 32>(pool, qx, T, products);
    case 64:
      return RunTiles<true, 64>(pool, qx, T, products);
    case 128:
      return RunTiles<true, 128>(pool, qx, T, products);
    default:
      return RunTiles<true, 0>(pool, qx, T, products);
  }
}

}  // namespace

void DecodeMatMul(ThreadPool& pool, const float* x, int64_t T,
                  std::span<const MatMulProduct> products) {
  CHECK(T >= 1 && !products.empty() && products.size() <= kMaxProducts);
  const WeightMatrix& w = *products[0].w;
  for (const MatMulProduct& p : products) {
    CHECK(Handles(*p.w) && p.w->cols > 0);
    CHECK(p.w->dtype == w.dtype && p.w->cols == w.cols && p.w->group_size == w.group_size);
  }
  if (w.dtype == DType::kI4) return DecodeMatMulT<true>(pool, x, T, products);
  DecodeMatMulT<false>(pool, x, T, products);
}

#else  // !TANDEM_HAVE_VNNI_KERNELS

void DecodeMatMul(ThreadPool&, const float*, int64_t, std::span<const MatMulProduct>) {
  CHECK_MSG(false, "vnni::DecodeMatMul: not built for this architecture");
}

#endif  // TANDEM_HAVE_VNNI_KERNELS

}  // namespace tandem::cpu::vnni
