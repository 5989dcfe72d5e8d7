#pragma once
// A deterministic HttpBackend for tests: byte-level "tokens", a fixed answer
// per prompt streamed token by token from a thread of its own (as the engine
// does), and a two-node cluster to report. Records what reached it.
//
// Prompts containing these words change what happens:
//   FAIL_EARLY  the request ends with "no pipeline: ..." before any output
//   FAIL_LATE   the request ends with an error after two tokens
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/http/http_backend.h"

namespace tandem {

struct FakeBackendOptions {
  std::string model_name = "tandem-test";
  int max_context = 4096;
  int token_delay_ms = 1;  // between tokens of a request
};

class FakeHttpBackend final : public HttpBackend {
 public:
  explicit FakeHttpBackend(FakeBackendOptions options = {});
  ~FakeHttpBackend() override;

  // The words of the answer to `prompt_tokens` tokens, one token each.
  static std::vector<std::string> AnswerTokens(int prompt_tokens);
  static std::string Answer(int prompt_tokens);

  std::string ModelName() const override { return options_.model_name; }
  int MaxContextTokens() const override { return options_.max_context; }
  int DefaultMaxTokens() const override { return 64; }
  StatusOr<std::vector<int32_t>> EncodePrompt(const std::string& text) const override;
  StatusOr<std::vector<int32_t>> EncodeChat(std::span<const ChatMessage> messages) const override;
  int32_t VocabSize() const override { return 512; }
  std::string TokenBytes(int32_t id) const override;
  bool Ready() const override { return ready_.load(); }
  int QueueLength() const override { return queue_length_.load(); }
  v1::ClusterStatusResponse ClusterStatus() const override;
  uint64_t Submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) override;
  void Cancel(uint64_t request_id) override;

  // Test controls and observations.
  void set_ready(bool ready) { ready_.store(ready); }
  void set_queue_length(int n) { queue_length_.store(n); }
  void set_token_delay_ms(int ms) { token_delay_ms_.store(ms); }
  GenerationRequest last_request() const;
  std::set<uint64_t> cancelled() const;
  int active() const;
  uint64_t submitted() const { return next_id_.load() - 1; }

 private:
  struct Live {
    GenerationRequest request;
    std::shared_ptr<GenerationSink> sink;
    std::vector<std::string> tokens;
    size_t next = 0;
    std::string text;
    bool fail_late = false;
  };
  void Loop();
  // One step of `live`; returns true when it ended.
  bool Step(uint64_t id, Live& live);

  FakeBackendOptions options_;
  std::atomic<bool> ready_{true};
  std::atomic<int> queue_length_{0};
  std::atomic<int> token_delay_ms_;
  std::atomic<uint64_t> next_id_{1};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Live> live_;  // guarded by mu_
  std::set<uint64_t> cancelled_;   // guarded by mu_
  GenerationRequest last_;         // guarded by mu_
  bool stop_ = false;              // guarded by mu_
  std::thread thread_;
};

}  // namespace tandem
