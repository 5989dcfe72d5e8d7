#pragma once
// HttpBackend over the coordinator's own Engine and Cluster: what
// tandem-coordinator hands its HTTP server.
#include <string>

#include "coordinator/chat_template.h"
#include "coordinator/cluster.h"
#include "coordinator/engine.h"
#include "coordinator/http/http_backend.h"
#include "coordinator/tokenizer.h"
#include "model/model_spec.h"

namespace tandem {

struct EngineHttpBackendOptions {
  std::string model_name;                       // what clients pass as "model"
  const ModelSpec* spec = nullptr;              // required
  const Tokenizer* tokenizer = nullptr;         // null: text prompts are refused
  const ChatTemplate* chat_template = nullptr;  // null: chats are refused
  Engine* engine = nullptr;                     // required
  Cluster* cluster = nullptr;                   // required
};

// Every pointer must outlive the backend (and the HttpServer using it).
class EngineHttpBackend final : public HttpBackend {
 public:
  explicit EngineHttpBackend(EngineHttpBackendOptions options);

  std::string ModelName() const override { return options_.model_name; }
  int MaxContextTokens() const override;
  int DefaultMaxTokens() const override;
  StatusOr<std::vector<int32_t>> EncodePrompt(const std::string& text) const override;
  StatusOr<std::vector<int32_t>> EncodeChat(std::span<const ChatMessage> messages) const override;
  int32_t VocabSize() const override { return options_.spec->vocab_size; }
  std::string TokenBytes(int32_t id) const override;
  bool Ready() const override;
  int QueueLength() const override;
  v1::ClusterStatusResponse ClusterStatus() const override;
  uint64_t Submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) override;
  void Cancel(uint64_t request_id) override;

 private:
  EngineHttpBackendOptions options_;
};

}  // namespace tandem
