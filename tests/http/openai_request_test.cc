// Parsing of OpenAI request bodies: defaults, accepted shapes, refusals.
#include "coordinator/http/openai_request.h"

#include "gtest/gtest.h"

namespace tandem {
namespace {

CompletionParams ParseOk(const std::string& body, ApiEndpoint endpoint) {
  auto r = ParseCompletionRequest(body, endpoint);
  if (auto* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << body << " -> " << e->message;
    return {};
  }
  return std::get<CompletionParams>(std::move(r));
}

ApiError ParseError(const std::string& body, ApiEndpoint endpoint) {
  auto r = ParseCompletionRequest(body, endpoint);
  if (auto* e = std::get_if<ApiError>(&r)) return *e;
  ADD_FAILURE() << body << " was accepted";
  return {};
}

TEST(OpenAiRequestTest, ChatDefaultsFollowOpenAi) {
  CompletionParams p = ParseOk(R"({"model":"m","messages":[{"role":"user","content":"hi"}]})",
                               ApiEndpoint::kChatCompletions);
  EXPECT_EQ(p.model, "m");
  ASSERT_EQ(p.messages.size(), 1u);
  EXPECT_EQ(p.messages[0].role, "user");
  EXPECT_EQ(p.messages[0].content, "hi");
  EXPECT_FLOAT_EQ(p.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 1.0f);
  EXPECT_EQ(p.sampling.top_k, 0);
  EXPECT_FALSE(p.sampling.has_seed);
  EXPECT_FALSE(p.stream);
  EXPECT_FALSE(p.max_tokens.has_value());
}

TEST(OpenAiRequestTest, ContentPartsDeveloperRoleAndNulls) {
  CompletionParams p = ParseOk(
      R"({"messages":[{"role":"developer","content":[{"type":"text","text":"a"},)"
      R"({"type":"text","text":"b"}]},{"role":"user","content":"q"}],)"
      R"("temperature":null,"stop":null,"max_tokens":5,"max_completion_tokens":9,"top_k":-1,)"
      R"("unknown_field":{"x":1}})",
      ApiEndpoint::kChatCompletions);
  ASSERT_EQ(p.messages.size(), 2u);
  EXPECT_EQ(p.messages[0].role, "system");
  EXPECT_EQ(p.messages[0].content, "ab");
  EXPECT_EQ(p.max_tokens, 9);  // max_completion_tokens wins
  EXPECT_EQ(p.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(p.sampling.temperature, 1.0f);
}

TEST(OpenAiRequestTest, CompletionPromptShapes) {
  EXPECT_EQ(ParseOk(R"({"prompt":"abc"})", ApiEndpoint::kCompletions).prompt, "abc");
  EXPECT_EQ(ParseOk(R"({"prompt":["abc"]})", ApiEndpoint::kCompletions).prompt, "abc");
  CompletionParams ids = ParseOk(R"({"prompt":[1,2,3],"logprobs":0})", ApiEndpoint::kCompletions);
  EXPECT_TRUE(ids.prompt_is_ids);
  EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_TRUE(ids.logprobs);
  EXPECT_TRUE(ParseOk(R"({"prompt":[[4,5]]})", ApiEndpoint::kCompletions).prompt_is_ids);
}

TEST(OpenAiRequestTest, StopSeedAndStreamOptions) {
  CompletionParams p = ParseOk(
      R"({"prompt":"x","stop":"END","seed":-1,"stream":true,"stream_options":{"include_usage":true}})",
      ApiEndpoint::kCompletions);
  EXPECT_EQ(p.stop, (std::vector<std::string>{"END"}));
  EXPECT_TRUE(p.sampling.has_seed);
  EXPECT_EQ(p.sampling.seed, ~uint64_t{0});
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
}

TEST(OpenAiRequestTest, RefusalsNameTheParameter) {
  struct Case {
    const char* body;
    const char* param;
  };
  const Case chat_cases[] = {
      {R"({"messages":[]})", "messages"},
      {R"({"messages":"hi"})", "messages"},
      {R"({"messages":[{"content":"x"}]})", "messages[0].role"},
      {R"({"messages":[{"role":"user"}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})",
       "messages[0].content[0]"},
      {R"({"messages":[{"role":"user","content":"x"}],"top_p":0})", "top_p"},
      {R"({"messages":[{"role":"user","content":"x"}],"top_p":1.5})", "top_p"},
      {R"({"messages":[{"role":"user","content":"x"}],"min_p":-1})", "min_p"},
      {R"({"messages":[{"role":"user","content":"x"}],"presence_penalty":3})", "presence_penalty"},
      {R"({"messages":[{"role":"user","content":"x"}],"frequency_penalty":"a"})",
       "frequency_penalty"},
      {R"({"messages":[{"role":"user","content":"x"}],"seed":1.5})", "seed"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":2.5})", "max_tokens"},
      {R"({"messages":[{"role":"user","content":"x"}],"stream":"yes"})", "stream"},
      {R"({"messages":[{"role":"user","content":"x"}],"logit_bias":{"1":5}})", "logit_bias"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})", "tools"},
      {R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}})",
       "response_format"},
      {R"({"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e","f","g","h",)"
       R"("i","j","k","l","m","n","o","p","q"]})",
       "stop"},
  };
  for (const Case& c : chat_cases) {
    ApiError e = ParseError(c.body, ApiEndpoint::kChatCompletions);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error");
  }
  EXPECT_EQ(ParseError(R"({"prompt":"x","echo":true})", ApiEndpoint::kCompletions).param, "echo");
  EXPECT_EQ(ParseError(R"({"prompt":"x","suffix":"y"})", ApiEndpoint::kCompletions).param, "suffix");
  EXPECT_EQ(ParseError(R"({"prompt":[-1]})", ApiEndpoint::kCompletions).param, "prompt");
  EXPECT_EQ(ParseError(R"({})", ApiEndpoint::kCompletions).param, "prompt");
  EXPECT_EQ(ParseError("{\"prompt\":\"\xff\"}", ApiEndpoint::kCompletions).code, "invalid_json");
}

TEST(OpenAiRequestTest, ErrorJsonHasOpenAisShape) {
  ApiError e = ApiError::BadParam("top_p", "bad");
  nlohmann::json j = e.ToJson();
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "top_p");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  EXPECT_TRUE(ApiError::Make(503, "no_pipeline", "x").ToJson()["error"]["param"].is_null());
  EXPECT_EQ(ApiError::Make(503, "no_pipeline", "x").type, "service_unavailable");
}

}  // namespace
}  // namespace tandem
