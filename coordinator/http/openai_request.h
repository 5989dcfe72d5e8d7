#pragma once
// The body of POST /v1/chat/completions and POST /v1/completions, parsed and
// validated the way OpenAI's API reads it. Unknown fields are ignored, as
// OpenAI's clients send fields a server may not know; known fields with
// values this server cannot honour (n > 1, top_logprobs, echo, ...) are
// refused with a 400 naming the field.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "coordinator/chat_template.h"
#include "coordinator/http/api_error.h"
#include "coordinator/scheduler.h"

namespace tandem {

enum class ApiEndpoint { kChatCompletions, kCompletions };

inline constexpr int kMaxJsonDepth = 64;
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopBytes = 256;
inline constexpr int kMaxChatMessages = 4096;

struct CompletionParams {
  ApiEndpoint endpoint = ApiEndpoint::kChatCompletions;
  std::string model;                  // "" when the client gave none
  std::vector<ChatMessage> messages;  // chat completions
  std::string prompt;                 // completions, given as text
  std::vector<int32_t> prompt_ids;    // completions, given as token ids
  bool prompt_is_ids = false;
  std::optional<int> max_tokens;  // max_completion_tokens or max_tokens
  SamplingOptions sampling;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // the sampled tokens' log-probabilities
};

// Parses `body`. Errors are 400s naming the parameter ("messages[1].content").
std::variant<CompletionParams, ApiError> ParseCompletionRequest(std::string_view body,
                                                                ApiEndpoint endpoint);

}  // namespace tandem
