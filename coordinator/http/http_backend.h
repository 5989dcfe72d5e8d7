#pragma once
// What the HTTP front door needs from the rest of the coordinator: the model's
// facts, prompt building, the engine's Submit/Cancel, and status snapshots.
// The coordinator implements it over its Engine and Cluster
// (coordinator/http/engine_http_backend.h); tests implement it with a fake.
//
// Every method may be called from any of the HTTP server's threads at once and
// must not block for long (a lock held briefly is fine).
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "coordinator/chat_template.h"
#include "coordinator/engine.h"
#include "core/status.h"
#include "tandem/v1/coordinator.pb.h"

namespace tandem {

class HttpBackend {
 public:
  virtual ~HttpBackend() = default;

  // The model's name as clients give it in "model" (also listed by /v1/models).
  virtual std::string ModelName() const = 0;
  // Prompt plus generated tokens at most; 0 when the model sets no limit.
  virtual int MaxContextTokens() const = 0;
  // max_tokens when a request gives none (before clamping to the context).
  virtual int DefaultMaxTokens() const = 0;

  // A completion prompt as token ids (with the tokenizer's BOS).
  virtual StatusOr<std::vector<int32_t>> EncodePrompt(const std::string& text) const = 0;
  // A chat rendered with the model's template and a generation prompt, as
  // token ids. InvalidArgument for conversations the template cannot express.
  virtual StatusOr<std::vector<int32_t>> EncodeChat(std::span<const ChatMessage> messages) const = 0;
  // Token ids a prompt may hold: [0, VocabSize()).
  virtual int32_t VocabSize() const = 0;
  // The raw bytes a token stands for (may be part of a UTF-8 character).
  virtual std::string TokenBytes(int32_t id) const = 0;

  // True when a complete pipeline serves (GET /health answers 200).
  virtual bool Ready() const = 0;
  // Requests waiting for admission (compared with the server's max_queue).
  virtual int QueueLength() const = 0;
  // The cluster as `tandem status --json` shows it (coordinator/
  // cluster_status_format.h), with the request counts filled in. Also the
  // source of the per-stage and per-link metrics.
  virtual v1::ClusterStatusResponse ClusterStatus() const = 0;

  // Engine::Submit / Engine::Cancel: `sink` is called on the engine's thread
  // and never blocks; the response with finish_reason set is the last one.
  virtual uint64_t Submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) = 0;
  virtual void Cancel(uint64_t request_id) = 0;
};

}  // namespace tandem
