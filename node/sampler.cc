#include "node/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "kernels/cpu/ops.h"

namespace tandem {

Status ValidateSamplingParams(const SamplingParams& p) {
  auto bad = [](const char* what, double v, const char* range) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling parameter ", what, " = ", v, " is out of range (", range, ")"));
  };
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    return bad("temperature", p.temperature, ">= 0");
  if (p.top_k < 0) return bad("top_k", p.top_k, ">= 0, 0 turns it off");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return bad("top_p", p.top_p, "(0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return bad("min_p", p.min_p, "[0, 1]");
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    return bad("repetition_penalty", p.repetition_penalty, "> 0");
  if (!std::isfinite(p.presence_penalty) || std::fabs(p.presence_penalty) > 2.0f)
    return bad("presence_penalty", p.presence_penalty, "[-2, 2]");
  if (!std::isfinite(p.frequency_penalty) || std::fabs(p.frequency_penalty) > 2.0f)
    return bad("frequency_penalty", p.frequency_penalty, "[-2, 2]");
  return absl::OkStatus();
}

SequenceSampler::SequenceSampler(const SamplingParams& params, int vocab_size)
    : params_(params),
      vocab_size_(vocab_size),
      rng_(params.seed.has_value() ? *params.seed : std::random_device{}()),
      candidates_(static_cast<size_t>(vocab_size)),
      raw_logits_(static_cast<size_t>(vocab_size)),
      weights_(static_cast<size_t>(vocab_size)) {
  CHECK_GT(vocab_size, 0);
}

void SequenceSampler::SetPrompt(std::span<const int32_t> prompt) {
  prompt_tokens_.insert(prompt.begin(), prompt.end());
}

double SequenceSampler::Draw() {
  if (params_.temperature == 0.0f) return 0.0;
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

void SequenceSampler::AppendPenaltyTokens(std::vector<int32_t>* tokens,
                                          std::vector<int32_t>* output_counts,
                                          std::vector<uint8_t>* in_prompt) const {
  if (params_.repetition_penalty == 1.0f && params_.presence_penalty == 0.0f &&
      params_.frequency_penalty == 0.0f) {
    return;
  }
  for (int32_t t : prompt_tokens_) {
    auto it = output_counts_.find(t);
    tokens->push_back(t);
    output_counts->push_back(it == output_counts_.end() ? 0 : it->second);
    in_prompt->push_back(1);
  }
  for (const auto& [t, count] : output_counts_) {
    if (prompt_tokens_.contains(t)) continue;
    tokens->push_back(t);
    output_counts->push_back(count);
    in_prompt->push_back(0);
  }
}

void SequenceSampler::ApplyPenalties(std::span<float> logits) const {
  auto in_vocab = [&](int32_t t) { return t >= 0 && t < vocab_size_; };
  if (params_.repetition_penalty != 1.0f) {
    auto penalize = [&](int32_t t) {
      if (!in_vocab(t)) return;
      float& l = logits[static_cast<size_t>(t)];
      l = l > 0.0f ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    };
    for (int32_t t : prompt_tokens_) penalize(t);
    for (const auto& [t, count] : output_counts_) {
      if (!prompt_tokens_.contains(t)) penalize(t);
    }
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    for (const auto& [t, count] : output_counts_) {
      if (!in_vocab(t)) continue;
      logits[static_cast<size_t>(t)] -=
          params_.presence_penalty + params_.frequency_penalty * static_cast<float>(count);
    }
  }
}

SampledToken SequenceSampler::Sample(std::span<float> logits) {
  CHECK_EQ(logits.size(), static_cast<size_t>(vocab_size_));
  const size_t n = logits.size();

  // The model's own log-probabilities, before any processing.
  const float raw_log_z = static_cast<float>(cpu::LogSumExp(logits.data(), static_cast<int64_t>(n)));
  auto finish = [&](int32_t token, float raw_logit) {
    Record(token);
    return SampledToken{.token = token, .logprob = raw_logit - raw_log_z};
  };
  // Keep the raw logits of candidates: penalties change `logits` in place.
  std::copy(logits.begin(), logits.end(), raw_logits_.begin());

  ApplyPenalties(logits);

  if (params_.temperature == 0.0f) {
    const auto best = static_cast<size_t>(cpu::ArgMax(logits.data(), static_cast<int64_t>(n)));
    return finish(static_cast<int32_t>(best), raw_logits_[best]);
  }
  const float inv_t = 1.0f / params_.temperature;
  for (float& l : logits) l *= inv_t;

  // Candidate set: all tokens, or the top-k by processed logit.
  size_t count = n;
  std::iota(candidates_.begin(), candidates_.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) {
    float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  const bool need_sorted = params_.top_p < 1.0f;
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    count = static_cast<size_t>(params_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<ptrdiff_t>(count),
                      candidates_.end(), by_logit);
  } else if (need_sorted) {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  float max_logit = -INFINITY;
  for (size_t i = 0; i < count; ++i)
    max_logit = std::max(max_logit, logits[static_cast<size_t>(candidates_[i])]);

  // Unnormalised probabilities of the candidates, kept in `weights`.
  std::vector<double>& weights = weights_;
  double total = 0.0;
  for (size_t i = 0; i < count; ++i) {
    weights[i] = std::exp(static_cast<double>(logits[static_cast<size_t>(candidates_[i])] -
                                              max_logit));
    total += weights[i];
  }
  if (need_sorted) {  // candidates are sorted: keep the smallest prefix with mass >= top_p
    double cumulative = 0.0;
    size_t keep = 0;
    while (keep < count) {
      cumulative += weights[keep];
      ++keep;
      if (cumulative >= params_.top_p * total) break;
    }
    count = keep;
    total = cumulative;
  }
  if (params_.min_p > 0.0f) {  // p_max has weight 1 (max_logit is a candidate)
    double threshold = params_.min_p;
    double kept = 0.0;
    for (size_t i = 0; i < count; ++i) {
      if (weights[i] < threshold) weights[i] = 0.0;
      kept += weights[i];
    }
    total = kept;
  }
  const double u = Draw() * total;
  double cumulative = 0.0;
  size_t chosen = 0;
  for (size_t i = 0; i < count; ++i) {
    if (weights[i] == 0.0) continue;
    chosen = i;
    cumulative += weights[i];
    if (u < cumulative) break;
  }
  int32_t token = candidates_[chosen];
  return finish(token, raw_logits_[static_cast<size_t>(token)]);
}

}  // namespace tandem
