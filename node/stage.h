#pragma once
// What a node computes with, whatever the device: one stage of the model
// (layers [begin, end), the embedding on the first stage, the final norm and
// lm_head on the last) with its paged KV cache. StageExecutor runs it on the
// CPU, CudaStageExecutor on a GPU; CreateStage picks one.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/ops.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/model_weights.h"
#include "node/paged_kv_cache.h"
#include "node/sampler.h"

namespace tandem {

struct StageOptions {
  StageRange range = {};
  int tp = 1;
  // Threads of the whole stage, shared evenly by the ranks; 0: all cores.
  int threads = 0;
  int max_batch_tokens = 512;
  int max_batch_sequences = 64;
  size_t kv_budget_bytes = size_t{256} << 20;
  WeightQuantization quantize = WeightQuantization::kNone;
  int int4_group_size = 32;
  // CUDA stages: replay decode steps (one token per sequence, up to 8
  // sequences) from captured CUDA graphs. Ignored on the CPU.
  bool cuda_graphs = true;
};

// One sequence's part of a step: tokens at positions [start, start + count).
struct SequenceStep {
  uint64_t seq_id = 0;
  int64_t start = 0;
  int64_t count = 0;
};

// Checks one step against the stage's model and limits: sequence count and
// token total within the batch limits, starts and counts valid, token ids in
// the vocabulary on the first stage, hidden states of the right size on the
// others. Shared by every backend's executor.
Status ValidateStageStep(const ModelSpec& spec, const StageOptions& options,
                         std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
                         std::span<const float> hidden);

class Stage {
 public:
  virtual ~Stage() = default;

  // tokens: [T] on the first stage (hidden empty); hidden: [T, hidden_size]
  // on the others (tokens empty); T = sum of seqs[i].count, and the rows of
  // each sequence are contiguous, in the order of `seqs`.
  // Returns [T, hidden_size] hidden states, or on the last stage
  // [seqs.size(), vocab_size] logits; the span is valid until the next call.
  // Bad input (sizes, token ids, positions, a full KV cache) is an error and
  // leaves the KV cache as it was. Not thread-safe: one Forward at a time.
  virtual StatusOr<std::span<const float>> Forward(std::span<const SequenceStep> seqs,
                                                   std::span<const int32_t> tokens,
                                                   std::span<const float> hidden) = 0;
  // Last stage only: Forward, then one token for each sequence i whose
  // samplers[i] is set, chosen by that sampler's rules and state, which it
  // advances as SequenceSampler::Sample does (samplers.size() ==
  // seqs.size()). Returns [seqs.size()] entries, valid until the next call;
  // an entry without a sampler has token -1. The CPU stage samples on the
  // host from Forward's logits; the CUDA stage samples on the GPU, so only
  // the sampled ids and logprobs leave the device.
  virtual StatusOr<std::span<const SampledToken>> ForwardAndSample(
      std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
      std::span<const float> hidden, std::span<SequenceSampler* const> samplers);
  // Frees the KV blocks of a finished sequence (unknown ids are ignored).
  virtual void Release(uint64_t seq_id) = 0;

  virtual const ModelSpec& spec() const = 0;
  virtual const StageOptions& options() const = 0;
  virtual const PagedKvCache& kv_cache() const = 0;
  // "cpu" or "cuda:N".
  virtual std::string device_name() const = 0;
  // Weight bytes a decode step streams, over all ranks (see
  // LoadedStageWeights::bytes_per_step).
  virtual size_t weight_bytes_per_step() const = 0;
  // Bytes of every distinct weight tensor the stage holds.
  virtual size_t weight_bytes() const = 0;

  bool is_first() const { return options().range.first(); }
  bool is_last() const { return options().range.last(spec()); }
  // Width of one output row: hidden_size, or vocab_size on the last stage.
  int64_t output_width() const { return is_last() ? spec().vocab_size : spec().hidden_size; }

 protected:
  // What ForwardAndSample must refuse before it runs: a stage that is not
  // the last, or a sampler count that differs from the sequence count.
  Status ValidateSamplers(std::span<const SequenceStep> seqs,
                          std::span<SequenceSampler* const> samplers) const;

 private:
  std::vector<float> sample_row_;      // [vocab_size]: one row of logits, host sampling
  std::vector<SampledToken> sampled_;  // [seqs]: ForwardAndSample's result
};

// The model's rotary embedding, as the kernels take it.
cpu::RopeParams RopeParamsFor(const ModelSpec& spec);

// The tensor-parallel ranks of a stage asked to run `tp` ranks on
// `cuda_devices`: tp on the CPU (no devices); on GPUs one rank per device,
// so tp must be 1 (nothing asked) or the device count.
StatusOr<int> StageRanks(int tp, const std::vector<int>& cuda_devices);

// A stage on the CPU (no cuda_devices; options.tp ranks on threads) or on
// the CUDA devices `cuda_devices`, one tensor-parallel rank each (options.tp
// must be their count); the latter is an error in a build without the CUDA
// backend.
StatusOr<std::unique_ptr<Stage>> CreateStage(const ModelSpec& spec,
                                             std::shared_ptr<const Checkpoint> checkpoint,
                                             const StageOptions& options,
                                             const std::vector<int>& cuda_devices = {});

}  // namespace tandem
