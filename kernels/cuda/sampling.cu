#include "kernels/cuda/sampling.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 1024;

// Orders tokens as the CPU sampler sorts them: by logit descending, ties by
// id ascending; every key is distinct.
__device__ __forceinline__ uint64_t Key(float logit, int id) {
  uint32_t u = __float_as_uint(logit);
  u ^= (u & 0x80000000u) ? 0xFFFFFFFFu : 0x80000000u;
  return (static_cast<uint64_t>(u) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(id));
}
__device__ __forceinline__ int KeyId(uint64_t key) {
  return static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(key));
}

struct Shared {
  double hist[256];
  double partial[kThreads / 32];
  uint64_t key_partial[kThreads / 32];
  uint64_t prefix;
  double above;
  double value;
  uint64_t key;
};

__device__ double BlockSum(Shared& sh, double v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) sh.partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int i = 0; i < kThreads / 32; ++i) t += sh.partial[i];
    sh.value = t;
  }
  __syncthreads();
  const double total = sh.value;
  __syncthreads();
  return total;
}

__device__ uint64_t BlockMaxKey(Shared& sh, uint64_t v) {
  for (int o = 16; o > 0; o /= 2) {
    const uint64_t other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
  if (threadIdx.x % 32 == 0) sh.key_partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint64_t m = 0;
    for (int i = 0; i < kThreads / 32; ++i) m = sh.key_partial[i] > m ? sh.key_partial[i] : m;
    sh.key = m;
  }
  __syncthreads();
  const uint64_t m = sh.key;
  __syncthreads();
  return m;
}

// The row being sampled after penalties and temperature: which tokens are
// still candidates (key >= floor and weight >= min_weight) and their
// unnormalised probabilities exp(logit - max).
struct Candidates {
  const float* logits;
  int vocab;
  float max_logit;
  uint64_t floor;
  double min_weight;
  __device__ double Weight(int i) const {
    return exp(static_cast<double>(logits[i] - max_logit));
  }
  // The token's weight if it is a candidate, else a negative number.
  __device__ double Kept(int i, uint64_t* key) const {
    *key = Key(logits[i], i);
    if (*key < floor) return -1.0;
    const double w = Weight(i);
    return w >= min_weight ? w : -1.0;
  }
};

// The summed weight of the candidates; every thread gets it.
__device__ double KeptTotal(Shared& sh, const Candidates& c) {
  double part = 0;
  for (int i = threadIdx.x; i < c.vocab; i += blockDim.x) {
    uint64_t key;
    const double w = c.Kept(i, &key);
    if (w >= 0) part += w;
  }
  return BlockSum(sh, part);
}

// Walks the candidates in sorted order (descending key) and returns the key
// of the first one at which the running total (of weights, or of 1 per token
// when !by_mass) reaches `target`: total >= target, or total > target when
// `strict`. If none does (rounding), the last candidate. Eight passes of an
// 8-bit radix histogram.
__device__ uint64_t SelectByRank(Shared& sh, const Candidates& c, double target, bool by_mass,
                                 bool strict) {
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.above = 0;
  }
  __syncthreads();
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) sh.hist[d] = 0;
    __syncthreads();
    const uint64_t prefix = sh.prefix;
    const uint64_t high_mask = shift == 56 ? 0 : ~uint64_t{0} << (shift + 8);
    for (int i = threadIdx.x; i < c.vocab; i += blockDim.x) {
      uint64_t key;
      const double w = c.Kept(i, &key);
      if (w < 0 || (key & high_mask) != (prefix & high_mask)) continue;
      atomicAdd(&sh.hist[(key >> shift) & 0xFF], by_mass ? w : 1.0);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double above = sh.above;
      int chosen = -1, lowest = -1;
      for (int d = 255; d >= 0; --d) {
        if (sh.hist[d] == 0) continue;
        const double reach = above + sh.hist[d];
        if (strict ? reach > target : reach >= target) {
          chosen = d;
          break;
        }
        lowest = d;
        above = reach;
      }
      if (chosen < 0) {  // the target is beyond the total: stay on the last candidate
        chosen = lowest;
        above -= sh.hist[lowest];
      }
      sh.above = above;
      sh.prefix = prefix | (static_cast<uint64_t>(chosen < 0 ? 0 : chosen) << shift);
    }
    __syncthreads();
  }
  return sh.prefix;
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(float* logits_all, int vocab, const DeviceSamplingParams* params_all,
                 PenaltyTokens penalties, float* raw_all, DeviceSampled* out) {
  __shared__ Shared sh;
  const int64_t s = blockIdx.x;
  float* logits = logits_all + s * vocab;
  float* raw = raw_all + s * vocab;
  const DeviceSamplingParams p = params_all[s];

  // The model's own log-probabilities, before any processing.
  uint64_t best = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    raw[i] = logits[i];
    const uint64_t k = Key(logits[i], i);
    best = k > best ? k : best;
  }
  const float raw_max = logits[KeyId(BlockMaxKey(sh, best))];
  double sum = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    sum += exp(static_cast<double>(logits[i] - raw_max));
  }
  const float raw_log_z = raw_max + static_cast<float>(log(BlockSum(sh, sum)));

  // Penalties: every listed token is distinct, so no two threads touch one.
  for (int j = threadIdx.x; j < p.penalty_count; j += blockDim.x) {
    const int t = penalties.tokens[p.penalty_begin + j];
    if (t < 0 || t >= vocab) continue;
    const int count = penalties.output_counts[p.penalty_begin + j];
    float l = logits[t];
    if (p.repetition_penalty != 1.0f && (count > 0 || penalties.in_prompt[p.penalty_begin + j])) {
      l = l > 0.0f ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
    if (count > 0 && (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f)) {
      l -= p.presence_penalty + p.frequency_penalty * static_cast<float>(count);
    }
    logits[t] = l;
  }
  __syncthreads();

  best = 0;
  if (p.temperature == 0.0f) {
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const uint64_t k = Key(logits[i], i);
      best = k > best ? k : best;
    }
    const int token = KeyId(BlockMaxKey(sh, best));
    if (threadIdx.x == 0) out[s] = {token, raw[token] - raw_log_z};
    return;
  }
  const float inv_t = 1.0f / p.temperature;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    logits[i] *= inv_t;
    const uint64_t k = Key(logits[i], i);
    best = k > best ? k : best;
  }
  __syncthreads();
  const float max_logit = logits[KeyId(BlockMaxKey(sh, best))];
  Candidates c{.logits = logits, .vocab = vocab, .max_logit = max_logit, .floor = 0,
               .min_weight = 0.0};

  const bool top_k = p.top_k > 0 && p.top_k < vocab;
  if (top_k) c.floor = SelectByRank(sh, c, static_cast<double>(p.top_k), false, false);
  double total = KeptTotal(sh, c);
  const bool sorted = top_k || p.top_p < 1.0f;
  if (p.top_p < 1.0f) {
    c.floor = SelectByRank(sh, c, static_cast<double>(p.top_p) * total, true, false);
    total = sh.above + c.Weight(KeyId(c.floor));
  }
  if (p.min_p > 0.0f) {
    c.min_weight = p.min_p;
    total = KeptTotal(sh, c);
  }
  const double u = p.uniform * total;
  int token = 0;
  if (sorted) {
    token = KeyId(SelectByRank(sh, c, u, true, true));
  } else {
    // Token order: each thread takes a contiguous run of ids; the runs'
    // sums are scanned, and the thread whose run holds u walks it.
    const int per = (vocab + kThreads - 1) / kThreads;
    const int begin = min(vocab, static_cast<int>(threadIdx.x) * per);
    const int end = min(vocab, begin + per);
    double run = 0;
    for (int i = begin; i < end; ++i) {
      uint64_t key;
      const double w = c.Kept(i, &key);
      if (w > 0) run += w;
    }
    __shared__ double runs[kThreads];
    __shared__ int chosen;
    runs[threadIdx.x] = run;
    if (threadIdx.x == 0) chosen = -1;
    __syncthreads();
    if (threadIdx.x == 0) {
      // The run where the running total first exceeds u (or the last
      // non-empty run), and the total before it, for its walker.
      double cumulative = 0, before = 0, before_last = 0;
      int last = -1;
      for (int t = 0; t < kThreads; ++t) {
        if (runs[t] <= 0) continue;
        if (u < cumulative + runs[t]) {
          chosen = t;
          before = cumulative;
          break;
        }
        last = t;
        before_last = cumulative;
        cumulative += runs[t];
      }
      if (chosen < 0) {
        chosen = last;
        before = before_last;
      }
      sh.value = before;
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x) == chosen) {
      double cumulative = sh.value;
      int pick = begin;
      for (int i = begin; i < end; ++i) {
        uint64_t key;
        const double w = c.Kept(i, &key);
        if (w <= 0) continue;
        pick = i;
        cumulative += w;
        if (u < cumulative) break;
      }
      sh.key = static_cast<uint64_t>(pick);
    }
    __syncthreads();
    token = static_cast<int>(sh.key);
  }
  if (threadIdx.x == 0) out[s] = {token, raw[token] - raw_log_z};
}

}  // namespace

void SampleTokens(float* logits, int64_t S, int vocab, const DeviceSamplingParams* params,
                  const PenaltyTokens& penalties, float* raw, DeviceSampled* out,
                  cudaStream_t stream) {
  if (S == 0) return;
  SampleKernel<<<static_cast<unsigned>(S), kThreads, 0, stream>>>(logits, vocab, params, penalties,
                                                                  raw, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace tandem::cuda
