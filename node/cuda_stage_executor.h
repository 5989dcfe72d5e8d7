#pragma once
// A stage on one GPU, or on several with tensor parallelism (node/stage.h
// has the contract), computed with kernels/cuda. Weights are loaded through
// the same weight description (LoadStageWeights), split into the same
// column and row shards as on the CPU, and each rank's shard is copied to
// its GPU once; the KV cache keeps its block accounting on the host
// (PagedKvCache without storage) and each rank's kv heads in its GPU's
// memory. Forward copies the step's inputs to every GPU, runs every layer
// on each rank's own thread and non-default stream with one all-reduce per
// attention and per MLP block (node/cuda_communicator.h), and copies the
// hidden states (or the last tokens' logits) from rank 0 back into pinned
// memory; it allocates nothing. On the last stage each rank computes its
// rows of the vocabulary; one all-reduce over a zeroed [sequences, vocab]
// buffer gathers them (exactly: every element is one rank's value plus
// zeros) before rank 0 samples. Decode steps of up to 8 sequences are
// captured once per batch size as CUDA graphs and replayed
// (StageOptions::cuda_graphs; not with ranks that share one GPU).
//
// Part of the CUDA backend module (node/cuda_backend.h); other code
// reaches it through CreateStage. Not thread-safe.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/communicator.h"
#include "node/paged_kv_cache.h"
#include "node/rank_threads.h"
#include "node/stage.h"

namespace tandem {

class CudaRankGroup;

class CudaStageExecutor final : public Stage {
 public:
  // `devices`: the CUDA device of each tensor-parallel rank, as many as
  // options.tp. Distinct devices reduce through NCCL; one device named for
  // every rank runs the ranks side by side on it (node/cuda_communicator.h).
  // Errors: no such device, a device count that is not options.tp, a split
  // the model does not allow, bad weights, or not enough device memory (the
  // message names the device and says how many bytes were asked for and how
  // many were free).
  static StatusOr<std::unique_ptr<CudaStageExecutor>> Create(
      const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
      const StageOptions& options, const std::vector<int>& devices);
  ~CudaStageExecutor();
  CudaStageExecutor(const CudaStageExecutor&) = delete;
  CudaStageExecutor& operator=(const CudaStageExecutor&) = delete;

  StatusOr<std::span<const float>> Forward(std::span<const SequenceStep> seqs,
                                           std::span<const int32_t> tokens,
                                           std::span<const float> hidden) override;
  // Samples on the GPU (kernels/cuda/sampling.h) from each sampler's
  // parameters, draw and penalty tokens; only the sampled ids and logprobs
  // are copied back. Decode steps replay their own captured graphs.
  // After a CUDA error on one rank of several, the stage refuses every
  // later step (the ranks' streams can no longer be trusted to agree).
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
  // Device bytes held on all GPUs: weights, KV cache and activation buffers.
  size_t device_bytes() const;

 private:
  struct Rank;
  struct Host;
  CudaStageExecutor(const ModelSpec& spec, const StageOptions& options, PagedKvCache kv);
  // Checks the step, reserves its KV blocks and fills the pinned metadata
  // (positions, block tables, last rows, inputs); returns the token count.
  StatusOr<int64_t> PrepareStep(std::span<const SequenceStep> seqs,
                                std::span<const int32_t> tokens, std::span<const float> hidden);
  // Runs the prepared step on every rank and waits for it; the first
  // rank's error, if any. sample: the last stage samples into h_sampled
  // instead of copying the logits into h_out.
  Status RunStep(int64_t T, int64_t S, bool sample);
  // One rank's part of the step on its thread: copies the metadata, runs
  // the step (from a captured graph where one applies) and waits for it.
  void RunRankStep(Rank& r, int64_t T, int64_t S, bool sample);
  void EnqueueStep(Rank& r, int64_t T, int64_t S, bool sample);
  void RunLayers(Rank& r, int64_t T);

  ModelSpec spec_;
  StageOptions options_;
  PagedKvCache kv_;
  std::unique_ptr<Host> host_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  SoloCommunicator solo_;                 // the communicator of a single rank
  std::unique_ptr<CudaRankGroup> group_;  // several ranks
  size_t bytes_per_step_ = 0;             // LoadedStageWeights::bytes_per_step of the host copy
  bool graphs_ = false;                   // decode steps replay captured graphs
  Status broken_;                         // set when a rank of several failed
  int64_t table_entries_ = 0;  // block-table entries of the prepared step
  int64_t num_tiles_ = 0;      // prefill attention tiles of the prepared step
  RankThreads threads_;  // last, so destroyed first: its threads use the members above
};

}  // namespace tandem
