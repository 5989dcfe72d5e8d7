#pragma once
// A stage: layers [begin, end) of a model, run on `tp` tensor-parallel ranks
// (one thread each, with its own thread pool, weight shard and kv heads),
// with the embedding on the first stage and final norm + lm_head on the last.
//
// Forward takes one step of a batch: per sequence (id, start position, token
// count), and either token ids (first stage) or hidden states from the
// previous stage. It returns the hidden states of all tokens, or on the last
// stage the logits of each sequence's last token. Sequences may mix prefill
// chunks and single decode tokens. Every buffer is allocated at Create() for
// the largest batch (options.max_batch_tokens, options.max_batch_sequences);
// Forward never allocates.
//
// Not thread-safe: one Forward at a time.
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
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
};

// One sequence's part of a step: tokens at positions [start, start + count).
struct SequenceStep {
  uint64_t seq_id = 0;
  int64_t start = 0;
  int64_t count = 0;
};

class StageExecutor {
 public:
  static StatusOr<std::unique_ptr<StageExecutor>> Create(
      const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
      const StageOptions& options);
  ~StageExecutor();
  StageExecutor(const StageExecutor&) = delete;
  StageExecutor& operator=(const StageExecutor&) = delete;

  // tokens: [T] on the first stage (hidden empty); hidden: [T, hidden_size]
  // on the others (tokens empty); T = sum of seqs[i].count, and the rows of
  // each sequence are contiguous, in the order of `seqs`.
  // Returns [T, hidden_size] hidden states, or on the last stage
  // [seqs.size(), vocab_size] logits; the span is valid until the next call.
  // Bad input (sizes, token ids, positions, a full KV cache) is an error and
  // leaves the KV cache as it was.
  StatusOr<std::span<const float>> Forward(std::span<const SequenceStep> seqs,
                                           std::span<const int32_t> tokens,
                                           std::span<const float> hidden);

  // Frees the KV blocks of a finished sequence (unknown ids are ignored).
  void Release(uint64_t seq_id) { kv_.Release(seq_id); }

  bool is_first() const { return options_.range.first(); }
  bool is_last() const { return options_.range.last(spec_); }
  const ModelSpec& spec() const { return spec_; }
  const StageOptions& options() const { return options_; }
  const PagedKvCache& kv_cache() const { return kv_; }
  const LoadedStageWeights& weights() const { return *weights_; }
  // Width of one output row: hidden_size, or vocab_size on the last stage.
  int64_t output_width() const;
  // Threads per rank actually used.
  int threads_per_rank() const;

 private:
  struct Rank;
  StageExecutor(const ModelSpec& spec, const StageOptions& options,
                std::unique_ptr<LoadedStageWeights> weights, PagedKvCache kv);
  Status Validate(std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
                  std::span<const float> hidden) const;
  // The whole stage on one rank; runs on that rank's thread.
  void RunRank(Rank& rank);
  void LayerForward(Rank& rank, const LayerWeights& w, cpu::PagedKv& kv);
  void RankThreadLoop(int rank);

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

  // Rank threads 1..tp-1 wait here for a step; rank 0 runs on the caller.
  std::vector<std::thread> rank_threads_;
  std::mutex mutex_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  uint64_t step_generation_ = 0;
  int ranks_done_ = 0;
  bool stopping_ = false;
};

}  // namespace tandem
