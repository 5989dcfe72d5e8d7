#include "coordinator/http/http_session.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/cluster_status_format.h"
#include "coordinator/http/dashboard_page.h"
#include "core/logging.h"

namespace tandem {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
using nlohmann::json;

namespace {

// Watch reads stop once this much of a pipelined next request is buffered.
constexpr size_t kWatchChunk = 4096;
// How long a connection closed after an error may still send input.
constexpr int kLingerSeconds = 2;

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  }
  return diff == 0;
}

std::string OutcomeForStatus(int status) {
  if (status == 401) return "unauthorized";
  if (status == 429) return "rejected";
  if (status == 503) return "unavailable";
  if (status >= 500) return "error";
  return "invalid";
}

// An engine error that ended a request before any output, as an HTTP error.
// The engine reports these as text; its stable prefixes tell the kinds apart.
ApiError EngineError(const std::string& message) {
  if (absl::StartsWith(message, "no pipeline") || absl::StartsWith(message, "the pipeline") ||
      absl::StartsWith(message, "the coordinator is shutting down")) {
    return ApiError::Make(503, "no_pipeline", message);
  }
  if (absl::StartsWith(message, "prompt (") || absl::StartsWith(message, "the prompt")) {
    return ApiError::Make(400, "context_length_exceeded", message);
  }
  return ApiError::Make(500, "generation_failed", message.empty() ? "generation failed" : message);
}

// The engine's output for one request, posted to its session's strand.
class SessionSink final : public GenerationSink {
 public:
  SessionSink(std::weak_ptr<HttpSession> session, std::shared_ptr<HttpServerState> server,
              beast::tcp_stream::executor_type strand, uint64_t serial)
      : session_(std::move(session)), server_(std::move(server)), strand_(std::move(strand)),
        serial_(serial) {}

  void Send(v1::GenerateResponse response) override {
    std::lock_guard<std::mutex> lock(server_->gate_mu);
    if (!server_->open) return;
    std::shared_ptr<HttpSession> session = session_.lock();
    if (session == nullptr) return;
    net::post(strand_, [session = std::move(session), serial = serial_,
                        response = std::move(response)]() mutable {
      session->OnOutput(serial, std::move(response));
    });
  }

 private:
  std::weak_ptr<HttpSession> session_;
  std::shared_ptr<HttpServerState> server_;
  // The session's executor: a strand (the listener made the socket on one).
  beast::tcp_stream::executor_type strand_;
  uint64_t serial_;
};

}  // namespace

HttpSession::HttpSession(net::ip::tcp::socket socket, std::shared_ptr<HttpServerState> server)
    : stream_(std::move(socket)), server_(std::move(server)) {
  server_->metrics.ConnectionOpened();
}

HttpSession::~HttpSession() {
  if (gen_.has_value()) {
    server_->backend->Cancel(gen_->request_id);
    server_->metrics.CountRequest(gen_->endpoint, "cancelled");
  }
  server_->metrics.ConnectionClosed();
  server_->connections.fetch_sub(1);
}

void HttpSession::Start() {
  net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->ReadHeader(); });
}

HttpSession::Response HttpSession::MakeResponse(http::status status, std::string content_type,
                                                std::string body) const {
  Response res{status, version_};
  res.set(http::field::server, "tandem");
  res.set(http::field::content_type, content_type);
  res.set(http::field::access_control_allow_origin, "*");
  res.keep_alive(keep_alive_);
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

void HttpSession::ReadHeader() {
  if (closed_) return;
  parser_.emplace();
  parser_->header_limit(static_cast<std::uint32_t>(server_->options.max_header_bytes));
  parser_->body_limit(server_->options.max_body_bytes);
  stream_.expires_after(std::chrono::seconds(server_->options.idle_timeout_s));
  http::async_read_header(stream_, buffer_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                            self->OnHeader(ec);
                          });
}

void HttpSession::RespondBodyTooLarge() {
  keep_alive_ = false;
  RespondError(ApiError::Make(413, "body_too_large", absl::StrCat("the request body is larger than ",
                                                                  server_->options.max_body_bytes,
                                                                  " bytes")),
               /*close=*/true);
}

void HttpSession::OnHeader(beast::error_code ec) {
  if (closed_) return;
  if (ec == http::error::header_limit) {
    keep_alive_ = false;
    RespondError(ApiError::Make(431, "header_too_large", absl::StrCat("the request's header is larger than ",
                                          server_->options.max_header_bytes, " bytes")),
                 /*close=*/true);
    return;
  }
  if (ec == http::error::body_limit) {
    RespondBodyTooLarge();
    return;
  }
  if (ec) {
    // The client closed, timed out, or sent something that is not HTTP.
    if (ec != http::error::end_of_stream && ec != net::error::eof &&
        ec != beast::error::timeout && ec != net::error::operation_aborted &&
        ec != net::error::connection_reset) {
      keep_alive_ = false;
      RespondError(ApiError::Make(400, "bad_http", absl::StrCat("malformed HTTP request: ", ec.message())),
                   /*close=*/true);
      return;
    }
    Close();
    return;
  }
  const auto& header = parser_->get();
  version_ = header.version();
  keep_alive_ = header.keep_alive();
  if (beast::iequals(header[http::field::expect], "100-continue")) {
    auto res = std::make_shared<http::response<http::empty_body>>(http::status::continue_,
                                                                   version_);
    writing_ = true;
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code ec, size_t) {
                        self->writing_ = false;
                        if (ec) return self->Close();
                        self->ReadBody();
                      });
    return;
  }
  ReadBody();
}

void HttpSession::ReadBody() {
  if (closed_) return;
  stream_.expires_after(std::chrono::seconds(server_->options.idle_timeout_s));
  http::async_read(stream_, buffer_, *parser_,
                   [self = shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
}

void HttpSession::OnBody(beast::error_code ec) {
  if (closed_) return;
  if (ec == http::error::body_limit) {
    RespondBodyTooLarge();
    return;
  }
  if (ec) {
    if (ec == beast::error::timeout || ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::operation_aborted || ec == net::error::connection_reset) {
      Close();
      return;
    }
    keep_alive_ = false;
    RespondError(ApiError::Make(400, "bad_http", absl::StrCat("malformed HTTP request: ", ec.message())),
                 /*close=*/true);
    return;
  }
  Request request = parser_->release();
  parser_.reset();
  Handle(request);
}

void HttpSession::Handle(const Request& request) {
  const std::string_view target(request.target().data(), request.target().size());
  const std::string path(target.substr(0, target.find('?')));
  const http::verb method = request.method();

  if (method == http::verb::options) {
    Response res = MakeResponse(http::status::no_content, "text/plain", "");
    res.set(http::field::access_control_allow_methods, "GET, POST, OPTIONS");
    res.set(http::field::access_control_allow_headers, "Authorization, Content-Type");
    res.set(http::field::access_control_max_age, "86400");
    return Respond(std::move(res));
  }
  auto method_not_allowed = [&](const char* allowed) {
    RespondError(ApiError::Make(405, "method_not_allowed", absl::StrCat(std::string(request.method_string()), " ", path,
                                          " is not supported; use ", allowed)));
  };
  const bool get = method == http::verb::get || method == http::verb::head;

  if (path == "/" || path == "/dashboard") {
    if (!get) return method_not_allowed("GET");
    Response res = MakeResponse(http::status::ok, "text/html; charset=utf-8",
                                std::string(DashboardHtml()));
    res.set(http::field::cache_control, "no-cache");
    return Respond(std::move(res));
  }
  if (path == "/health") {
    if (!get) return method_not_allowed("GET");
    const bool ready = server_->backend->Ready();
    json body = {{"status", ready ? "ok" : "unavailable"}};
    return Respond(MakeResponse(ready ? http::status::ok : http::status::service_unavailable,
                                "application/json", DumpJson(body)));
  }

  const bool api = absl::StartsWith(path, "/v1/") || path == "/metrics";
  if (!api) {
    return RespondError(ApiError::Make(404, "not_found", absl::StrCat("no such path: ", path)));
  }
  std::string endpoint_name;
  if (path == "/v1/chat/completions") endpoint_name = "chat";
  if (path == "/v1/completions") endpoint_name = "completions";
  if (!server_->options.api_key.empty()) {
    const auto auth_field = request[http::field::authorization];
    const std::string_view auth(auth_field.data(), auth_field.size());
    const std::string_view prefix = "Bearer ";
    const bool ok = auth.size() > prefix.size() &&
                    beast::iequals(auth_field.substr(0, prefix.size()), "Bearer ") &&
                    ConstantTimeEquals(auth.substr(prefix.size()), server_->options.api_key);
    if (!ok) {
      if (!endpoint_name.empty()) server_->metrics.CountRequest(endpoint_name, "unauthorized");
      return RespondError(ApiError::Make(401, "invalid_api_key", auth.empty()
                                          ? "an API key is required: send Authorization: "
                                            "Bearer KEY"
                                          : "the API key is not valid"));
    }
  }

  if (path == "/v1/chat/completions" || path == "/v1/completions") {
    if (method != http::verb::post) return method_not_allowed("POST");
    return HandleCompletion(request, path == "/v1/completions" ? ApiEndpoint::kCompletions
                                                               : ApiEndpoint::kChatCompletions);
  }
  const std::string model = server_->backend->ModelName();
  auto model_json = [&] {
    return json{{"id", model},
                {"object", "model"},
                {"created", server_->started_unix},
                {"owned_by", "tandem"},
                {"max_model_len", server_->backend->MaxContextTokens()}};
  };
  if (path == "/v1/models") {
    if (!get) return method_not_allowed("GET");
    json body = {{"object", "list"}, {"data", json::array({model_json()})}};
    return Respond(MakeResponse(http::status::ok, "application/json", DumpJson(body)));
  }
  if (absl::StartsWith(path, "/v1/models/")) {
    if (!get) return method_not_allowed("GET");
    if (path.substr(std::string_view("/v1/models/").size()) != model) {
      return RespondError(ApiError::Make(404, "model_not_found", absl::StrCat("the model '", path.substr(11),
                                                   "' does not exist; this server serves '",
                                                   model, "'")).WithParam("model"));
    }
    return Respond(MakeResponse(http::status::ok, "application/json", DumpJson(model_json())));
  }
  if (path == "/v1/cluster") {
    if (!get) return method_not_allowed("GET");
    return Respond(MakeResponse(http::status::ok, "application/json",
                                DumpJson(ClusterStatusToJson(server_->backend->ClusterStatus()))));
  }
  if (path == "/metrics") {
    if (!get) return method_not_allowed("GET");
    return Respond(MakeResponse(http::status::ok, "text/plain; version=0.0.4; charset=utf-8",
                                server_->metrics.Render(server_->backend->ClusterStatus())));
  }
  RespondError(ApiError::Make(404, "not_found", absl::StrCat("no such path: ", path)));
}

void HttpSession::HandleCompletion(const Request& request, ApiEndpoint endpoint) {
  const Clock::time_point arrived = Clock::now();
  const std::string endpoint_name = endpoint == ApiEndpoint::kChatCompletions ? "chat"
                                                                                : "completions";
  HttpBackend& backend = *server_->backend;
  auto fail = [&](const ApiError& error) {
    server_->metrics.CountRequest(endpoint_name, OutcomeForStatus(error.status));
    RespondError(error);
  };

  auto parsed = ParseCompletionRequest(request.body(), endpoint);
  if (auto* error = std::get_if<ApiError>(&parsed)) return fail(*error);
  CompletionParams params = std::get<CompletionParams>(std::move(parsed));

  const std::string model = backend.ModelName();
  if (!params.model.empty() && params.model != model) {
    return fail(ApiError::Make(404, "model_not_found", absl::StrCat("the model '", params.model,
                                         "' does not exist; this server serves '", model, "'")).WithParam("model"));
  }
  if (!backend.Ready()) {
    return fail(ApiError::Make(503, "no_pipeline", absl::StrCat("no complete pipeline is serving (cluster state: ",
                                         backend.ClusterStatus().state(), ")")));
  }
  if (backend.QueueLength() >= server_->options.max_queue) {
    return fail(ApiError::Make(429, "queue_full", absl::StrCat("the request queue is full (",
                                         server_->options.max_queue,
                                         " waiting); retry later")).WithRetryAfter(server_->options.retry_after_s));
  }

  GenerationRequest gen_request;
  if (endpoint == ApiEndpoint::kChatCompletions) {
    StatusOr<std::vector<int32_t>> ids = backend.EncodeChat(params.messages);
    if (!ids.ok()) return fail(ApiError::BadParam("messages", std::string(ids.status().message())));
    gen_request.prompt = std::move(ids).value();
  } else if (params.prompt_is_ids) {
    for (int32_t id : params.prompt_ids) {
      if (id >= backend.VocabSize()) {
        return fail(ApiError::BadParam(
            "prompt", absl::StrCat("token id ", id, " is outside the vocabulary [0, ",
                                   backend.VocabSize(), ")")));
      }
    }
    gen_request.prompt = std::move(params.prompt_ids);
  } else {
    StatusOr<std::vector<int32_t>> ids = backend.EncodePrompt(params.prompt);
    if (!ids.ok()) return fail(ApiError::BadParam("prompt", std::string(ids.status().message())));
    gen_request.prompt = std::move(ids).value();
  }
  const char* prompt_param = endpoint == ApiEndpoint::kChatCompletions ? "messages" : "prompt";
  if (gen_request.prompt.empty()) {
    return fail(ApiError::BadParam(prompt_param, "the prompt has no tokens"));
  }
  const int prompt_tokens = static_cast<int>(gen_request.prompt.size());
  const int context = backend.MaxContextTokens();
  int max_tokens = params.max_tokens.value_or(backend.DefaultMaxTokens());
  if (context > 0) {
    if (prompt_tokens >= context ||
        (params.max_tokens.has_value() && prompt_tokens + *params.max_tokens > context)) {
      return fail(ApiError::Make(400, "context_length_exceeded", absl::StrCat(
                       "This model's maximum context length is ", context,
                       " tokens. However, you requested ",
                       prompt_tokens + (params.max_tokens ? *params.max_tokens : 0),
                       " tokens (", prompt_tokens, " in the prompt, ",
                       params.max_tokens ? *params.max_tokens : 0,
                       " in the completion). Please shorten the prompt or max_tokens.")).WithParam(params.max_tokens && prompt_tokens < context ? "max_tokens"
                                                                         : prompt_param));
    }
    max_tokens = std::min(max_tokens, context - prompt_tokens);
  }
  gen_request.max_tokens = std::max(max_tokens, 1);
  gen_request.sampling = params.sampling;
  gen_request.stop = std::move(params.stop);

  const uint64_t serial = next_serial_++;
  const uint64_t n = server_->next_response_id.fetch_add(1);
  const std::string id = absl::StrFormat(
      "%s-%016x%08x", endpoint == ApiEndpoint::kChatCompletions ? "chatcmpl" : "cmpl",
      server_->id_prefix, n);
  Generation gen;
  gen.serial = serial;
  gen.stream = params.stream;
  gen.endpoint = endpoint_name;
  gen.arrived = arrived;
  gen.formatter.emplace(CompletionFormatterOptions{
      .endpoint = endpoint,
      .id = id,
      .created = static_cast<int64_t>(std::time(nullptr)),
      .model = model,
      .logprobs = params.logprobs,
      .include_usage = params.stream && params.include_usage,
      .token_bytes = [backend = &backend](int32_t t) { return backend->TokenBytes(t); }});
  auto sink = std::make_shared<SessionSink>(weak_from_this(), server_, stream_.get_executor(),
                                            serial);
  server_->metrics.AddPromptTokens(prompt_tokens);
  gen.request_id = backend.Submit(std::move(gen_request), std::move(sink));
  gen_ = std::move(gen);
  // Generation may take long: no deadline until something is written.
  stream_.expires_never();
  Watch();
}

void HttpSession::OnOutput(uint64_t serial, v1::GenerateResponse r) {
  if (closed_ || !gen_.has_value() || gen_->serial != serial) return;
  Generation& g = *gen_;
  const int n = r.token_ids_size();
  if (n > 0) {
    const Clock::time_point now = Clock::now();
    if (!g.got_token) {
      server_->metrics.ObserveTimeToFirstToken(std::chrono::duration<double>(now - g.arrived).count());
      for (int i = 1; i < n; ++i) server_->metrics.ObserveInterTokenLatency(0);
    } else {
      const double each = std::chrono::duration<double>(now - g.last_token).count() / n;
      for (int i = 0; i < n; ++i) server_->metrics.ObserveInterTokenLatency(each);
    }
    g.got_token = true;
    g.last_token = now;
    server_->metrics.AddGeneratedTokens(n);
  }
  const bool last = !r.finish_reason().empty();
  const bool failed = r.finish_reason() == "error";
  const bool before_output = !g.formatter->produced_output() && r.text().empty() && n == 0;

  if (failed && before_output && !g.header_sent) {
    // Nothing went out yet: a proper HTTP error.
    const ApiError error = EngineError(r.error());
    server_->metrics.CountRequest(g.endpoint, error.status == 503 ? "unavailable" : "error");
    gen_.reset();
    return RespondError(error);
  }
  if (!g.stream) {
    g.formatter->Accumulate(r);
    if (!last) return;
    if (failed) {
      // Part of the answer was generated, then the pipeline failed.
      ApiError error = EngineError(r.error());
      error.status = error.status == 400 ? 500 : error.status;
      server_->metrics.CountRequest(g.endpoint, "error");
      gen_.reset();
      return RespondError(error);
    }
    json body = g.formatter->Final();
    server_->metrics.CountRequest(g.endpoint, g.formatter->finish_reason());
    gen_.reset();
    return Respond(MakeResponse(http::status::ok, "application/json", DumpJson(body)));
  }
  g.pending += g.formatter->StreamEvents(r);
  if (last) g.done = true;
  if (g.pending.size() > server_->options.max_stream_buffer_bytes) {
    spdlog::warn("http: a client reads its stream too slowly ({} bytes waiting); dropping it",
                 g.pending.size());
    Close();
    return;
  }
  PumpStream();
}

void HttpSession::PumpStream() {
  if (closed_ || writing_ || !gen_.has_value()) return;
  Generation& g = *gen_;
  const auto timeout = std::chrono::seconds(server_->options.idle_timeout_s);
  if (!g.header_sent) {
    auto res = std::make_shared<http::response<http::empty_body>>(http::status::ok, version_);
    res->set(http::field::server, "tandem");
    res->set(http::field::content_type, "text/event-stream; charset=utf-8");
    res->set(http::field::cache_control, "no-cache");
    res->set(http::field::access_control_allow_origin, "*");
    res->set("X-Accel-Buffering", "no");
    res->keep_alive(keep_alive_);
    res->chunked(true);
    auto serializer = std::make_shared<http::response_serializer<http::empty_body>>(*res);
    writing_ = true;
    stream_.expires_after(timeout);
    http::async_write_header(
        stream_, *serializer,
        [self = shared_from_this(), res, serializer](beast::error_code ec, size_t) {
          self->writing_ = false;
          if (ec) return self->Close();
          self->stream_.expires_never();
          if (self->gen_.has_value()) self->gen_->header_sent = true;
          self->PumpStream();
        });
    return;
  }
  if (!g.pending.empty()) {
    g.inflight.swap(g.pending);
    g.pending.clear();
    writing_ = true;
    stream_.expires_after(timeout);
    net::async_write(stream_, http::make_chunk(net::buffer(g.inflight)),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->writing_ = false;
                       if (ec) return self->Close();
                       self->stream_.expires_never();
                       self->PumpStream();
                     });
    return;
  }
  if (g.done) {
    const std::string outcome =
        g.formatter->finish_reason().empty() ? "error" : g.formatter->finish_reason();
    writing_ = true;
    stream_.expires_after(timeout);
    net::async_write(stream_, http::make_chunk_last(),
                     [self = shared_from_this(), outcome](beast::error_code ec, size_t) {
                       self->writing_ = false;
                       if (ec) return self->Close();
                       if (!self->gen_.has_value()) return;
                       self->server_->metrics.CountRequest(self->gen_->endpoint, outcome);
                       self->gen_.reset();
                       self->AfterResponse();
                     });
  }
}

void HttpSession::Watch() {
  if (closed_ || watching_ || buffer_.size() >= server_->options.max_header_bytes) return;
  watching_ = true;
  stream_.async_read_some(buffer_.prepare(kWatchChunk),
                          [self = shared_from_this()](beast::error_code ec, size_t bytes) {
                            self->OnWatch(ec, bytes);
                          });
}

void HttpSession::OnWatch(beast::error_code ec, size_t bytes) {
  watching_ = false;
  if (closed_) return;
  if (lingering_) {
    if (ec) return Close();
    buffer_.clear();
    return LingerAndClose();
  }
  if (!ec) buffer_.commit(bytes);
  if (read_after_watch_) {
    // The response went out while this read was pending, and AfterResponse
    // cancelled it: whatever arrived is the start of the next request.
    read_after_watch_ = false;
    if (ec && ec != net::error::operation_aborted) return Close();
    return ReadHeader();
  }
  if (ec) {
    // The client went away (or timed out): its request is cancelled in Close.
    Close();
    return;
  }
  if (gen_.has_value()) Watch();  // a pipelined next request: keep it, keep watching
}

void HttpSession::Respond(Response response) {
  if (closed_) return;
  auto res = std::make_shared<Response>(std::move(response));
  writing_ = true;
  stream_.expires_after(std::chrono::seconds(server_->options.idle_timeout_s));
  http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
    self->writing_ = false;
    if (ec) return self->Close();
    if (res->need_eof()) return self->LingerAndClose();
    self->AfterResponse();
  });
}

void HttpSession::RespondError(const ApiError& error, bool close) {
  if (close) keep_alive_ = false;
  Response res = MakeResponse(static_cast<http::status>(error.status), "application/json",
                              DumpJson(error.ToJson()));
  if (error.retry_after_s > 0) res.set(http::field::retry_after, std::to_string(error.retry_after_s));
  if (error.status == 401) res.set(http::field::www_authenticate, "Bearer");
  Respond(std::move(res));
}

void HttpSession::LingerAndClose() {
  if (closed_) return;
  if (!lingering_) {
    lingering_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(net::ip::tcp::socket::shutdown_send, ignored);
    // Closing with unread input would reset the connection, and the client
    // could lose the response: read what it still sends, for a short while.
    stream_.expires_after(std::chrono::seconds(kLingerSeconds));
  }
  if (watching_) return;  // the watch read drains as well
  buffer_.clear();
  watching_ = true;
  stream_.async_read_some(buffer_.prepare(64 * 1024),
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                            self->watching_ = false;
                            if (ec) return self->Close();
                            self->LingerAndClose();
                          });
}

void HttpSession::AfterResponse() {
  if (closed_) return;
  if (!keep_alive_) return LingerAndClose();
  if (watching_) {
    // The watch read is still out and may never return if the client already
    // sent its next request: cancel it; OnWatch then reads the next request.
    read_after_watch_ = true;
    beast::error_code ignored;
    stream_.socket().cancel(ignored);
    return;
  }
  ReadHeader();
}

void HttpSession::Close() {
  if (closed_) return;
  closed_ = true;
  if (gen_.has_value()) {
    server_->backend->Cancel(gen_->request_id);
    server_->metrics.CountRequest(gen_->endpoint, "cancelled");
    gen_.reset();
  }
  beast::error_code ignored;
  stream_.socket().shutdown(net::ip::tcp::socket::shutdown_both, ignored);
  stream_.close();
}

}  // namespace tandem
