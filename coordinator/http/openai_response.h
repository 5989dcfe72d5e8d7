#pragma once
// Turns the engine's GenerateResponse messages for one request into OpenAI's
// response shapes: Server-Sent Events chunks ("chat.completion.chunk" or
// "text_completion", ending with `data: [DONE]`) or, for a request that does
// not stream, one "chat.completion" / "text_completion" object with usage and
// finish_reason.
//
// Not thread-safe: one formatter per request, used on its connection's strand.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "coordinator/http/api_error.h"
#include "coordinator/http/openai_request.h"
#include "nlohmann/json.hpp"
#include "tandem/v1/coordinator.pb.h"

namespace tandem {

struct CompletionFormatterOptions {
  ApiEndpoint endpoint = ApiEndpoint::kChatCompletions;
  std::string id;        // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;   // unix seconds
  std::string model;
  bool logprobs = false;
  bool include_usage = false;  // streaming: a last chunk with usage, choices []
  // The raw bytes of a token, for logprobs.
  std::function<std::string(int32_t)> token_bytes;
};

// JSON text with invalid UTF-8 replaced (U+FFFD), never throwing.
std::string DumpJson(const nlohmann::json& value);
// One SSE event: "data: <text>\n\n".
std::string SseEvent(std::string_view data);

class CompletionFormatter {
 public:
  explicit CompletionFormatter(CompletionFormatterOptions options);

  // Streaming: the SSE events for one engine message. The message with
  // finish_reason set also yields the usage chunk (when asked) and
  // `data: [DONE]`; an error becomes an event {"error": ...} before [DONE].
  std::string StreamEvents(const v1::GenerateResponse& response);
  // Not streaming: takes one engine message.
  void Accumulate(const v1::GenerateResponse& response);
  // Not streaming, after the last message: the whole response object.
  nlohmann::json Final() const;

  bool finished() const { return !finish_reason_.empty(); }
  const std::string& finish_reason() const { return finish_reason_; }
  const std::string& error() const { return error_; }
  int prompt_tokens() const { return prompt_tokens_; }
  int completion_tokens() const { return completion_tokens_; }
  // True once any text or token went out (an error after that cannot change
  // the HTTP status any more).
  bool produced_output() const { return completion_tokens_ > 0 || !text_.empty(); }

 private:
  void Take(const v1::GenerateResponse& response);
  nlohmann::json Usage() const;
  // Logprobs of tokens [from, to) in OpenAI's shape for this endpoint.
  nlohmann::json Logprobs(size_t from, size_t to) const;
  nlohmann::json Chunk(nlohmann::json choice) const;

  CompletionFormatterOptions options_;
  std::string text_;
  std::vector<int32_t> tokens_;
  std::vector<float> logprobs_;
  std::vector<size_t> offsets_;  // completions: where each token's text starts
  int prompt_tokens_ = 0;
  int completion_tokens_ = 0;
  std::string finish_reason_;
  std::string error_;
  bool sent_role_ = false;
};

}  // namespace tandem
