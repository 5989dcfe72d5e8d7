#include "coordinator/http/engine_http_backend.h"

#include "core/check.h"
#include "coordinator/generate_request.h"

namespace tandem {

EngineHttpBackend::EngineHttpBackend(EngineHttpBackendOptions options)
    : options_(std::move(options)) {
  CHECK(options_.spec != nullptr);
  CHECK(options_.engine != nullptr);
  CHECK(options_.cluster != nullptr);
}

int EngineHttpBackend::MaxContextTokens() const {
  return options_.spec->max_position_embeddings;
}

int EngineHttpBackend::DefaultMaxTokens() const {
  return options_.spec->generation.max_new_tokens.value_or(kDefaultMaxTokens);
}

StatusOr<std::vector<int32_t>> EngineHttpBackend::EncodePrompt(const std::string& text) const {
  if (options_.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "this coordinator has no tokenizer (no tokenizer.json in its model folder)");
  }
  return options_.tokenizer->Encode(text, /*add_special=*/true);
}

StatusOr<std::vector<int32_t>> EngineHttpBackend::EncodeChat(
    std::span<const ChatMessage> messages) const {
  if (options_.tokenizer == nullptr || options_.chat_template == nullptr) {
    return absl::FailedPreconditionError("this coordinator has no chat template for its model");
  }
  ASSIGN_OR_RETURN(std::string text, options_.chat_template->Render(messages, true));
  // The rendered text carries its own special tokens.
  return options_.tokenizer->Encode(text, /*add_special=*/false);
}

std::string EngineHttpBackend::TokenBytes(int32_t id) const {
  std::string out;
  if (options_.tokenizer != nullptr && options_.tokenizer->IsValidId(id)) {
    // Index 1: not the first token, so no leading-space stripping applies.
    options_.tokenizer->AppendTokenBytes(id, 1, &out);
  }
  return out;
}

bool EngineHttpBackend::Ready() const { return options_.cluster->Status().state() == "ready"; }

int EngineHttpBackend::QueueLength() const { return options_.engine->waiting(); }

v1::ClusterStatusResponse EngineHttpBackend::ClusterStatus() const {
  v1::ClusterStatusResponse status = options_.cluster->Status();
  status.set_requests_waiting(static_cast<uint32_t>(options_.engine->waiting()));
  status.set_requests_running(static_cast<uint32_t>(options_.engine->running()));
  return status;
}

uint64_t EngineHttpBackend::Submit(GenerationRequest request,
                                   std::shared_ptr<GenerationSink> sink) {
  return options_.engine->Submit(std::move(request), std::move(sink));
}

void EngineHttpBackend::Cancel(uint64_t request_id) { options_.engine->Cancel(request_id); }

}  // namespace tandem
