// tandem-coordinator: registers nodes, plans their layer ranges, and serves
// generation over the Coordinator gRPC service.
//
//   tandem-coordinator --model DIR --listen HOST:PORT --nodes N [--config FILE]
//
// Every key of the YAML file (config/coordinator.example.yaml) is also a flag.
#include <csignal>
#include <cstdio>
#include <thread>

#include "config/coordinator_config.h"
#include "coordinator/coordinator_server.h"
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
  std::thread waiter([&signals, s] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("signal {}: shutting down", sig);
    s->Shutdown();
  });
  s->Wait();
  // Wait() only returns after a signal: the waiter thread is done or finishing.
  waiter.join();
  return 0;
}
