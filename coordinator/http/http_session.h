#pragma once
// Internal to the HTTP server: the state its connections share, and one
// connection (HttpSession). Every handler of a session runs on the session's
// strand; the engine reaches a session only by posting to that strand through
// the request's GenerationSink, and only while the server is open.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "boost/asio/dispatch.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/strand.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "coordinator/http/http_backend.h"
#include "coordinator/http/http_server.h"
#include "coordinator/http/openai_request.h"
#include "coordinator/http/openai_response.h"
#include "coordinator/http/server_metrics.h"

namespace tandem {

struct HttpServerState {
  HttpServerOptions options;
  HttpBackend* backend = nullptr;
  ServerMetrics metrics;
  // Reset by ~HttpServer after its threads stopped: that destroys the pending
  // handlers and with them the sessions (which point back at this state).
  std::unique_ptr<boost::asio::io_context> ioc;
  std::optional<boost::asio::ip::tcp::acceptor> acceptor;
  std::atomic<int> connections{0};
  std::atomic<uint64_t> next_response_id{1};
  uint64_t id_prefix = 0;  // random per server, so response ids differ across restarts
  int64_t started_unix = 0;

  // Sinks post to sessions only while open; closed before the threads stop.
  std::mutex gate_mu;
  bool open = true;  // guarded by gate_mu
};

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(boost::asio::ip::tcp::socket socket, std::shared_ptr<HttpServerState> server);
  // Cancels a request still generating.
  ~HttpSession();

  void Start();
  // On the strand: one engine message for generation `serial`.
  void OnOutput(uint64_t serial, v1::GenerateResponse response);

 private:
  using Request = boost::beast::http::request<boost::beast::http::string_body>;
  using Response = boost::beast::http::response<boost::beast::http::string_body>;
  using Clock = std::chrono::steady_clock;

  struct Generation {
    uint64_t serial = 0;
    uint64_t request_id = 0;  // the backend's
    bool stream = false;
    std::string endpoint;  // "chat" or "completions", for metrics
    std::optional<CompletionFormatter> formatter;
    Clock::time_point arrived;
    Clock::time_point last_token;
    bool got_token = false;
    // Streaming only.
    bool header_sent = false;
    bool done = false;  // the last event is queued
    std::string pending;   // events waiting to be written
    std::string inflight;  // events being written
  };

  void ReadHeader();
  void OnHeader(boost::beast::error_code ec);
  void ReadBody();
  void OnBody(boost::beast::error_code ec);
  void Handle(const Request& request);
  void HandleCompletion(const Request& request, ApiEndpoint endpoint);
  // Writes a whole response; then reads the next request or closes.
  void Respond(Response response);
  // 413 with the body limit; the connection closes after it.
  void RespondBodyTooLarge();
  void RespondError(const ApiError& error, bool close = false);
  void AfterResponse();
  // Half-closes and discards input until the client closes (or a deadline).
  void LingerAndClose();
  // Reads while a request generates, to notice a client that goes away.
  void Watch();
  void OnWatch(boost::beast::error_code ec, size_t bytes);
  void PumpStream();
  void FinishGeneration(const std::string& outcome);
  void Close();
  Response MakeResponse(boost::beast::http::status status, std::string content_type,
                        std::string body) const;

  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
  std::optional<boost::beast::http::request_parser<boost::beast::http::string_body>> parser_;
  std::shared_ptr<HttpServerState> server_;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool writing_ = false;
  bool watching_ = false;
  bool read_after_watch_ = false;  // the next request waits for the watch read to end
  bool closed_ = false;
  bool lingering_ = false;
  uint64_t next_serial_ = 1;
  std::optional<Generation> gen_;
};

}  // namespace tandem
