#include "node/local_pipeline.h"

#include <algorithm>

namespace tandem {

StageRange EvenStageRange(int num_layers, int stages, int index) {
  return StageRange{.layer_begin = num_layers * index / stages,
                    .layer_end = num_layers * (index + 1) / stages};
}

StatusOr<std::unique_ptr<LocalPipeline>> LocalPipeline::Create(
    const std::filesystem::path& model_dir, const PipelineOptions& options) {
  if (IsLossy(options.codec) || options.codec == Codec::kAuto) {
    return absl::InvalidArgumentError(absl::StrCat(
        "codec ", std::string(CodecName(options.codec)),
        " cannot pass hidden states between local stages (use a lossless codec)"));
  }
  ASSIGN_OR_RETURN(ModelSpec spec, LoadModelSpec(model_dir));
  if (options.stages < 1 || options.stages > spec.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("cannot split ", spec.num_layers,
                                                   " layers into ", options.stages, " stages"));
  }
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(model_dir));
  auto shared = std::make_shared<const Checkpoint>(std::move(checkpoint));
  std::unique_ptr<LocalPipeline> pipeline(new LocalPipeline());
  pipeline->spec_ = spec;
  pipeline->options_ = options;
  for (int i = 0; i < options.stages; ++i) {
    StageOptions stage = options.stage;
    stage.range = EvenStageRange(spec.num_layers, options.stages, i);
    stage.kv_budget_bytes = options.stage.kv_budget_bytes *
                            static_cast<size_t>(stage.range.layer_end - stage.range.layer_begin) /
                            static_cast<size_t>(spec.num_layers);
    ASSIGN_OR_RETURN(std::unique_ptr<Stage> executor,
                     CreateStage(spec, shared, stage, options.cuda_devices));
    pipeline->stages_.push_back(std::move(executor));
  }
  pipeline->received_ = AlignedBuffer(static_cast<size_t>(options.stage.max_batch_tokens) *
                                      static_cast<size_t>(spec.hidden_size) * sizeof(float));
  return pipeline;
}

Status LocalPipeline::PassHidden(std::span<const float> hidden, int64_t tokens) {
  const Shape shape{tokens, spec_.hidden_size};
  TensorView src = TensorView::Contiguous(const_cast<float*>(hidden.data()), DType::kF32, shape);
  ASSIGN_OR_RETURN(v1::TensorFrame frame, EncodeTensor(src, CodecOptions{.codec = options_.codec}));
  wire_bytes_ += FrameWireBytes(frame);
  TensorView dest = TensorView::Contiguous(received_.data(), DType::kF32, shape);
  return DecodeTensor(frame, dest);
}

StatusOr<std::span<const float>> LocalPipeline::RunBeforeLast(std::span<const SequenceStep> seqs,
                                                              std::span<const int32_t> tokens) {
  if (stages_.empty()) return absl::InternalError("pipeline without stages");
  int64_t total = 0;
  for (const SequenceStep& s : seqs) total += s.count;
  std::span<const float> hidden;
  for (size_t i = 0; i + 1 < stages_.size(); ++i) {
    std::span<const int32_t> stage_tokens = i == 0 ? tokens : std::span<const int32_t>();
    ASSIGN_OR_RETURN(std::span<const float> out,
                     stages_[i]->Forward(seqs, stage_tokens, hidden));
    RETURN_IF_ERROR(PassHidden(out, total));
    hidden = std::span<const float>(received_.As<float>(), out.size());
  }
  return hidden;
}

StatusOr<std::span<const float>> LocalPipeline::Step(std::span<const SequenceStep> seqs,
                                                     std::span<const int32_t> tokens) {
  ASSIGN_OR_RETURN(std::span<const float> hidden, RunBeforeLast(seqs, tokens));
  const bool alone = stages_.size() == 1;
  return stages_.back()->Forward(seqs, alone ? tokens : std::span<const int32_t>(), hidden);
}

StatusOr<std::span<const SampledToken>> LocalPipeline::StepAndSample(
    std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
    std::span<SequenceSampler* const> samplers) {
  ASSIGN_OR_RETURN(std::span<const float> hidden, RunBeforeLast(seqs, tokens));
  const bool alone = stages_.size() == 1;
  return stages_.back()->ForwardAndSample(seqs, alone ? tokens : std::span<const int32_t>(),
                                          hidden, samplers);
}

void LocalPipeline::Release(uint64_t seq_id) {
  for (auto& stage : stages_) stage->Release(seq_id);
}

size_t LocalPipeline::weight_bytes_per_step() const {
  size_t total = 0;
  for (const auto& stage : stages_) total += stage->weight_bytes_per_step();
  return total;
}

size_t LocalPipeline::kv_bytes() const {
  size_t total = 0;
  for (const auto& stage : stages_) total += stage->kv_cache().allocated_bytes();
  return total;
}

size_t LocalPipeline::kv_position_bytes() const {
  size_t total = 0;
  for (const auto& stage : stages_) total += stage->kv_cache().position_bytes();
  return total;
}

}  // namespace tandem
