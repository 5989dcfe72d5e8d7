// tandem-coordinator: registers nodes, plans their layer ranges, and serves
// generation over the Coordinator gRPC service.
//
//   tandem-coordinator --model DIR --listen HOST:PORT --nodes N [--config FILE]
//
// Every key of the YAML file (config/coordinator.example.yaml) is also a flag.
#include <csignal>
#include <filesystem>
#include <cstdio>
#include <thread>

#include "config/coordinator_config.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/http/engine_http_backend.h"
#include "coordinator/http/http_server.h"
#include "core/cli.h"
#include "core/logging.h"

int main(int argc, char** argv) {
  using namespace tandem;
  CLI::App app{"tandem-coordinator: registers nodes, plans layer ranges, serves generation",
               "tandem-coordinator"};
  std::string log_level = "info";
  AddCommonFlags(app, &log_level);
  CoordinatorConfigFlags flags;
  flags.Register(app);
  if (int rc = ParseArgs(app, argc, argv); rc >= 0) return rc;
  StatusOr<CoordinatorConfig> config = flags.Resolve();
  if (!config.ok()) return ReportError("tandem-coordinator", config.status());
  InitLogging(config->log_level);

  // Signals are taken by a thread of their own that shuts the server down.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  StatusOr<CoordinatorServerOptions> options = LoadCoordinatorModel(*config);
  if (!options.ok()) return ReportError("tandem-coordinator", options.status());
  StatusOr<std::unique_ptr<CoordinatorServer>> server =
      CoordinatorServer::Start(std::move(options).value());
  if (!server.ok()) return ReportError("tandem-coordinator", server.status());
  CoordinatorServer* s = server->get();

  // The OpenAI-style HTTP API and dashboard, when --http is given.
  std::unique_ptr<EngineHttpBackend> backend;
  std::unique_ptr<HttpServer> http;
  if (!config->http.empty()) {
    const CoordinatorServerOptions& o = s->options();
    EngineHttpBackendOptions bo;
    bo.model_name = std::filesystem::path(config->model).filename().string();
    if (bo.model_name.empty()) bo.model_name = "tandem";
    bo.spec = &o.spec;
    bo.tokenizer = o.tokenizer.get();
    bo.chat_template = o.chat_template ? &*o.chat_template : nullptr;
    bo.engine = s->engine();
    bo.cluster = s->cluster();
    backend = std::make_unique<EngineHttpBackend>(bo);
    HttpServerOptions ho;
    ho.listen = config->http;
    ho.api_key = config->api_key;
    StatusOr<std::unique_ptr<HttpServer>> started = HttpServer::Start(ho, *backend);
    if (!started.ok()) {
      s->Shutdown();
      return ReportError("tandem-coordinator", started.status());
    }
    http = std::move(started).value();
    spdlog::info("HTTP API and dashboard on {} (port {})", config->http, http->port());
  }

  std::thread waiter([&signals, s, &http] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("signal {}: shutting down", sig);
    http.reset();  // before the engine it submits to
    s->Shutdown();
  });
  s->Wait();
  // Wait() only returns after a signal: the waiter thread is done or finishing.
  waiter.join();
  return 0;
}
