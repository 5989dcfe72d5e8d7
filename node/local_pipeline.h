#pragma once
// A whole model in one process, split into `stages` pipeline stages that run
// one after the other, each on `tp` tensor-parallel ranks. Hidden states go
// from stage to stage through the tensor-frame encoding the network uses
// (proto/tensor_codec.h), so the one-process path exercises the same bytes.
// Used by `tandem run`, `tandem-bench decode` and the equivalence tests.
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/stage.h"
#include "proto/tensor_codec.h"

namespace tandem {

struct PipelineOptions {
  int stages = 1;
  // Options of every stage; `range` is ignored (layers are split evenly) and
  // kv_budget_bytes is the budget of the whole model (split by layers).
  StageOptions stage = {};
  Codec codec = Codec::kNone;  // lossless codecs only: stages must agree bit for bit
  // Empty: every stage on the CPU. Else every stage on these CUDA devices,
  // one tensor-parallel rank each (stage.tp must be their count).
  std::vector<int> cuda_devices = {};
};

class LocalPipeline {
 public:
  static StatusOr<std::unique_ptr<LocalPipeline>> Create(const std::filesystem::path& model_dir,
                                                         const PipelineOptions& options);

  // Runs one step through every stage; returns the logits [seqs.size(), vocab]
  // of each sequence's last token, valid until the next call.
  StatusOr<std::span<const float>> Step(std::span<const SequenceStep> seqs,
                                        std::span<const int32_t> tokens);
  // As Step, with the last stage sampling one token for each sequence i
  // whose samplers[i] is set (Stage::ForwardAndSample): on a GPU only the
  // sampled ids come back. Returns [seqs.size()] entries (token -1 where
  // there is no sampler), valid until the next call.
  StatusOr<std::span<const SampledToken>> StepAndSample(std::span<const SequenceStep> seqs,
                                                        std::span<const int32_t> tokens,
                                                        std::span<SequenceSampler* const> samplers);
  void Release(uint64_t seq_id);

  const ModelSpec& spec() const { return spec_; }
  int num_stages() const { return static_cast<int>(stages_.size()); }
  const Stage& stage(int i) const { return *stages_[static_cast<size_t>(i)]; }
  // Weight bytes a decode step reads, over all stages and ranks.
  size_t weight_bytes_per_step() const;
  // Bytes of KV cache storage, over all stages.
  size_t kv_bytes() const;
  // Bytes of K and V of one cached position, over all stages.
  size_t kv_position_bytes() const;
  // Encoded hidden-state bytes sent between stages so far.
  uint64_t wire_bytes() const { return wire_bytes_; }

 private:
  LocalPipeline() = default;
  // Runs every stage before the last; returns the last stage's input
  // hidden states (empty with one stage, whose input is the tokens).
  StatusOr<std::span<const float>> RunBeforeLast(std::span<const SequenceStep> seqs,
                                                 std::span<const int32_t> tokens);
  // Sends `hidden` [T, hidden] through the frame codec into `received_`.
  Status PassHidden(std::span<const float> hidden, int64_t tokens);

  ModelSpec spec_;
  PipelineOptions options_;
  std::vector<std::unique_ptr<Stage>> stages_;
  AlignedBuffer received_;  // [max_batch_tokens, hidden]
  uint64_t wire_bytes_ = 0;
};

// Layers of stage `index` of `stages` when `num_layers` are split evenly.
StageRange EvenStageRange(int num_layers, int stages, int index);

}  // namespace tandem
