#pragma once
// The generation engine: one thread owns the Scheduler, every request's state
// (detokenizer, stop strings) and the pipeline stream. Network handlers post
// work through Submit/Cancel (thread-safe, never blocking) and receive
// output through their GenerationSink, called on the engine thread.
//
// A request's life: Submit -> queued in the Scheduler (admitted by the KV
// capacity of the tightest stage) -> micro-batches go to stage 0 (up to one
// per stage in flight) -> sampled tokens come back -> detokenized, checked for
// stop ids, stop strings and max_tokens, streamed -> on the end (or a client
// cancel) every stage is told to release the sequence's KV cache.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "coordinator/detokenizer.h"
#include "coordinator/pipeline_client.h"
#include "coordinator/scheduler.h"
#include "coordinator/stop_string_matcher.h"
#include "coordinator/tokenizer.h"
#include "tandem/v1/coordinator.pb.h"

namespace tandem {

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, validated against the vocabulary
  int max_tokens = 256;
  SamplingOptions sampling;
  std::vector<std::string> stop;  // stop strings (not part of the output)
};

// Where a request's output goes. Send is called on the engine thread and must
// not block; the response whose finish_reason is set ("stop", "length",
// "error") is the last one. The first response carries prompt_tokens.
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  virtual void Send(v1::GenerateResponse response) = 0;
};

struct EngineOptions {
  int max_batch_tokens = 2048;  // tokens per micro-batch
  int max_sequences = 64;       // running sequences at most
  int prefill_chunk = 512;      // prompt tokens of one sequence per micro-batch
  int block_size = 16;          // KV reservation granularity, tokens
  int max_context = 0;          // prompt + output limit; 0: none
  int vocab_size = 0;             // the model's; sampled ids at or past it fail the step
  std::vector<int32_t> stop_ids;  // end-of-sequence ids
  // Turns ids into text; null: responses carry token ids only. Must outlive
  // the engine.
  const Tokenizer* tokenizer = nullptr;
  // The hello sent on the pipeline stream (role coordinator).
  v1::Hello hello;
  // Called on the engine thread with sequences whose KV every stage may free.
  // Must not block.
  std::function<void(const std::vector<uint64_t>&)> release;
  // Called on the engine thread when the pipeline of `epoch` is connected
  // (OK) or broke (the error). Must not block.
  std::function<void(uint64_t epoch, const Status&)> pipeline_event;
};

// A complete pipeline to serve with.
struct PipelineTarget {
  uint64_t epoch = 0;             // identifies this pipeline in pipeline_event
  std::string stage0_address;     // "host:port" of stage 0's Node service
  int num_stages = 1;             // micro-batches in flight at most
  int64_t kv_capacity_tokens = 0; // the tightest stage's KV capacity
};

class Engine {
 public:
  explicit Engine(EngineOptions options);
  // Stops the thread; requests still running end with an error.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns its id (also the sequence id on the stages).
  uint64_t Submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink);
  // The client went away: the request ends without further output.
  void Cancel(uint64_t request_id);

  // Serves with `target` from now on (replacing any pipeline: its requests
  // fail). Requests wait until the stream's hello exchange succeeds.
  void Attach(PipelineTarget target);
  // Drops the pipeline: running requests end with an error naming `reason`,
  // new ones are refused with "no pipeline: <reason>" until the next Attach.
  void Detach(std::string reason);

  // Thread-safe snapshots for status.
  int waiting() const { return waiting_.load(); }
  int running() const { return running_.load(); }

 private:
  struct Active {
    std::shared_ptr<GenerationSink> sink;
    std::unique_ptr<StreamingDetokenizer> detokenizer;
    std::unique_ptr<StopStringMatcher> stops;
    bool want_logprobs = false;
    int prompt_tokens = 0;
    bool sent_first = false;
  };

  void Post(std::function<void()> work);
  void Loop();
  // Engine thread only, below.
  void DoSubmit(uint64_t id, GenerationRequest request, std::shared_ptr<GenerationSink> sink);
  void DoCancel(uint64_t id);
  void DoAttach(PipelineTarget target);
  void DropPipeline(const std::string& failure);
  void OnResult(uint64_t epoch, const v1::StepResult& result);
  void OnBroken(uint64_t epoch, const Status& status);
  void Pump();
  void SendTo(uint64_t id, Active& active, v1::GenerateResponse response);
  void FailAll(const std::string& message);
  void Release();

  EngineOptions options_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<int> waiting_{0};
  std::atomic<int> running_{0};

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stop_ = false;                        // guarded by mu_

  // Owned by the engine thread.
  std::optional<Scheduler> scheduler_;
  std::unique_ptr<PipelineClient> pipeline_;
  uint64_t epoch_ = 0;
  bool connected_ = false;
  std::string unavailable_ = "no pipeline yet: waiting for nodes";
  std::unordered_map<uint64_t, Active> active_;

  std::thread thread_;
};

}  // namespace tandem
