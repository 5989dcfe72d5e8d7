#pragma once
// y = x · Wᵀ (+ bias) with f32 activations and weights stored as f32, f16,
// bf16, int8 (one scale per output row) or int4 (one scale per group of
// `group_size` inputs of a row). Accumulation is f32 (see Numerics below for
// the one integer path).
//
// Two internal paths, chosen by the number of tokens T and the weights:
//  - decode (T up to 128; int8/int4 without AVX-512 VNNI up to 8; int4 with
//    VNNI always): each weight row is streamed once per pass of a few tokens
//    while it is in registers/L1; bandwidth-bound for few tokens.
//  - prefill (more tokens): weights are widened to f32 in panels that stay in
//    cache and are reused across all T tokens by a register-tiled kernel;
//    compute-bound.
// Both paths dispatch at run time to the widest SIMD of the machine.
//
// Numerics: products are summed in f32, so results differ from
// MatMulReference by f32 rounding only, with one exception (RoundsActivations
// says where it applies). On CPUs with AVX-512 VNNI the decode path (int8:
// T <= 128; int4: every T) of int8 and int4 weights (group size 32, 64 or a
// multiple of 128) rounds each token's activations to integers per block and
// sums the integer products exactly (int32) before scaling:
//  - int8 weights: 16-bit activations, q = round_to_even(x * (32512 / m)),
//    step m / 32512, where m = max|x| over each block of 16 inputs: within
//    each 256 inputs counted from the start of the row, block j (j < 16) is
//    inputs 64k + 4j + i (k, i < 4); about 2-3e-5 relative L2 error on
//    Gaussian activations. One token (T = 1) takes blocks of 2048
//    consecutive inputs from the start of the row instead (so a row's
//    integer sums run through 2 KiB of weights between conversions, see
//    matmul_vnni.cc): about 4-6e-5;
//  - int4 weights: 8-bit activations, q = round_to_even(x * (127 / m)), step
//    m / 127, where m = max|x| over each block of 32 inputs counted from the
//    start of the row (inputs past the end count as 0; a block with
//    m < 1e-30 is all 0); about 5e-3 relative L2, far below the int4 weight
//    rounding itself (about 1e-1).
// It is the price of not widening every weight to f32, which bounds the f32
// path by compute, not memory.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/dtype.h"
#include "kernels/cpu/thread_pool.h"

namespace tandem::cpu {

// A read-only view of a weight matrix [rows = out_features, cols = in_features].
// The memory is owned elsewhere (mmap, quantized buffers) and must outlive it.
struct WeightMatrix {
  DType dtype = DType::kF32;  // kF32, kF16, kBF16, kI8 or kI4
  int64_t rows = 0;           // output features
  int64_t cols = 0;           // input features
  // Row-major [rows, cols]. Element bytes as dtype; kI4 packs two signed 4-bit
  // values per byte, element 2i in the low nibble, and every row starts on a
  // byte boundary: row r begins at byte r * Int4RowBytes(cols).
  // Any alignment is accepted (f16/bf16 need 2-byte alignment).
  const void* data = nullptr;
  // kI8: [rows], w[r][c] = q[r][c] * scales[r].
  // kI4: [rows, Int4NumGroups(cols, group_size)],
  //      w[r][c] = q[r][c] * scales[r * num_groups + c / group_size]
  //      (the last group of a row may be partial).
  // Other dtypes: unused (may be null).
  const float* scales = nullptr;
  int group_size = 0;  // kI4 only: 32 or 128 (any positive multiple of 32 works)
  // Column blocks (f32, f16 and bf16 only): 0, or col_block >= cols, is the
  // row-major layout above. Otherwise the matrix is stored as
  // NumColumnBlocks() blocks one after another, block b holding columns
  // [b * col_block, min(cols, (b + 1) * col_block)) of every row, row-major,
  // and starting at element b * col_block * rows (ColumnBlock). Wide rows
  // stream faster so (ColumnBlockFor).
  int64_t col_block = 0;
};

// Blocks of w's layout (1 when row-major).
inline int64_t NumColumnBlocks(const WeightMatrix& w) {
  if (w.col_block <= 0 || w.col_block >= w.cols) return 1;
  return (w.cols + w.col_block - 1) / w.col_block;
}

// Block b of w (b < NumColumnBlocks(w)) as a row-major matrix of its columns.
WeightMatrix ColumnBlock(const WeightMatrix& w, int64_t b);

// The col_block MatMul streams fastest for weights of this dtype and width
// (0: row-major). A decode step reads every row of a matrix once against the
// same activations, which stay in L1 while the weights stream past them only
// when they are narrow: the same bf16 bytes in blocks of 2048 columns
// streamed 1.3x (rows of 4096) and 1.6x (rows of 8192) faster than
// row-major, as fast as rows of 2048 (2 AVX-512 cores); blocks of 4096 gained
// little. Integer weights take activations of one or two bytes per input
// (matmul_vnni.h) and stay row-major.
int64_t ColumnBlockFor(DType dtype, int64_t cols);

// Copies rows [0, rows) and columns [c0, c0 + cols) of a row-major matrix
// (element size `elem` bytes, `src_row_bytes` bytes per row) into `dst` in the
// layout of a WeightMatrix with that col_block (0: row-major), in pieces of
// rows spread over the pool (a load-time copy is bound by page faults, which
// the cores take in parallel).
void CopyToColumnBlocks(ThreadPool& pool, const void* src, int64_t src_row_bytes, int64_t rows,
                        int64_t c0, int64_t cols, size_t elem, int64_t col_block, void* dst);

inline int64_t Int4RowBytes(int64_t cols) { return (cols + 1) / 2; }
inline int64_t Int4NumGroups(int64_t cols, int group_size) {
  return (cols + group_size - 1) / group_size;
}

// Bytes of w's weight data (all rows, in any column-block layout), and the
// number of floats in its scales (0 for f32, f16 and bf16).
inline size_t WeightDataBytes(const WeightMatrix& w) {
  if (w.dtype == DType::kI4) return static_cast<size_t>(w.rows * Int4RowBytes(w.cols));
  return DTypeBytes(w.dtype, static_cast<size_t>(w.rows * w.cols));
}
inline size_t WeightScaleCount(const WeightMatrix& w) {
  if (w.dtype == DType::kI8) return static_cast<size_t>(w.rows);
  if (w.dtype == DType::kI4) {
    return static_cast<size_t>(w.rows * Int4NumGroups(w.cols, w.group_size));
  }
  return 0;
}

// y[t][r] = sum_c x[t][c] * w[r][c] + (bias ? bias[r] : 0).
// x: [T, w.cols] row-major; bias: [w.rows] or null; y: [T, w.rows] row-major.
// y must not overlap x. Any pointer alignment is accepted. T >= 0.
// Never allocates after the first call with a given T and shape of w on a thread
// (scratch space is kept per thread and grows only).
void MatMul(ThreadPool& pool, const float* x, int64_t T, const WeightMatrix& w,
            const float* bias, float* y);

// One product of MatMulShared: y = x · wᵀ (+ bias), shapes and rules as for
// MatMul.
struct MatMulProduct {
  const WeightMatrix* w = nullptr;
  const float* bias = nullptr;  // or null
  float* y = nullptr;
};

// MatMul of one x [T, cols] with each of several weight matrices of `cols`
// columns (q/k/v, gate/up):
// bit for bit the results of one MatMul per product. Where the products have
// the same dtype, cols and group size and the activations are rounded
// (RoundsActivations), x is rounded once and all products share one pass
// over the pool, which saves the thread hand-offs that dominate small
// products.
void MatMulShared(ThreadPool& pool, const float* x, int64_t T,
                  std::span<const MatMulProduct> products);

// Whether MatMul rounds the activations (see Numerics) for weights w and T
// tokens on this machine.
bool RoundsActivations(const WeightMatrix& w, int64_t T);

// Plain scalar reference of MatMul (double accumulation, no SIMD, one thread).
void MatMulReference(const float* x, int64_t T, const WeightMatrix& w, const float* bias,
                     float* y);

// Widens/dequantizes row `row` of w (any layout) into out[0, w.cols) (f32). Exact for
// f32/f16/bf16; for int8/int4 it is q * scale computed in f32.
void DequantizeRow(const WeightMatrix& w, int64_t row, float* out);

// Symmetric per-row int8 quantization of w [rows, cols]:
//   scales[r] = max_c |w[r][c]| / 127 (0 for an all-zero row),
//   out[r][c] = clamp(round_half_away_from_zero(w[r][c] / scales[r]), -127, 127)
//   (0 where the scale is 0).
// out: [rows, cols] int8; scales: [rows].
void QuantizeInt8PerRow(const float* w, int64_t rows, int64_t cols, int8_t* out, float* scales);

// Symmetric group-wise int4 quantization of w [rows, cols], groups of
// `group_size` consecutive inputs within a row (the last may be partial):
//   scale = max |w| over the group / 7 (0 for an all-zero group),
//   q = clamp(round_half_away_from_zero(w / scale), -8, 7)  (0 where scale is 0).
// packed: [rows, Int4RowBytes(cols)] bytes (layout of WeightMatrix kI4; the
// unused high nibble of an odd-length row is 0);
// scales: [rows, Int4NumGroups(cols, group_size)].
void QuantizeInt4Grouped(const float* w, int64_t rows, int64_t cols, int group_size,
                         uint8_t* packed, float* scales);

}  // namespace tandem::cpu
