#pragma once
// Turns a client's GenerateRequest into an engine request: the prompt
// (text tokenized with BOS, a chat rendered with the model's template, or
// token ids checked against the vocabulary), sampling parameters validated,
// max_tokens defaulted. Runs in the gRPC handler, before posting to the
// engine.
#include "coordinator/chat_template.h"
#include "coordinator/engine.h"
#include "coordinator/tokenizer.h"
#include "core/status.h"
#include "model/model_spec.h"
#include "tandem/v1/coordinator.pb.h"

namespace tandem {

inline constexpr int kDefaultMaxTokens = 256;
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;

struct PromptTools {
  const ModelSpec* spec = nullptr;               // required
  const Tokenizer* tokenizer = nullptr;          // null: only token-id prompts
  const ChatTemplate* chat_template = nullptr;   // null: chats are refused
};

// InvalidArgument with a message naming the field for anything out of range.
StatusOr<GenerationRequest> PrepareGeneration(const v1::GenerateRequest& request,
                                              const PromptTools& tools);

}  // namespace tandem
