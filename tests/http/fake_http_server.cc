// An HTTP server over the fake backend, for tests with real clients (the
// openai npm package, headless Chromium) and for trying the dashboard:
//
//   fake_http_server [--listen 127.0.0.1:0] [--api-key KEY] [--token-delay-ms N]
//
// Prints "listening on http://HOST:PORT" once serving; stops on SIGINT/SIGTERM.
#include <csignal>
#include <cstdio>

#include "CLI/CLI.hpp"
#include "coordinator/http/http_server.h"
#include "core/cli.h"
#include "tests/http/fake_http_backend.h"

int main(int argc, char** argv) {
  using namespace tandem;
  CLI::App app{"HTTP API over a deterministic fake backend", "fake_http_server"};
  std::string listen = "127.0.0.1:0";
  std::string api_key;
  int token_delay_ms = 20;
  app.add_option("--listen", listen, "HOST:PORT (port 0: a free one)");
  app.add_option("--api-key", api_key, "require this bearer key");
  app.add_option("--token-delay-ms", token_delay_ms, "time between generated tokens");
  CLI11_PARSE(app, argc, argv);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  FakeHttpBackend backend({.model_name = "tandem-test", .max_context = 4096,
                           .token_delay_ms = token_delay_ms});
  HttpServerOptions options;
  options.listen = listen;
  options.api_key = api_key;
  auto server = HttpServer::Start(options, backend);
  if (!server.ok()) return ReportError("fake_http_server", server.status());
  const size_t colon = listen.rfind(':');
  std::printf("listening on http://%s:%d\n", listen.substr(0, colon).c_str(), (*server)->port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  return 0;
}
