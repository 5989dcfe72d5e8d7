#pragma once
// Per-sequence token sampling on the last stage: penalties, temperature,
// top-k, top-p, min-p, and a seeded generator so that the same request with
// the same seed yields the same tokens.
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/status.h"

namespace tandem {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax; ties go to the lowest id)
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off; keeps tokens with p >= min_p * p_max
  // > 1 discourages every token seen in the prompt or the output so far
  // (positive logits divided, negative ones multiplied), as in Hugging Face.
  float repetition_penalty = 1.0f;
  // Subtracted from the logit of every token generated so far: presence once,
  // frequency once per occurrence (OpenAI semantics; output tokens only).
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed = std::nullopt;  // none: seeded from std::random_device
};

// Says what is wrong with user-supplied parameters (ranges, NaN).
Status ValidateSamplingParams(const SamplingParams& params);

struct SampledToken {
  int32_t token;
  float logprob;  // log-softmax of the model's raw logits at `token`
};

// The sampler of one sequence. Holds the sequence's generator, its token
// counts for the penalties and scratch space for `vocab_size` candidates
// (allocated once). Not thread-safe; one per sequence.
class SequenceSampler {
 public:
  SequenceSampler(const SamplingParams& params, int vocab_size);

  // Records the prompt (for the repetition penalty).
  void SetPrompt(std::span<const int32_t> prompt);

  // Picks the next token from `logits` [vocab_size] (modified in place:
  // penalties and temperature are applied to it) and records it as output.
  SampledToken Sample(std::span<float> logits);

  // For sampling done elsewhere (on a GPU) with this sampler's state, so
  // that a seed gives the same tokens as Sample would:
  // - Draw() advances the generator as Sample does (once when temperature
  //   > 0, not at all when greedy) and returns the draw in [0, 1);
  // - AppendPenaltyTokens appends, when a penalty is on, every distinct
  //   token of the prompt and the output so far with its output count and
  //   whether the prompt holds it (nothing when every penalty is off);
  // - Record(token) counts the token chosen as output.
  double Draw();
  void AppendPenaltyTokens(std::vector<int32_t>* tokens, std::vector<int32_t>* output_counts,
                           std::vector<uint8_t>* in_prompt) const;
  void Record(int32_t token) { ++output_counts_[token]; }

  const SamplingParams& params() const { return params_; }

 private:
  void ApplyPenalties(std::span<float> logits) const;

  SamplingParams params_;
  int vocab_size_;
  std::mt19937_64 rng_;
  std::unordered_set<int32_t> prompt_tokens_;
  std::unordered_map<int32_t, int> output_counts_;
  std::vector<int32_t> candidates_;  // [vocab_size] scratch
  std::vector<float> raw_logits_;    // [vocab_size] scratch: logits before processing
  std::vector<double> weights_;      // [vocab_size] scratch: candidate probabilities
};

}  // namespace tandem
