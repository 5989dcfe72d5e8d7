#pragma once
// The request scheduler: continuous batching over a pipeline of stages.
//
// Not thread-safe by design: one thread (the coordinator's engine loop) owns a
// Scheduler and all its state; network handlers post work to that thread.
//
// Policy:
// - Admission: a request is admitted when the tightest stage's KV cache can
//   hold its prompt plus max_tokens (blocks of block_size tokens are reserved
//   up front, so a running sequence never runs out of KV and is never
//   preempted). Otherwise it waits, in arrival order.
// - Each step's micro-batch holds decodes (one token each) first, then chunks
//   of pending prompts (chunked prefill) up to max_batch_tokens.
// - With P stages, up to P micro-batches are in flight at once; they are
//   disjoint (a sequence is in at most one), and the running sequences are
//   spread across them so every stage has work.
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace tandem {

struct SamplingOptions {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;
  int top_k = 0;  // 0 = off
  float min_p = 0.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
  bool has_seed = false;  // without a seed the last stage seeds at random
  bool want_logprobs = false;
};

struct SequenceRequest {
  uint64_t id = 0;                 // opaque, unique among live sequences
  std::vector<int32_t> prompt;     // token ids, non-empty
  int max_tokens = 16;             // generated tokens at most
  std::vector<int32_t> stop_ids;   // end the sequence when sampled (eos ids)
  SamplingOptions sampling;
};

struct SchedulerOptions {
  int num_stages = 1;              // micro-batches in flight at most
  int max_batch_tokens = 512;      // tokens per micro-batch
  int max_sequences = 64;          // running sequences at most
  int prefill_chunk = 256;         // prompt tokens of one sequence per step at most
  int64_t kv_capacity_tokens = 0;  // the tightest stage's KV capacity
  int block_size = 16;
  int max_context = 0;             // prompt + max_tokens limit; 0 = no limit
};

// One sequence's rows in a micro-batch: tokens at positions
// [start_position, start_position + tokens.size()).
struct BatchEntry {
  uint64_t sequence_id = 0;
  int start_position = 0;
  std::vector<int32_t> tokens;
  // True when these rows end the known tokens, so the last stage samples the
  // next token; false for a prompt chunk that is not the last.
  bool sample = false;
  // For sampling (penalties see every token so far: prompt and generated).
  const SamplingOptions* sampling = nullptr;
  const std::vector<int32_t>* history = nullptr;
};

struct MicroBatch {
  uint64_t step_id = 0;
  int slot = 0;  // 0 .. num_stages-1: which of the in-flight micro-batches
  std::vector<BatchEntry> entries;
  int num_tokens() const;
};

struct StepToken {
  uint64_t sequence_id = 0;
  int32_t token = 0;
  float logprob = 0;
};

// What happened to a sequence after a step.
struct SequenceEvent {
  enum class Kind { kToken, kFinished };
  Kind kind = Kind::kToken;
  uint64_t sequence_id = 0;
  int32_t token = 0;       // kToken
  float logprob = 0;       // kToken
  std::string finish_reason;  // kFinished: "stop" (stop id) or "length"
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);

  // Queues a request. Errors (the request is not queued): duplicate id, empty
  // prompt, max_tokens < 1, or a request that could never fit the KV cache or
  // the context limit (the message gives the limit).
  Status Add(SequenceRequest request);
  // Ends a sequence now (client gone, stop string seen). Returns false when
  // the id is unknown. A sequence in flight is dropped when its step returns.
  bool Cancel(uint64_t sequence_id);

  // The next micro-batch to send, if a slot is free and there is work.
  std::optional<MicroBatch> NextBatch();
  // Applies a finished step: the sampled tokens of its sampling entries.
  // Unknown step ids are an error; sequences cancelled meanwhile are skipped.
  StatusOr<std::vector<SequenceEvent>> Complete(uint64_t step_id,
                                                const std::vector<StepToken>& tokens);
  // Fails a step (a stage died): every sequence in it finishes with an error,
  // returned so the caller can tell the clients; the slot is freed.
  std::vector<uint64_t> Fail(uint64_t step_id);

  // Sequences whose KV the stages may free (finished or cancelled since the
  // last call, and not in flight).
  std::vector<uint64_t> TakeReleased();

  int waiting() const { return static_cast<int>(waiting_.size()); }
  int running() const { return static_cast<int>(running_.size()); }
  int in_flight() const { return static_cast<int>(in_flight_.size()); }
  int64_t kv_reserved_tokens() const { return kv_reserved_tokens_; }
  bool idle() const { return waiting_.empty() && running_.empty() && in_flight_.empty(); }

 private:
  struct Sequence {
    SequenceRequest request;
    std::vector<int32_t> history;  // prompt then generated tokens
    int computed = 0;              // tokens already in the KV cache
    int generated = 0;
    int64_t reserved_tokens = 0;   // KV reservation, whole blocks
    bool in_flight = false;
    bool cancelled = false;
  };
  struct InFlight {
    int slot = 0;
    std::vector<uint64_t> sequences;
    std::vector<int> tokens_per_sequence;
  };

  int64_t ReservationFor(const SequenceRequest& r) const;
  void Admit();
  void Retire(uint64_t id);

  SchedulerOptions options_;
  std::deque<SequenceRequest> waiting_;
  std::unordered_map<uint64_t, Sequence> running_;
  std::vector<uint64_t> order_;  // running sequences in admission order
  std::unordered_map<uint64_t, InFlight> in_flight_;
  std::vector<bool> slot_busy_;
  std::vector<uint64_t> released_;
  int64_t kv_reserved_tokens_ = 0;
  uint64_t next_step_id_ = 1;
  size_t rotate_ = 0;  // round-robin start among running sequences
};

}  // namespace tandem
