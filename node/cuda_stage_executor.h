#pragma once
// A stage on one GPU (node/stage.h has the contract), computed with
// kernels/cuda. Weights are loaded through the same weight
// description (LoadStageWeights) and copied to the device once; the KV cache
// keeps its block accounting on the host (PagedKvCache without storage) and
// its keys and values in device memory. Forward copies the step's inputs to
// the device, runs every layer on one non-default stream, and copies the
// hidden states (or the last tokens' logits) back into pinned memory; it
// allocates nothing. Decode steps of up to 8 sequences are captured once per
// batch size as CUDA graphs and replayed (StageOptions::cuda_graphs).
//
// Only built with the CUDA backend (TANDEM_HAVE_CUDA). Not thread-safe.
#include <cstdint>
#include <memory>
#include <span>

#include "core/status.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/paged_kv_cache.h"
#include "node/stage.h"

namespace tandem {

class CudaStageExecutor final : public Stage {
 public:
  // `device`: the CUDA device index. Errors: no such device, options the
  // GPU path does not support (tp > 1), bad weights, or not enough device
  // memory (the message says how many bytes were asked for and how many
  // were free).
  static StatusOr<std::unique_ptr<CudaStageExecutor>> Create(
      const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
      const StageOptions& options, int device);
  ~CudaStageExecutor();
  CudaStageExecutor(const CudaStageExecutor&) = delete;
  CudaStageExecutor& operator=(const CudaStageExecutor&) = delete;

  StatusOr<std::span<const float>> Forward(std::span<const SequenceStep> seqs,
                                           std::span<const int32_t> tokens,
                                           std::span<const float> hidden) override;
  // Samples on the GPU (kernels/cuda/sampling.h) from each sampler's
  // parameters, draw and penalty tokens; only the sampled ids and logprobs
  // are copied back. Decode steps replay their own captured graphs.
  StatusOr<std::span<const SampledToken>> ForwardAndSample(
      std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
      std::span<const float> hidden, std::span<SequenceSampler* const> samplers) override;
  void Release(uint64_t seq_id) override { kv_.Release(seq_id); }

  const ModelSpec& spec() const override { return spec_; }
  const StageOptions& options() const override { return options_; }
  const PagedKvCache& kv_cache() const override { return kv_; }
  std::string device_name() const override;
  size_t weight_bytes_per_step() const override;
  size_t weight_bytes() const override;
  // Device bytes held: weights, KV cache and activation buffers.
  size_t device_bytes() const;

 private:
  struct Device;
  CudaStageExecutor(const ModelSpec& spec, const StageOptions& options, PagedKvCache kv,
                    std::unique_ptr<Device> device);
  // Checks the step, reserves its KV blocks and fills the pinned metadata
  // (positions, block tables, last rows, inputs); returns the token count.
  StatusOr<int64_t> PrepareStep(std::span<const SequenceStep> seqs,
                                std::span<const int32_t> tokens, std::span<const float> hidden);
  // Copies the metadata, runs the step (from a captured graph where one
  // applies) and waits for it. sample: the last stage samples into
  // h_sampled instead of copying the logits into h_out.
  void RunStep(int64_t T, int64_t S, bool sample);
  void EnqueueStep(int64_t T, int64_t S, std::span<const int64_t> last_rows, bool sample);
  void RunLayers(int64_t T);

  ModelSpec spec_;
  StageOptions options_;
  PagedKvCache kv_;
  std::unique_ptr<Device> dev_;
  int64_t table_entries_ = 0;  // block-table entries of the prepared step
  int64_t num_tiles_ = 0;      // prefill attention tiles of the prepared step
};

}  // namespace tandem
