#include "node/stage.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "node/cuda_backend.h"
#include "node/stage_executor.h"

namespace tandem {

cpu::RopeParams RopeParamsFor(const ModelSpec& spec) {
  cpu::RopeParams p{.head_dim = spec.head_dim, .theta = spec.rope_theta};
  switch (spec.rope_scaling.type) {
    case RopeScaling::Type::kNone: p.scaling = cpu::RopeScaling::kNone; break;
    case RopeScaling::Type::kLinear: p.scaling = cpu::RopeScaling::kLinear; break;
    case RopeScaling::Type::kLlama3: p.scaling = cpu::RopeScaling::kLlama3; break;
  }
  p.factor = spec.rope_scaling.factor;
  p.low_freq_factor = spec.rope_scaling.low_freq_factor;
  p.high_freq_factor = spec.rope_scaling.high_freq_factor;
  p.original_max_position = spec.rope_scaling.original_max_position_embeddings;
  return p;
}

Status ValidateStageStep(const ModelSpec& spec, const StageOptions& options,
                         std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
                         std::span<const float> hidden) {
  const bool first = options.range.first();
  if (seqs.empty()) return absl::InvalidArgumentError("a step needs at least one sequence");
  if (seqs.size() > static_cast<size_t>(options.max_batch_sequences)) {
    return absl::InvalidArgumentError(absl::StrCat("step has ", seqs.size(),
                                                   " sequences; this stage takes at most ",
                                                   options.max_batch_sequences));
  }
  int64_t total = 0;
  for (const SequenceStep& s : seqs) {
    if (s.count < 1 || s.start < 0) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, ": start ", s.start,
                                                     " and count ", s.count, " are invalid"));
    }
    if (spec.sliding_window.has_value() && s.start + s.count > *spec.sliding_window) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s.seq_id, " reaches ", s.start + s.count,
          " tokens, beyond the model's sliding window of ", *spec.sliding_window,
          " (sliding-window attention is not implemented)"));
    }
    total += s.count;
  }
  if (total > options.max_batch_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("step has ", total,
                                                   " tokens; this stage takes at most ",
                                                   options.max_batch_tokens, " per step"));
  }
  if (first) {
    if (!hidden.empty() || tokens.size() != static_cast<size_t>(total)) {
      return absl::InvalidArgumentError(absl::StrCat("the first stage needs ", total,
                                                     " token ids (got ", tokens.size(),
                                                     ") and no hidden states"));
    }
    for (int32_t t : tokens) {
      if (t < 0 || t >= spec.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " is outside the vocabulary [0, ", spec.vocab_size, ")"));
      }
    }
  } else if (!tokens.empty() ||
             hidden.size() != static_cast<size_t>(total) * static_cast<size_t>(spec.hidden_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage starting at layer ", options.range.layer_begin, " needs hidden states of ",
        total, " x ", spec.hidden_size, " floats (got ", hidden.size(), ") and no token ids"));
  }
  return absl::OkStatus();
}

Status Stage::ValidateSamplers(std::span<const SequenceStep> seqs,
                               std::span<SequenceSampler* const> samplers) const {
  if (!is_last()) return absl::FailedPreconditionError("only the last stage samples tokens");
  if (samplers.size() != seqs.size()) {
    return absl::InvalidArgumentError(absl::StrCat("a step of ", seqs.size(), " sequences has ",
                                                   samplers.size(), " sampler entries"));
  }
  return absl::OkStatus();
}

StatusOr<std::span<const SampledToken>> Stage::ForwardAndSample(
    std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
    std::span<const float> hidden, std::span<SequenceSampler* const> samplers) {
  RETURN_IF_ERROR(ValidateSamplers(seqs, samplers));
  ASSIGN_OR_RETURN(std::span<const float> logits, Forward(seqs, tokens, hidden));
  const size_t vocab = static_cast<size_t>(spec().vocab_size);
  sample_row_.resize(vocab);
  sampled_.assign(seqs.size(), SampledToken{.token = -1, .logprob = 0.0f});
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (samplers[i] == nullptr) continue;
    std::copy_n(logits.begin() + static_cast<ptrdiff_t>(i * vocab), vocab, sample_row_.begin());
    sampled_[i] = samplers[i]->Sample(sample_row_);
  }
  return std::span<const SampledToken>(sampled_);
}

StatusOr<int> StageRanks(int tp, const std::vector<int>& cuda_devices) {
  const int gpus = static_cast<int>(cuda_devices.size());
  if (gpus == 0) return tp;
  if (tp != 1 && tp != gpus) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor parallelism ", tp, " on ", gpus,
                     " GPUs: on GPUs each device is one tensor-parallel rank"));
  }
  return gpus;
}

StatusOr<std::unique_ptr<Stage>> CreateStage(const ModelSpec& spec,
                                             std::shared_ptr<const Checkpoint> checkpoint,
                                             const StageOptions& options,
                                             const std::vector<int>& cuda_devices) {
  if (cuda_devices.empty()) {
    ASSIGN_OR_RETURN(auto stage, StageExecutor::Create(spec, std::move(checkpoint), options));
    return std::unique_ptr<Stage>(std::move(stage));
  }
  StatusOr<const CudaBackend*> cuda = LoadCudaBackend();
  if (!cuda.ok()) {
    return Status(cuda.status().code(), absl::StrCat("cuda:", absl::StrJoin(cuda_devices, ","),
                                                     " was asked for, but ",
                                                     cuda.status().message()));
  }
  return (*cuda)->create_stage(spec, std::move(checkpoint), options, cuda_devices);
}

}  // namespace tandem
