// The HTTP API over real loopback sockets, with a deterministic fake backend:
// OpenAI's response shapes (JSON and SSE), every error, authentication and
// the bounds (body, header, idle clients, connections, many streams,
// disconnects that cancel).
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "boost/asio/connect.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/read.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "coordinator/http/http_server.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/http/fake_http_backend.h"

namespace tandem {
namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;

struct Reply {
  int status = 0;
  std::string body;
  http::response<http::string_body> message;
};

// One request on a fresh connection (Beast decodes chunked bodies).
Reply Fetch(int port, http::verb method, const std::string& target, const std::string& body = "",
            const std::string& key = "", std::vector<std::pair<std::string, std::string>> extra = {}) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
  stream.expires_after(std::chrono::seconds(30));
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!key.empty()) req.set(http::field::authorization, "Bearer " + key);
  for (auto& [k, v] : extra) req.set(k, v);
  if (!body.empty() || method == http::verb::post) {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
  }
  http::write(stream, req);
  beast::flat_buffer buffer;
  Reply reply;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64u << 20);
  http::read(stream, buffer, parser);
  reply.message = parser.release();
  reply.status = reply.message.result_int();
  reply.body = reply.message.body();
  return reply;
}

Reply Post(int port, const std::string& target, const json& body, const std::string& key = "") {
  return Fetch(port, http::verb::post, target, body.dump(), key);
}

// The JSON payloads of an SSE body; "[DONE]" comes back as a string.
std::vector<json> SseEvents(const std::string& body) {
  std::vector<json> out;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "event not terminated by a blank line: " << body.substr(pos);
    if (end == std::string::npos) break;
    const std::string event = body.substr(pos, end - pos);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    const std::string data = event.substr(6);
    out.push_back(data == "[DONE]" ? json("[DONE]") : json::parse(data));
    pos = end + 2;
  }
  return out;
}

json ChatBody(const std::string& user, json extra = json::object()) {
  json body = {{"model", "tandem-test"},
               {"messages", {{{"role", "system"}, {"content", "be brief"}},
                             {{"role", "user"}, {"content", user}}}}};
  body.update(extra);
  return body;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions options = {}) {
    server_.reset();
    auto server = HttpServer::Start(options, backend_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    port_ = server_->port();
  }
  void SetUp() override { StartServer(); }
  void TearDown() override { server_.reset(); }

  // Waits (up to 10 s) for `pred`; true when it held.
  template <typename Pred>
  static bool WaitFor(Pred pred) {
    for (int i = 0; i < 1000; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pred();
  }

  FakeHttpBackend backend_;
  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
};

int PromptTokens(const json& chat_body) {
  // Mirrors FakeHttpBackend::EncodeChat: BOS + "role: content\n"... + "assistant: ".
  int n = 1;
  for (const json& m : chat_body["messages"]) {
    n += static_cast<int>(m["role"].get<std::string>().size() + 2 +
                          m["content"].get<std::string>().size() + 1);
  }
  return n + static_cast<int>(std::string("assistant: ").size());
}

TEST_F(HttpServerTest, ChatWithoutStreamingIsOneJsonObject) {
  const json body = ChatBody("hi there");
  Reply r = Post(port_, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.message[http::field::content_type], "application/json");
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "tandem-test");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  ASSERT_EQ(j["choices"].size(), 1u);
  const int prompt = PromptTokens(body);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], FakeHttpBackend::Answer(prompt));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  const int generated = static_cast<int>(FakeHttpBackend::AnswerTokens(prompt).size());
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt);
  EXPECT_EQ(j["usage"]["completion_tokens"], generated);
  EXPECT_EQ(j["usage"]["total_tokens"], prompt + generated);
}

TEST_F(HttpServerTest, ChatStreamIsSseEndingWithDone) {
  const json body = ChatBody("hi there", {{"stream", true},
                                          {"stream_options", {{"include_usage", true}}}});
  Reply r = Post(port_, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.message[http::field::content_type], "text/event-stream; charset=utf-8");
  std::vector<json> events = SseEvents(r.body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const json& e = events[i];
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_TRUE(e.contains("usage") && e["usage"].is_null());
    ASSERT_EQ(e["choices"].size(), 1u);
    if (i == 0) {
      EXPECT_EQ(e["choices"][0]["delta"]["role"], "assistant");
    }
    if (e["choices"][0]["delta"].contains("content")) {
      text += e["choices"][0]["delta"]["content"].get<std::string>();
    }
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  const int prompt = PromptTokens(body);
  EXPECT_EQ(text, FakeHttpBackend::Answer(prompt));
  EXPECT_EQ(finish, "stop");
  const json& usage_chunk = events[events.size() - 2];
  EXPECT_TRUE(usage_chunk["choices"].empty());
  EXPECT_EQ(usage_chunk["usage"]["prompt_tokens"], prompt);
  EXPECT_EQ(usage_chunk["usage"]["completion_tokens"],
            FakeHttpBackend::AnswerTokens(prompt).size());
}

TEST_F(HttpServerTest, CompletionsStopAtMaxTokensWithLength) {
  Reply r = Post(port_, "/v1/completions", {{"prompt", "abc"}, {"max_tokens", 3}});
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["text"], "Hello! You");
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 4);  // BOS + 3 bytes

  Reply s = Post(port_, "/v1/completions",
                 {{"prompt", {{256, 97, 98}}}, {"max_tokens", 2}, {"stream", true}});
  ASSERT_EQ(s.status, 200) << s.body;
  std::vector<json> events = SseEvents(s.body);
  std::string text;
  for (const json& e : events) {
    if (e.is_string()) continue;
    EXPECT_EQ(e["object"], "text_completion");
    text += e["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, "Hello!");
  EXPECT_EQ(backend_.last_request().prompt, (std::vector<int32_t>{256, 97, 98}));
}

TEST_F(HttpServerTest, SamplingParametersReachTheEngine) {
  Reply r = Post(port_, "/v1/chat/completions",
                 ChatBody("x", {{"temperature", 0.5}, {"top_p", 0.9}, {"top_k", 40},
                                {"min_p", 0.05}, {"seed", 1234}, {"presence_penalty", 0.5},
                                {"frequency_penalty", -0.5}, {"max_completion_tokens", 7},
                                {"stop", {"zzz", "yyy"}}, {"logprobs", true}, {"n", 1}}));
  ASSERT_EQ(r.status, 200) << r.body;
  GenerationRequest g = backend_.last_request();
  EXPECT_FLOAT_EQ(g.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(g.sampling.top_p, 0.9f);
  EXPECT_EQ(g.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(g.sampling.min_p, 0.05f);
  EXPECT_TRUE(g.sampling.has_seed);
  EXPECT_EQ(g.sampling.seed, 1234u);
  EXPECT_FLOAT_EQ(g.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(g.sampling.frequency_penalty, -0.5f);
  EXPECT_TRUE(g.sampling.want_logprobs);
  EXPECT_EQ(g.max_tokens, 7);
  EXPECT_EQ(g.stop, (std::vector<std::string>{"zzz", "yyy"}));
  json j = json::parse(r.body);
  const json& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 7u);
  EXPECT_EQ(content[0]["token"], "H");
  EXPECT_FLOAT_EQ(content[1]["logprob"].get<float>(), -0.5f);
  EXPECT_EQ(content[0]["bytes"], json::array({72}));
}

TEST_F(HttpServerTest, StopStringEndsTheAnswerBeforeIt) {
  Reply r = Post(port_, "/v1/completions", {{"prompt", "a"}, {"stop", " sent"}});
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["choices"][0]["text"], "Hello! You");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
}

void ExpectError(const Reply& r, int status, const std::string& param, const std::string& code) {
  EXPECT_EQ(r.status, status) << r.body;
  json j = json::parse(r.body, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.body;
  ASSERT_TRUE(j.contains("error")) << r.body;
  const json& e = j["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty());
  EXPECT_TRUE(e["type"].is_string());
  if (param.empty()) {
    EXPECT_TRUE(e["param"].is_null()) << r.body;
  } else {
    EXPECT_EQ(e["param"], param) << r.body;
  }
  EXPECT_EQ(e["code"], code) << r.body;
}

TEST_F(HttpServerTest, BadRequestsName400AndTheParameter) {
  ExpectError(Fetch(port_, http::verb::post, "/v1/chat/completions", "{\"messages\": ["), 400, "",
              "invalid_json");
  ExpectError(Fetch(port_, http::verb::post, "/v1/chat/completions", "[1, 2]"), 400, "",
              "invalid_json");
  ExpectError(Fetch(port_, http::verb::post, "/v1/chat/completions",
                    std::string(10000, '[') + std::string(10000, ']')),
              400, "", "invalid_json");
  ExpectError(Post(port_, "/v1/chat/completions", {{"model", "tandem-test"}}), 400, "messages",
              "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("x", {{"temperature", 5}})), 400,
              "temperature", "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("x", {{"temperature", "hot"}})), 400,
              "temperature", "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("x", {{"n", 2}})), 400, "n",
              "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions",
                   ChatBody("x", {{"logprobs", true}, {"top_logprobs", 3}})),
              400, "top_logprobs", "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("x", {{"max_tokens", 0}})), 400,
              "max_tokens", "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("x", {{"stop", 3}})), 400, "stop",
              "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions",
                   {{"messages", {{{"role", "user"}, {"content", 7}}}}}),
              400, "messages[0].content", "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions",
                   {{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}),
              400, "messages[0].role", "invalid_value");
  ExpectError(Post(port_, "/v1/chat/completions",
                   {{"messages", {{{"role", "tool"}, {"content", "x"}}}}}),
              400, "messages", "invalid_value");
  ExpectError(Post(port_, "/v1/completions", {{"prompt", "x"}, {"logprobs", 2}}), 400, "logprobs",
              "invalid_value");
  ExpectError(Post(port_, "/v1/completions", {{"prompt", {"a", "b"}}}), 400, "prompt",
              "invalid_value");
  ExpectError(Post(port_, "/v1/completions", {{"prompt", {1, 9999}}}), 400, "prompt",
              "invalid_value");
  ExpectError(Fetch(port_, http::verb::get, "/v1/chat/completions"), 405, "",
              "method_not_allowed");
  ExpectError(Fetch(port_, http::verb::get, "/v1/nothing"), 404, "", "not_found");
}

TEST_F(HttpServerTest, UnknownModelIs404) {
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("x", {{"model", "gpt-4o"}})), 404,
              "model", "model_not_found");
  ExpectError(Fetch(port_, http::verb::get, "/v1/models/gpt-4o"), 404, "model", "model_not_found");
}

TEST_F(HttpServerTest, PromptLongerThanTheContextIs400WithTheLimit) {
  Reply r = Post(port_, "/v1/completions", {{"prompt", std::string(5000, 'a')}});
  ExpectError(r, 400, "prompt", "context_length_exceeded");
  EXPECT_NE(r.body.find("4096"), std::string::npos) << r.body;
  Reply m = Post(port_, "/v1/completions", {{"prompt", std::string(4000, 'a')}, {"max_tokens", 500}});
  ExpectError(m, 400, "max_tokens", "context_length_exceeded");
  // Without max_tokens the answer is clamped to what the context leaves.
  Reply ok = Post(port_, "/v1/completions", {{"prompt", std::string(4093, 'a')}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(backend_.last_request().max_tokens, 2);
}

TEST_F(HttpServerTest, FullQueueIs429WithRetryAfter) {
  backend_.set_queue_length(10000);
  Reply r = Post(port_, "/v1/chat/completions", ChatBody("x"));
  ExpectError(r, 429, "", "queue_full");
  EXPECT_EQ(r.message[http::field::retry_after], "1");
  backend_.set_queue_length(0);
  EXPECT_EQ(Post(port_, "/v1/chat/completions", ChatBody("x")).status, 200);
}

TEST_F(HttpServerTest, NoPipelineIs503AndHealthSaysSo) {
  EXPECT_EQ(Fetch(port_, http::verb::get, "/health").status, 200);
  backend_.set_ready(false);
  EXPECT_EQ(Fetch(port_, http::verb::get, "/health").status, 503);
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("x")), 503, "", "no_pipeline");
  backend_.set_ready(true);
  // The engine may still find no pipeline after the check.
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("FAIL_EARLY", {{"stream", true}})), 503,
              "", "no_pipeline");
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("FAIL_EARLY")), 503, "", "no_pipeline");
}

TEST_F(HttpServerTest, FailureMidStreamIsAnErrorEventThenDone) {
  Reply r = Post(port_, "/v1/chat/completions", ChatBody("FAIL_LATE", {{"stream", true}}));
  ASSERT_EQ(r.status, 200) << r.body;
  std::vector<json> events = SseEvents(r.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json& error = events[events.size() - 2];
  ASSERT_TRUE(error.contains("error")) << error;
  EXPECT_EQ(error["error"]["message"], "stage beta went down");
  Reply j = Post(port_, "/v1/chat/completions", ChatBody("FAIL_LATE"));
  ExpectError(j, 500, "", "generation_failed");
}

TEST_F(HttpServerTest, ApiKeyIsRequiredExceptForHealthAndThePage) {
  HttpServerOptions options;
  options.api_key = "s3cret";
  StartServer(options);
  ExpectError(Post(port_, "/v1/chat/completions", ChatBody("x")), 401, "", "invalid_api_key");
  Reply wrong = Post(port_, "/v1/chat/completions", ChatBody("x"), "s3cres");
  ExpectError(wrong, 401, "", "invalid_api_key");
  EXPECT_EQ(wrong.message[http::field::www_authenticate], "Bearer");
  ExpectError(Fetch(port_, http::verb::get, "/v1/models"), 401, "", "invalid_api_key");
  ExpectError(Fetch(port_, http::verb::get, "/metrics"), 401, "", "invalid_api_key");
  EXPECT_EQ(Post(port_, "/v1/chat/completions", ChatBody("x"), "s3cret").status, 200);
  EXPECT_EQ(Fetch(port_, http::verb::get, "/v1/models", "", "s3cret").status, 200);
  EXPECT_EQ(Fetch(port_, http::verb::get, "/health").status, 200);
  EXPECT_EQ(Fetch(port_, http::verb::get, "/").status, 200);
}

TEST_F(HttpServerTest, ModelsClusterAndDashboard) {
  Reply models = Fetch(port_, http::verb::get, "/v1/models");
  ASSERT_EQ(models.status, 200);
  json m = json::parse(models.body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "tandem-test");
  EXPECT_EQ(m["data"][0]["object"], "model");
  EXPECT_EQ(Fetch(port_, http::verb::get, "/v1/models/tandem-test").status, 200);

  Reply cluster = Fetch(port_, http::verb::get, "/v1/cluster");
  ASSERT_EQ(cluster.status, 200);
  json c = json::parse(cluster.body);
  EXPECT_EQ(c["state"], "ready");
  ASSERT_EQ(c["nodes"].size(), 2u);
  EXPECT_EQ(c["nodes"][1]["name"], "beta");

  Reply page = Fetch(port_, http::verb::get, "/");
  ASSERT_EQ(page.status, 200);
  EXPECT_EQ(page.message[http::field::content_type], "text/html; charset=utf-8");
  EXPECT_NE(page.body.find("<html"), std::string::npos);
  // No external assets: nothing is fetched from another origin.
  EXPECT_EQ(page.body.find("src=\"http"), std::string::npos);
  EXPECT_EQ(page.body.find("href=\"http"), std::string::npos);
}

TEST_F(HttpServerTest, HugeBodyIs413AndHugeHeaderIs431) {
  ExpectError(Fetch(port_, http::verb::post, "/v1/completions", std::string(5u << 20, ' ')), 413,
              "", "body_too_large");
  ExpectError(Fetch(port_, http::verb::get, "/v1/models", "", "",
                    {{"X-Padding", std::string(20000, 'p')}}),
              431, "", "header_too_large");
  // The server is still there for everyone else.
  EXPECT_EQ(Post(port_, "/v1/chat/completions", ChatBody("x")).status, 200);
}

// Reads until the peer closes; false if it stays open for 10 s.
bool ClosedByPeer(tcp::socket& socket) {
  struct timeval tv = {10, 0};
  setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[4096];
  while (true) {
    const ssize_t n = ::recv(socket.native_handle(), buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

TEST_F(HttpServerTest, SlowClientIsDroppedAtTheIdleTimeout) {
  HttpServerOptions options;
  options.idle_timeout_s = 1;
  StartServer(options);
  net::io_context ioc;
  tcp::socket slow(ioc);
  slow.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
  const std::string partial = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n";
  net::write(slow, net::buffer(partial));
  EXPECT_TRUE(ClosedByPeer(slow));
  // An idle keep-alive connection is closed as well.
  tcp::socket idle(ioc);
  idle.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
  EXPECT_TRUE(ClosedByPeer(idle));
  EXPECT_EQ(Post(port_, "/v1/chat/completions", ChatBody("x")).status, 200);
}

TEST_F(HttpServerTest, ConnectionsBeyondTheLimitGet503) {
  HttpServerOptions options;
  options.max_connections = 2;
  StartServer(options);
  net::io_context ioc;
  std::vector<std::unique_ptr<tcp::socket>> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(std::make_unique<tcp::socket>(ioc));
    held.back()->connect(
        tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
  }
  ASSERT_TRUE(WaitFor([&] {
    // The two sessions exist once the server counted them.
    Reply r;
    try {
      r = Fetch(port_, http::verb::get, "/health");
    } catch (const std::exception&) {
      return false;
    }
    return r.status == 503;
  }));
  held.clear();
  EXPECT_TRUE(WaitFor([&] { return Fetch(port_, http::verb::get, "/health").status == 200; }));
}

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
  beast::flat_buffer buffer;
  for (int i = 0; i < 3; ++i) {
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "x");
    req.body() = ChatBody("again", {{"stream", i % 2 == 1}}).dump();
    req.prepare_payload();
    http::write(stream, req);
    http::response<http::string_body> res;
    http::read(stream, buffer, res);
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_TRUE(res.keep_alive());
  }
}

TEST_F(HttpServerTest, PipelinedRequestAfterAStreamIsServed) {
  // The second request arrives while the first still streams: the server
  // must hold it and answer it once the stream ends.
  backend_.set_token_delay_ms(5);
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
  for (bool streamed : {true, false}) {
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "x");
    req.body() = ChatBody("pipelined", {{"stream", streamed}}).dump();
    req.prepare_payload();
    http::write(stream, req);
  }
  beast::flat_buffer buffer;
  for (int i = 0; i < 2; ++i) {
    http::response<http::string_body> res;
    beast::error_code ec;
    stream.expires_after(std::chrono::seconds(10));  // a hang fails the test instead
    http::async_read(stream, buffer, res, [&](beast::error_code e, size_t) { ec = e; });
    ioc.restart();
    ioc.run();
    ASSERT_FALSE(ec) << "response " << i << ": " << ec.message();
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_NE(res.body().find(i == 0 ? "data: [DONE]" : "The end."), std::string::npos)
        << res.body();
  }
}

TEST_F(HttpServerTest, HundredConcurrentStreamsAllComplete) {
  constexpr int kClients = 100;
  backend_.set_token_delay_ms(2);
  std::vector<std::thread> clients;
  std::vector<std::string> texts(kClients);
  std::vector<int> statuses(kClients, 0);
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      try {
        Reply r = Post(port_, "/v1/chat/completions",
                       ChatBody("client " + std::to_string(i), {{"stream", true}}));
        statuses[i] = r.status;
        for (const json& e : SseEvents(r.body)) {
          if (e.is_object() && !e["choices"].empty() &&
              e["choices"][0]["delta"].contains("content")) {
            texts[i] += e["choices"][0]["delta"]["content"].get<std::string>();
          }
        }
      } catch (const std::exception& e) {
        texts[i] = e.what();
      }
    });
  }
  for (std::thread& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(statuses[i], 200) << i;
    EXPECT_EQ(texts[i], FakeHttpBackend::Answer(
                            PromptTokens(ChatBody("client " + std::to_string(i)))))
        << i;
  }
}

TEST_F(HttpServerTest, ClientThatDisconnectsCancelsItsRequest) {
  backend_.set_token_delay_ms(200);
  for (bool stream : {true, false}) {
    const uint64_t before = backend_.submitted();
    {
      net::io_context ioc;
      tcp::socket socket(ioc);
      socket.connect(
          tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
      const std::string body = ChatBody("bye", {{"stream", stream}}).dump();
      const std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Type: application/json\r\nContent-Length: " +
                                  std::to_string(body.size()) + "\r\n\r\n" + body;
      net::write(socket, net::buffer(request));
      ASSERT_TRUE(WaitFor([&] { return backend_.submitted() > before; }));
      if (stream) {
        char first[64];
        socket.read_some(net::buffer(first));  // the response has started
      }
    }  // closed here, mid-answer
    const uint64_t id = backend_.submitted();
    EXPECT_TRUE(WaitFor([&] { return backend_.cancelled().count(id) == 1; })) << stream;
  }
  EXPECT_TRUE(WaitFor([&] { return backend_.active() == 0; }));
  backend_.set_token_delay_ms(1);
  EXPECT_EQ(Post(port_, "/v1/chat/completions", ChatBody("x")).status, 200);
}

TEST_F(HttpServerTest, StoppingTheServerCancelsRunningRequests) {
  backend_.set_token_delay_ms(200);
  net::io_context ioc;
  tcp::socket socket(ioc);
  socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
  const std::string body = ChatBody("x", {{"stream", true}}).dump();
  const std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;
  net::write(socket, net::buffer(request));
  ASSERT_TRUE(WaitFor([&] { return backend_.active() == 1; }));
  const uint64_t id = backend_.submitted();
  server_.reset();
  EXPECT_EQ(backend_.cancelled().count(id), 1u);
  backend_.set_token_delay_ms(1);
}

std::string RunShell(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  pclose(pipe);
  return out;
}

TEST_F(HttpServerTest, CurlSeesRawSseFraming) {
  const std::string body = ChatBody("curl", {{"stream", true}}).dump();
  const std::string dir = ::testing::TempDir();
  { std::ofstream(dir + "/curl_body.json") << body; }
  const std::string out = RunShell("curl -sS -N -H 'Content-Type: application/json' --data-binary @" +
                              dir + "/curl_body.json http://127.0.0.1:" + std::to_string(port_) +
                              "/v1/chat/completions");
  ASSERT_FALSE(out.empty());
  // Every event is exactly "data: <json>\n\n", the last one "data: [DONE]\n\n".
  const std::string done = "data: [DONE]\n\n";
  ASSERT_GE(out.size(), done.size());
  EXPECT_EQ(out.substr(out.size() - done.size()), done);
  size_t pos = 0, events = 0;
  while (pos < out.size()) {
    ASSERT_EQ(out.compare(pos, 6, "data: "), 0) << out.substr(pos, 40);
    const size_t end = out.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos);
    const std::string data = out.substr(pos + 6, end - pos - 6);
    EXPECT_EQ(data.find('\n'), std::string::npos);
    if (data != "[DONE]") {
      EXPECT_FALSE(json::parse(data, nullptr, false).is_discarded()) << data;
    }
    pos = end + 2;
    ++events;
  }
  EXPECT_GE(events, 3u);
}

TEST_F(HttpServerTest, MetricsCountRequestsAndPassPromtool) {
  ASSERT_EQ(Post(port_, "/v1/chat/completions", ChatBody("x", {{"stream", true}})).status, 200);
  ASSERT_EQ(Post(port_, "/v1/completions", {{"prompt", "a"}, {"max_tokens", 2}}).status, 200);
  ASSERT_EQ(Post(port_, "/v1/chat/completions", ChatBody("x", {{"n", 3}})).status, 400);
  Reply r = Fetch(port_, http::verb::get, "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.message[http::field::content_type], "text/plain; version=0.0.4; charset=utf-8");
  const std::string& m = r.body;
  EXPECT_NE(m.find("tandem_requests_total{endpoint=\"chat\",outcome=\"stop\"} 1\n"), std::string::npos) << m;
  EXPECT_NE(m.find("tandem_requests_total{endpoint=\"completions\",outcome=\"length\"} 1\n"),
            std::string::npos);
  EXPECT_NE(m.find("tandem_requests_total{endpoint=\"chat\",outcome=\"invalid\"} 1\n"),
            std::string::npos);
  const int chat_generated =
      static_cast<int>(FakeHttpBackend::AnswerTokens(PromptTokens(ChatBody("x"))).size());
  EXPECT_NE(m.find("tandem_generation_tokens_total " + std::to_string(chat_generated + 2) + "\n"),
            std::string::npos);
  EXPECT_NE(m.find("tandem_time_to_first_token_seconds_count 2\n"), std::string::npos);
  EXPECT_NE(m.find("tandem_inter_token_latency_seconds_count " +
                   std::to_string(chat_generated - 1 + 1) + "\n"),
            std::string::npos);
  EXPECT_NE(m.find("tandem_stage_kv_used_ratio{stage=\"1\",node=\"beta\"}"), std::string::npos);
  EXPECT_NE(m.find("tandem_link_wire_bytes_total{from=\"alpha\",to=\"beta\",codec=\"shuffle-lz4\"}"),
            std::string::npos);
  EXPECT_NE(m.find("tandem_stage_busy_ratio{stage=\"0\",node=\"alpha\"} 0.4"), std::string::npos);
  EXPECT_NE(m.find("tandem_queue_waiting_requests 0\n"), std::string::npos);

  const std::string file = ::testing::TempDir() + "/metrics.txt";
  { std::ofstream(file) << m; }
  const std::string out = RunShell("promtool check metrics < " + file + " 2>&1; echo rc=$?");
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
}

}  // namespace
}  // namespace tandem
