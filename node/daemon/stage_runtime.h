#pragma once
// One loaded stage serving pipeline steps. Steps are queued by the Forward
// streams and run in arrival order on one compute thread (the executor is
// not thread-safe); while a step computes, the streams keep receiving and
// decoding the next frames and the link keeps sending the previous output.
//
// The last stage samples each sequence's next token with that sequence's
// parameters and answers the step with token ids; other stages pass the
// hidden states to the next stage and relay its answer back.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <variant>
#include <vector>

#include "core/status.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/daemon/next_stage_link.h"
#include "node/daemon/step_reply.h"
#include "node/sampler.h"
#include "node/stage.h"
#include "tandem/v1/node.pb.h"

namespace tandem {

// A decoded step, ready to compute.
struct StepInput {
  v1::ForwardBegin begin;
  std::vector<float> hidden;  // [T, hidden]; empty on the first stage
  StepReply reply;
};

struct StageStats {
  uint64_t steps = 0;
  double compute_ms_total = 0;
  int kv_total_blocks = 0;
  int kv_free_blocks = 0;
  uint64_t link_raw_bytes = 0;
  uint64_t link_wire_bytes = 0;
  std::string link_codec;
};

class StageRuntime {
 public:
  // Loads the stage on the CPU (no cuda_devices) or on those CUDA devices,
  // one tensor-parallel rank each (CreateStage).
  // `next` is null on the last stage.
  static StatusOr<std::unique_ptr<StageRuntime>> Create(
      const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
      const StageOptions& options, std::unique_ptr<NextStageLink> next,
      const std::vector<int>& cuda_devices = {});
  ~StageRuntime();

  // Thread-safe; returns at once.
  void Submit(StepInput input);
  // Frees the sequences' KV (and samplers) after the queued steps; thread-safe.
  void Release(std::vector<uint64_t> sequence_ids);

  StageStats stats() const;
  const Stage& executor() const { return *executor_; }

 private:
  using Work = std::variant<StepInput, std::vector<uint64_t>>;
  StageRuntime(std::unique_ptr<Stage> executor, std::unique_ptr<NextStageLink> next);
  void ComputeLoop();
  void RunStep(StepInput& input);
  // Checks a step's metadata against what this stage can run.
  Status ValidateStep(const StepInput& input) const;

  std::unique_ptr<Stage> executor_;
  std::unique_ptr<NextStageLink> next_;
  // Last stage: one sampler per live sequence.
  std::unordered_map<uint64_t, std::unique_ptr<SequenceSampler>> samplers_;
  std::vector<SequenceStep> steps_;  // scratch
  std::vector<int32_t> tokens_;      // scratch
  // Last stage, per sequence of the step: its sampler, or null when it
  // asked for no token (a prefill chunk before the last).
  std::vector<SequenceSampler*> step_samplers_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Work> queue_;
  bool stopping_ = false;
  std::atomic<uint64_t> steps_done_{0};
  std::atomic<double> compute_ms_{0};
  std::atomic<int> kv_free_blocks_{0};
  std::thread compute_;
};

}  // namespace tandem
