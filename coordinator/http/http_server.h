#pragma once
// The coordinator's HTTP front door (Boost.Beast on Asio): OpenAI's API
// (POST /v1/chat/completions, POST /v1/completions, GET /v1/models), GET
// /health, GET /v1/cluster (the status JSON), GET /metrics (Prometheus) and
// the dashboard at GET /.
//
// Bounded everywhere: request header and body sizes, open connections, the
// time to receive a request and to write each response piece (a client too
// slow for either is dropped), SSE output buffered for a slow reader, and the
// engine's queue (429 past max_queue). A client that disconnects before its
// answer is complete has its request cancelled.
//
// An API key, when set, is required as `Authorization: Bearer KEY` on /v1/*
// and /metrics; /health and the dashboard page answer without it (the page
// asks for the key).
#include <cstddef>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/http/http_backend.h"
#include "core/status.h"

namespace tandem {

struct HttpServerOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT ([v6]:PORT); port 0 picks a free one
  std::string api_key;                 // empty: no key needed
  size_t max_body_bytes = 4u << 20;
  size_t max_header_bytes = 16u << 10;
  int max_connections = 256;
  int idle_timeout_s = 60;  // to receive a request, and to write each response piece
  int max_queue = 256;      // waiting requests beyond which new ones get 429
  int retry_after_s = 1;    // Retry-After of a 429
  size_t max_stream_buffer_bytes = 4u << 20;  // SSE output waiting for a slow reader
  int threads = 2;                            // I/O threads
};

struct HttpServerState;

class HttpServer {
 public:
  // Binds and starts serving. `backend` must outlive the server.
  static StatusOr<std::unique_ptr<HttpServer>> Start(HttpServerOptions options,
                                                     HttpBackend& backend);
  // Stops accepting, closes every connection and cancels their requests.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

 private:
  HttpServer() = default;

  std::shared_ptr<HttpServerState> state_;
  std::vector<std::thread> threads_;
  int port_ = 0;
};

}  // namespace tandem
