#include "coordinator/http/openai_response.h"

namespace tandem {

using nlohmann::json;

std::string DumpJson(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string SseEvent(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 8);
  out.append("data: ").append(data).append("\n\n");
  return out;
}

CompletionFormatter::CompletionFormatter(CompletionFormatterOptions options)
    : options_(std::move(options)) {}

void CompletionFormatter::Take(const v1::GenerateResponse& r) {
  if (r.prompt_tokens() > 0) prompt_tokens_ = static_cast<int>(r.prompt_tokens());
  const size_t offset = text_.size();
  text_ += r.text();
  for (int i = 0; i < r.token_ids_size(); ++i) {
    tokens_.push_back(static_cast<int32_t>(r.token_ids(i)));
    logprobs_.push_back(i < r.logprobs_size() ? r.logprobs(i) : 0.0f);
    offsets_.push_back(offset);
  }
  completion_tokens_ += r.token_ids_size();
  if (!r.finish_reason().empty()) {
    finish_reason_ = r.finish_reason();
    error_ = r.error();
  }
}

json CompletionFormatter::Usage() const {
  return {{"prompt_tokens", prompt_tokens_},
          {"completion_tokens", completion_tokens_},
          {"total_tokens", prompt_tokens_ + completion_tokens_}};
}

json CompletionFormatter::Logprobs(size_t from, size_t to) const {
  if (!options_.logprobs) return nullptr;
  if (options_.endpoint == ApiEndpoint::kChatCompletions) {
    json content = json::array();
    for (size_t i = from; i < to; ++i) {
      const std::string bytes = options_.token_bytes ? options_.token_bytes(tokens_[i]) : "";
      json byte_list = json::array();
      for (unsigned char c : bytes) byte_list.push_back(static_cast<int>(c));
      content.push_back({{"token", bytes},
                         {"logprob", logprobs_[i]},
                         {"bytes", std::move(byte_list)},
                         {"top_logprobs", json::array()}});
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }
  json tokens = json::array(), token_logprobs = json::array(), offsets = json::array();
  for (size_t i = from; i < to; ++i) {
    tokens.push_back(options_.token_bytes ? options_.token_bytes(tokens_[i]) : "");
    token_logprobs.push_back(logprobs_[i]);
    offsets.push_back(offsets_[i]);
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", nullptr},
          {"text_offset", std::move(offsets)}};
}

json CompletionFormatter::Chunk(json choice) const {
  const bool chat = options_.endpoint == ApiEndpoint::kChatCompletions;
  json chunk = {{"id", options_.id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", options_.created},
                {"model", options_.model},
                {"system_fingerprint", nullptr},
                {"choices", json::array({std::move(choice)})}};
  if (options_.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

std::string CompletionFormatter::StreamEvents(const v1::GenerateResponse& r) {
  const bool chat = options_.endpoint == ApiEndpoint::kChatCompletions;
  const size_t first_token = tokens_.size();
  Take(r);
  std::string out;
  const bool failed = r.finish_reason() == "error";
  if (!r.text().empty() || r.token_ids_size() > 0 || (chat && !sent_role_ && !failed)) {
    json choice;
    if (chat) {
      json delta = {{"content", r.text()}};
      if (!sent_role_) delta["role"] = "assistant";
      sent_role_ = true;
      choice = {{"index", 0},
                {"delta", std::move(delta)},
                {"logprobs", Logprobs(first_token, tokens_.size())},
                {"finish_reason", nullptr}};
    } else {
      choice = {{"index", 0},
                {"text", r.text()},
                {"logprobs", Logprobs(first_token, tokens_.size())},
                {"finish_reason", nullptr}};
    }
    out += SseEvent(DumpJson(Chunk(std::move(choice))));
  }
  if (r.finish_reason().empty()) return out;

  if (failed) {
    ApiError error = ApiError::Make(500, "generation_failed", r.error().empty() ? "generation failed" : r.error());
    out += SseEvent(DumpJson(error.ToJson()));
  } else {
    json choice = chat ? json{{"index", 0},
                              {"delta", json::object()},
                              {"logprobs", nullptr},
                              {"finish_reason", finish_reason_}}
                       : json{{"index", 0},
                              {"text", ""},
                              {"logprobs", nullptr},
                              {"finish_reason", finish_reason_}};
    out += SseEvent(DumpJson(Chunk(std::move(choice))));
    if (options_.include_usage) {
      json usage_chunk = Chunk(nullptr);
      usage_chunk["choices"] = json::array();
      usage_chunk["usage"] = Usage();
      out += SseEvent(DumpJson(usage_chunk));
    }
  }
  out += SseEvent("[DONE]");
  return out;
}

void CompletionFormatter::Accumulate(const v1::GenerateResponse& r) { Take(r); }

json CompletionFormatter::Final() const {
  const bool chat = options_.endpoint == ApiEndpoint::kChatCompletions;
  json choice;
  if (chat) {
    choice = {{"index", 0},
              {"message", {{"role", "assistant"}, {"content", text_}, {"refusal", nullptr}}},
              {"logprobs", Logprobs(0, tokens_.size())},
              {"finish_reason", finish_reason_}};
  } else {
    choice = {{"index", 0},
              {"text", text_},
              {"logprobs", Logprobs(0, tokens_.size())},
              {"finish_reason", finish_reason_}};
  }
  return {{"id", options_.id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", options_.created},
          {"model", options_.model},
          {"system_fingerprint", nullptr},
          {"choices", json::array({std::move(choice)})},
          {"usage", Usage()}};
}

}  // namespace tandem
