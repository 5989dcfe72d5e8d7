#pragma once
// Element-wise and row-wise operations of a transformer layer, f32 in and out.
// Each has a plain scalar reference (namespace `reference` below) used by the
// tests. None of them allocates. Pointers need no particular alignment.
// In-place use (y == x) is allowed wherever noted.
#include <cstdint>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace tandem::cpu {

// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, per row t.
// x, y: [T, H] (y may equal x); weight: [H] f32. Norm weights stored as
// f16/bf16 in a checkpoint are widened to f32 once at load (exact), so no
// low-precision variant is needed.
void RmsNorm(const float* x, const float* weight, float eps, int64_t T, int64_t H, float* y);

// y[i] += x[i] for i in [0, n). Residual add.
void AddInPlace(float* y, const float* x, int64_t n);

// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may equal
// gate or up.
void SiluMul(const float* gate, const float* up, float* out, int64_t n);

// out[t] = row ids[t] of table, widened/dequantized to f32 (see DequantizeRow).
// table: [vocab, H] (any WeightMatrix dtype); ids: [T], each in [0, vocab)
// (validated by the caller; CHECKed here); out: [T, H].
void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t T, float* out);

// In-place numerically stable softmax over x[0, n), n >= 1.
void Softmax(float* x, int64_t n);

// log(sum_i exp(x[i])) over x[0, n), n >= 1, computed stably (relative
// error a few 1e-7: SIMD exp, sums of 1024 values in f32, of those in double).
double LogSumExp(const float* x, int64_t n);

// The lowest index of the largest value of x[0, n), n >= 1: greedy
// sampling's choice over a vocabulary of logits. NaNs are passed over (0 when
// every value is NaN).
int64_t ArgMax(const float* x, int64_t n);

// Rotary position embedding frequencies, as in Hugging Face transformers
// (`ROPE_INIT_FUNCTIONS`): default, "linear" and "llama3".
enum class RopeScaling { kNone, kLinear, kLlama3 };

struct RopeParams {
  int head_dim = 0;     // even
  double theta = 10000.0;  // rope_theta
  RopeScaling scaling = RopeScaling::kNone;
  double factor = 1.0;  // kLinear, kLlama3
  // kLlama3 only.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position = 8192.0;
};

// inv_freq[i], i in [0, head_dim / 2), computed in double:
//   base: 1 / theta^(2i / head_dim)
//   kLinear: base / factor
//   kLlama3 (HF `_compute_llama3_parameters`): with wavelen = 2π / base,
//     low_wl = original_max_position / low_freq_factor,
//     high_wl = original_max_position / high_freq_factor:
//     wavelen < high_wl -> base; wavelen > low_wl -> base / factor;
//     otherwise s = (original_max_position / wavelen - low_freq_factor) /
//                   (high_freq_factor - low_freq_factor),
//               (1 - s) * base / factor + s * base.
struct RopeTable {
  explicit RopeTable(const RopeParams& params);
  int head_dim = 0;
  std::vector<double> inv_freq;  // [head_dim / 2]
};

// Rotates x in place, rotate-half layout: for each token t, head h and
// i < head_dim/2, with a = positions[t] * inv_freq[i] (evaluated in double):
//   x0 = x[t][h][i], x1 = x[t][h][i + head_dim/2]
//   x[t][h][i]              = x0 * cos(a) - x1 * sin(a)
//   x[t][h][i + head_dim/2] = x1 * cos(a) + x0 * sin(a)
// x: [T, heads, head_dim]; positions: [T] (>= 0).
void ApplyRope(const RopeTable& table, float* x, int64_t T, int heads, const int32_t* positions);

namespace reference {
// Scalar references with double accumulation, same contracts as above.
void RmsNorm(const float* x, const float* weight, float eps, int64_t T, int64_t H, float* y);
void SiluMul(const float* gate, const float* up, float* out, int64_t n);
void Softmax(float* x, int64_t n);
double LogSumExp(const float* x, int64_t n);
int64_t ArgMax(const float* x, int64_t n);
void ApplyRope(const RopeTable& table, float* x, int64_t T, int heads, const int32_t* positions);
}  // namespace reference

}  // namespace tandem::cpu
