#pragma once
// Token sampling on the GPU, so only the sampled ids (and their logprobs)
// come back to the host. Same rules as node/sampler.h, applied in the same
// order: repetition / presence / frequency penalties, temperature (0 =
// greedy, ties to the lowest id), top-k, top-p (the smallest prefix of the
// tokens sorted by logit, ties by id, whose probability reaches top_p),
// min-p, then one draw. The uniform number of the draw comes from the
// sequence's seeded generator on the host, so a seed reproduces a run; sums
// are taken in double, so the drawn token equals the CPU sampler's unless the
// draw falls within rounding of a boundary.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::cuda {

// One sequence's parameters, in device memory.
struct DeviceSamplingParams {
  float temperature = 0.0f;
  int32_t top_k = 0;  // 0: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  double uniform = 0.0;  // in [0, 1): the draw
  // The sequence's distinct earlier tokens: entries [penalty_begin,
  // penalty_begin + penalty_count) of the penalty arrays.
  int32_t penalty_begin = 0;
  int32_t penalty_count = 0;
};

struct PenaltyTokens {
  const int32_t* tokens = nullptr;         // token id (ids outside the vocabulary are ignored)
  const int32_t* output_counts = nullptr;  // times generated so far (0: prompt only)
  const uint8_t* in_prompt = nullptr;      // 1 when the prompt holds it
};

struct DeviceSampled {
  int32_t token = 0;
  float logprob = 0.0f;  // log-softmax of the raw logits at `token`
};

// logits: [S, vocab] (overwritten: penalties and temperature are applied in
// place); raw: [S, vocab] scratch (keeps the raw logits); out: [S].
void SampleTokens(float* logits, int64_t S, int vocab, const DeviceSamplingParams* params,
                  const PenaltyTokens& penalties, float* raw, DeviceSampled* out,
                  cudaStream_t stream);

}  // namespace tandem::cuda
