#include "coordinator/http/openai_request.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

using nlohmann::json;

// Deepest nesting of brackets outside strings; stops counting past `limit`.
int JsonDepth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return deepest;
}

const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// The value of a numeric field in [lo, hi]; std::nullopt when absent.
std::variant<std::optional<double>, ApiError> Number(const json& body, const char* name, double lo,
                                                     double hi) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) return ApiError::BadParam(name, absl::StrCat("'", name, "' must be a number"));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    return ApiError::BadParam(name,
                              absl::StrCat("'", name, "' must be in [", lo, ", ", hi, "], got ", x));
  }
  return std::optional<double>(x);
}

std::variant<std::optional<int64_t>, ApiError> Integer(const json& body, const char* name,
                                                       int64_t lo, int64_t hi) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::optional<int64_t>();
  if (!v->is_number_integer()) {
    return ApiError::BadParam(name, absl::StrCat("'", name, "' must be an integer"));
  }
  int64_t x = 0;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) {
      return ApiError::BadParam(name, absl::StrCat("'", name, "' must be at most ", hi));
    }
    x = static_cast<int64_t>(u);
  } else {
    x = v->get<int64_t>();
  }
  if (x < lo || x > hi) {
    return ApiError::BadParam(name,
                              absl::StrCat("'", name, "' must be in [", lo, ", ", hi, "], got ", x));
  }
  return std::optional<int64_t>(x);
}

std::variant<std::optional<bool>, ApiError> Bool(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return ApiError::BadParam(name, absl::StrCat("'", name, "' must be a boolean"));
  return std::optional<bool>(v->get<bool>());
}

// Unwraps a variant result into `out` or returns its error from the caller.
#define TAKE_OR_RETURN_API(out, expr)                          \
  do {                                                         \
    auto _r = (expr);                                          \
    if (auto* _e = std::get_if<ApiError>(&_r)) return *_e;     \
    out = std::get<0>(std::move(_r));                          \
  } while (0)

std::optional<ApiError> ParseContent(const json& content, const std::string& where,
                                     std::string* out) {
  if (content.is_string()) {
    *out = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) {
    return ApiError::BadParam(where, "'" + where + "' must be a string or an array of text parts");
  }
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string part_where = absl::StrCat(where, "[", i, "]");
    if (!part.is_object() || !part.contains("type") || part["type"] != "text" ||
        !part.contains("text") || !part["text"].is_string()) {
      return ApiError::BadParam(part_where, "'" + part_where +
                                                "' must be {\"type\": \"text\", \"text\": ...}; "
                                                "only text parts are supported");
    }
    *out += part["text"].get<std::string>();
  }
  return std::nullopt;
}

std::optional<ApiError> ParseMessages(const json& body, CompletionParams* out) {
  const json* messages = Field(body, "messages");
  if (messages == nullptr) return ApiError::BadParam("messages", "'messages' is required");
  if (!messages->is_array() || messages->empty()) {
    return ApiError::BadParam("messages", "'messages' must be a non-empty array");
  }
  if (messages->size() > static_cast<size_t>(kMaxChatMessages)) {
    return ApiError::BadParam("messages",
                              absl::StrCat("at most ", kMaxChatMessages, " messages, got ",
                                           messages->size()));
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return ApiError::BadParam(where, "'" + where + "' must be an object");
    const json* role = Field(m, "role");
    if (role == nullptr || !role->is_string()) {
      return ApiError::BadParam(where + ".role", "'" + where + ".role' must be a string");
    }
    ChatMessage message;
    message.role = role->get<std::string>();
    if (message.role == "developer") message.role = "system";  // OpenAI's newer name
    if (message.role != "system" && message.role != "user" && message.role != "assistant" &&
        message.role != "tool") {
      return ApiError::BadParam(where + ".role",
                                "'" + where + ".role' must be system, developer, user, assistant "
                                              "or tool, got '" + message.role + "'");
    }
    const json* content = Field(m, "content");
    if (content != nullptr) {
      if (auto e = ParseContent(*content, where + ".content", &message.content)) return e;
    } else if (message.role != "assistant") {
      return ApiError::BadParam(where + ".content", "'" + where + ".content' is required");
    }
    out->messages.push_back(std::move(message));
  }
  return std::nullopt;
}

std::optional<ApiError> ParseIds(const json& ids, CompletionParams* out) {
  for (const json& id : ids) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return ApiError::BadParam("prompt", "token ids in 'prompt' must be non-negative integers");
    }
    out->prompt_ids.push_back(id.get<int32_t>());
  }
  out->prompt_is_ids = true;
  return std::nullopt;
}

std::optional<ApiError> ParsePrompt(const json& body, CompletionParams* out) {
  const json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return ApiError::BadParam("prompt", "'prompt' is required");
  if (prompt->is_string()) {
    out->prompt = prompt->get<std::string>();
    return std::nullopt;
  }
  if (prompt->is_array() && !prompt->empty()) {
    if (prompt->size() == 1 && (*prompt)[0].is_string()) {
      out->prompt = (*prompt)[0].get<std::string>();
      return std::nullopt;
    }
    if (prompt->size() == 1 && (*prompt)[0].is_array()) return ParseIds((*prompt)[0], out);
    if ((*prompt)[0].is_number_integer()) return ParseIds(*prompt, out);
    return ApiError::BadParam("prompt", "one prompt per request: batches of prompts are not supported");
  }
  return ApiError::BadParam("prompt", "'prompt' must be a string or an array of token ids");
}

std::optional<ApiError> ParseStop(const json& body, CompletionParams* out) {
  const json* stop = Field(body, "stop");
  if (stop == nullptr) return std::nullopt;
  std::vector<std::string> stops;
  if (stop->is_string()) {
    stops.push_back(stop->get<std::string>());
  } else if (stop->is_array()) {
    for (const json& s : *stop) {
      if (!s.is_string()) return ApiError::BadParam("stop", "'stop' must hold strings only");
      stops.push_back(s.get<std::string>());
    }
  } else {
    return ApiError::BadParam("stop", "'stop' must be a string or an array of strings");
  }
  if (stops.size() > static_cast<size_t>(kMaxStopStrings)) {
    return ApiError::BadParam("stop", absl::StrCat("at most ", kMaxStopStrings,
                                                   " stop strings, got ", stops.size()));
  }
  for (std::string& s : stops) {
    if (s.size() > kMaxStopBytes) {
      return ApiError::BadParam("stop", absl::StrCat("a stop string is ", s.size(),
                                                     " bytes; at most ", kMaxStopBytes));
    }
    if (!s.empty()) out->stop.push_back(std::move(s));
  }
  return std::nullopt;
}

std::variant<CompletionParams, ApiError> ParseObject(const json& body, ApiEndpoint endpoint) {
  CompletionParams out;
  out.endpoint = endpoint;
  const bool chat = endpoint == ApiEndpoint::kChatCompletions;

  if (const json* model = Field(body, "model")) {
    if (!model->is_string()) return ApiError::BadParam("model", "'model' must be a string");
    out.model = model->get<std::string>();
  }
  if (chat) {
    if (auto e = ParseMessages(body, &out)) return *e;
  } else {
    if (auto e = ParsePrompt(body, &out)) return *e;
  }

  constexpr int64_t kMaxTokensLimit = 1 << 20;
  std::optional<int64_t> max_tokens, max_completion_tokens;
  TAKE_OR_RETURN_API(max_tokens, Integer(body, "max_tokens", 1, kMaxTokensLimit));
  if (chat) {
    TAKE_OR_RETURN_API(max_completion_tokens,
                       Integer(body, "max_completion_tokens", 1, kMaxTokensLimit));
  }
  if (max_completion_tokens) {
    out.max_tokens = static_cast<int>(*max_completion_tokens);
  } else if (max_tokens) {
    out.max_tokens = static_cast<int>(*max_tokens);
  }

  std::optional<double> x;
  TAKE_OR_RETURN_API(x, Number(body, "temperature", 0, 2));
  out.sampling.temperature = static_cast<float>(x.value_or(1.0));
  TAKE_OR_RETURN_API(x, Number(body, "top_p", 0, 1));
  if (x && *x == 0) return ApiError::BadParam("top_p", "'top_p' must be greater than 0");
  out.sampling.top_p = static_cast<float>(x.value_or(1.0));
  TAKE_OR_RETURN_API(x, Number(body, "min_p", 0, 1));
  out.sampling.min_p = static_cast<float>(x.value_or(0.0));
  TAKE_OR_RETURN_API(x, Number(body, "presence_penalty", -2, 2));
  out.sampling.presence_penalty = static_cast<float>(x.value_or(0.0));
  TAKE_OR_RETURN_API(x, Number(body, "frequency_penalty", -2, 2));
  out.sampling.frequency_penalty = static_cast<float>(x.value_or(0.0));
  TAKE_OR_RETURN_API(x, Number(body, "repetition_penalty", 0.01, 100));
  out.sampling.repetition_penalty = static_cast<float>(x.value_or(1.0));

  std::optional<int64_t> i;
  // -1 is how several OpenAI-style servers spell "off".
  TAKE_OR_RETURN_API(i, Integer(body, "top_k", -1, std::numeric_limits<int32_t>::max()));
  out.sampling.top_k = i && *i > 0 ? static_cast<int>(*i) : 0;
  TAKE_OR_RETURN_API(i, Integer(body, "seed", std::numeric_limits<int64_t>::min(),
                                std::numeric_limits<int64_t>::max()));
  if (i) {
    out.sampling.seed = static_cast<uint64_t>(*i);
    out.sampling.has_seed = true;
  }
  TAKE_OR_RETURN_API(i, Integer(body, "n", 1, 1));
  TAKE_OR_RETURN_API(i, Integer(body, "best_of", 1, 1));

  if (auto e = ParseStop(body, &out)) return *e;

  std::optional<bool> b;
  TAKE_OR_RETURN_API(b, Bool(body, "stream"));
  out.stream = b.value_or(false);
  if (const json* options = Field(body, "stream_options")) {
    if (!options->is_object()) {
      return ApiError::BadParam("stream_options", "'stream_options' must be an object");
    }
    TAKE_OR_RETURN_API(b, Bool(*options, "include_usage"));
    out.include_usage = b.value_or(false);
  }

  if (chat) {
    TAKE_OR_RETURN_API(b, Bool(body, "logprobs"));
    out.logprobs = b.value_or(false);
    TAKE_OR_RETURN_API(i, Integer(body, "top_logprobs", 0, 20));
    if (i && *i > 0) {
      return ApiError::BadParam("top_logprobs",
                                "'top_logprobs' is not supported: only the sampled token's "
                                "log-probability is available (use logprobs: true)");
    }
  } else {
    TAKE_OR_RETURN_API(i, Integer(body, "logprobs", 0, 5));
    if (i && *i > 0) {
      return ApiError::BadParam("logprobs",
                                "'logprobs' above 0 is not supported: only the sampled token's "
                                "log-probability is available (use logprobs: 0)");
    }
    out.logprobs = i.has_value();
    TAKE_OR_RETURN_API(b, Bool(body, "echo"));
    if (b.value_or(false)) return ApiError::BadParam("echo", "'echo' is not supported");
    if (const json* suffix = Field(body, "suffix")) {
      if (!suffix->is_string() || !suffix->get<std::string>().empty()) {
        return ApiError::BadParam("suffix", "'suffix' is not supported");
      }
    }
  }
  out.sampling.want_logprobs = out.logprobs;

  if (const json* bias = Field(body, "logit_bias")) {
    if (!bias->is_object() || !bias->empty()) {
      return ApiError::BadParam("logit_bias", "'logit_bias' is not supported");
    }
  }
  if (const json* tools = Field(body, "tools")) {
    if (!tools->is_array() || !tools->empty()) {
      return ApiError::BadParam("tools", "'tools' (function calling) is not supported");
    }
  }
  if (const json* format = Field(body, "response_format")) {
    const json* type = format->is_object() ? Field(*format, "type") : nullptr;
    if (type == nullptr || *type != "text") {
      return ApiError::BadParam("response_format",
                                "only 'response_format': {\"type\": \"text\"} is supported");
    }
  }
  return out;
}

}  // namespace

std::variant<CompletionParams, ApiError> ParseCompletionRequest(std::string_view body,
                                                                ApiEndpoint endpoint) {
  if (JsonDepth(body, kMaxJsonDepth) > kMaxJsonDepth) {
    return ApiError::Make(400, "invalid_json", absl::StrCat("the request body nests deeper than ", kMaxJsonDepth,
                                            " levels"));
  }
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return ApiError::Make(400, "invalid_json", "the request body is not valid JSON");
  }
  if (!parsed.is_object()) {
    return ApiError::Make(400, "invalid_json", "the request body must be a JSON object");
  }
  return ParseObject(parsed, endpoint);
}

}  // namespace tandem
