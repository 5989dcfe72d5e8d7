#pragma once
// The CPU stage (node/stage.h has the contract): layers [begin, end) run on
// `tp` tensor-parallel ranks, one thread each, with its own thread pool,
// weight shard and kv heads. Every buffer is allocated at Create() for the
// largest batch (options.max_batch_tokens, options.max_batch_sequences);
// Forward never allocates.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/thread_pool.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/communicator.h"
#include "node/model_weights.h"
#include "node/paged_kv_cache.h"
#include "node/rank_threads.h"
#include "node/stage.h"

namespace tandem {

class StageExecutor final : public Stage {
 public:
  static StatusOr<std::unique_ptr<StageExecutor>> Create(
      const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
      const StageOptions& options);
  ~StageExecutor();
  StageExecutor(const StageExecutor&) = delete;
  StageExecutor& operator=(const StageExecutor&) = delete;

  StatusOr<std::span<const float>> Forward(std::span<const SequenceStep> seqs,
                                           std::span<const int32_t> tokens,
                                           std::span<const float> hidden) override;

  void Release(uint64_t seq_id) override { kv_.Release(seq_id); }

  const ModelSpec& spec() const override { return spec_; }
  const StageOptions& options() const override { return options_; }
  const PagedKvCache& kv_cache() const override { return kv_; }
  std::string device_name() const override { return "cpu"; }
  size_t weight_bytes_per_step() const override { return weights_->bytes_per_step(); }
  size_t weight_bytes() const override { return weights_->weight_bytes(); }
  const LoadedStageWeights& weights() const { return *weights_; }
  // Threads per rank actually used.
  int threads_per_rank() const;

 private:
  struct Rank;
  StageExecutor(const ModelSpec& spec, const StageOptions& options,
                std::unique_ptr<LoadedStageWeights> weights, PagedKvCache kv);
  // The whole stage on one rank; runs on that rank's thread.
  void RunRank(Rank& rank);
  void LayerForward(Rank& rank, const LayerWeights& w, cpu::PagedKv& kv);

  ModelSpec spec_;
  StageOptions options_;
  std::unique_ptr<LoadedStageWeights> weights_;
  PagedKvCache kv_;
  InProcessGroup group_;
  cpu::RopeTable rope_;
  std::vector<std::unique_ptr<Rank>> ranks_;

  // The current step, written by Forward before the ranks run.
  int64_t num_tokens_ = 0;
  int64_t num_seqs_ = 0;
  std::span<const int32_t> step_tokens_;
  std::span<const float> step_hidden_;
  std::vector<int32_t> positions_;                 // [max_batch_tokens]
  std::vector<cpu::AttentionSequence> attn_seqs_;  // [max_batch_sequences]
  std::vector<int64_t> last_rows_;                 // [max_batch_sequences]
  std::vector<KvReservation> reservations_;        // [max_batch_sequences]
  AlignedBuffer logits_;                           // [max_batch_sequences, vocab], last stage
  RankThreads rank_threads_;                       // last: its threads use the members above
};

}  // namespace tandem
