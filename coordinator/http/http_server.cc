#include "coordinator/http/http_server.h"

#include <ctime>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/strand.hpp"
#include "coordinator/http/http_session.h"
#include "core/logging.h"

namespace tandem {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

StatusOr<std::pair<std::string, uint16_t>> SplitHostPort(const std::string& listen) {
  std::string host, port;
  if (!listen.empty() && listen[0] == '[') {
    const size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTP listen address '", listen, "' is not [IPV6]:PORT"));
    }
    host = listen.substr(1, close - 1);
    port = listen.substr(close + 2);
  } else {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTP listen address '", listen, "' is not HOST:PORT"));
    }
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
  }
  uint32_t port_number = 0;
  if (!absl::SimpleAtoi(port, &port_number) || port_number > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP listen address '", listen, "' has no valid port"));
  }
  if (host.empty()) host = "0.0.0.0";
  return std::make_pair(host, static_cast<uint16_t>(port_number));
}

// Refuses a connection beyond max_connections with a short 503.
void Refuse(tcp::socket socket) {
  auto stream = std::make_shared<beast::tcp_stream>(std::move(socket));
  auto res = std::make_shared<http::response<http::string_body>>(
      http::status::service_unavailable, 11);
  res->set(http::field::content_type, "application/json");
  res->set(http::field::retry_after, "1");
  res->keep_alive(false);
  res->body() =
      R"({"error":{"message":"too many open connections","type":"service_unavailable",)"
      R"("param":null,"code":"too_many_connections"}})";
  res->prepare_payload();
  stream->expires_after(std::chrono::seconds(5));
  http::async_write(*stream, *res, [stream, res](beast::error_code, size_t) {
    beast::error_code ignored;
    stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream->close();
  });
}

void Accept(std::shared_ptr<HttpServerState> state) {
  state->acceptor->async_accept(
      net::make_strand(*state->ioc), [state](beast::error_code ec, tcp::socket socket) {
        if (ec == net::error::operation_aborted || !state->acceptor->is_open()) return;
        if (ec) {
          spdlog::warn("http: accept failed: {}", ec.message());
        } else if (state->connections.fetch_add(1) >= state->options.max_connections) {
          state->connections.fetch_sub(1);
          Refuse(std::move(socket));
        } else {
          beast::error_code ignored;
          socket.set_option(tcp::no_delay(true), ignored);
          std::make_shared<HttpSession>(std::move(socket), state)->Start();
        }
        Accept(state);
      });
}

}  // namespace

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options,
                                                        HttpBackend& backend) {
  if (options.threads < 1 || options.max_connections < 1 || options.idle_timeout_s < 1 ||
      options.max_queue < 0 || options.max_body_bytes == 0 || options.max_header_bytes == 0) {
    return absl::InvalidArgumentError(
        "HTTP server options: threads, max_connections, idle_timeout_s, max_body_bytes and "
        "max_header_bytes must be positive");
  }
  ASSIGN_OR_RETURN(auto host_port, SplitHostPort(options.listen));
  auto state = std::make_shared<HttpServerState>();
  state->options = std::move(options);
  state->backend = &backend;
  state->started_unix = static_cast<int64_t>(std::time(nullptr));
  state->id_prefix = std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}();

  beast::error_code ec;
  state->ioc = std::make_unique<net::io_context>();
  tcp::resolver resolver(*state->ioc);
  auto results = resolver.resolve(host_port.first, std::to_string(host_port.second),
                                  tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("HTTP listen address '", state->options.listen,
                                                   "': cannot resolve '", host_port.first,
                                                   "': ", ec.message()));
  }
  const tcp::endpoint endpoint = results.begin()->endpoint();
  state->acceptor.emplace(*state->ioc);
  state->acceptor->open(endpoint.protocol(), ec);
  if (!ec) state->acceptor->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) state->acceptor->bind(endpoint, ec);
  if (!ec) state->acceptor->listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", state->options.listen, ": ", ec.message()));
  }
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->port_ = state->acceptor->local_endpoint().port();
  server->state_ = state;
  Accept(state);
  for (int i = 0; i < state->options.threads; ++i) {
    server->threads_.emplace_back([state] { state->ioc->run(); });
  }
  spdlog::info("http: serving on {} (port {})", state->options.listen, server->port_);
  return server;
}

HttpServer::~HttpServer() {
  {
    std::lock_guard<std::mutex> lock(state_->gate_mu);
    state_->open = false;
  }
  state_->ioc->stop();
  for (std::thread& t : threads_) t.join();
  beast::error_code ignored;
  state_->acceptor->close(ignored);
  state_->acceptor.reset();
  // Destroys the pending handlers and so the sessions, each cancelling its
  // request. The state lives on while sinks the engine still holds refer to it.
  state_->ioc.reset();
}

}  // namespace tandem
