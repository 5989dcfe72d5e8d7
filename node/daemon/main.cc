// tandem-node: one per machine. Registers with the coordinator, loads the
// layer range it is assigned and serves it to the pipeline.
#include <csignal>
#include <thread>

#include "config/node_config.h"
#include "core/cli.h"
#include "core/logging.h"
#include "node/daemon/node_daemon.h"
#include "proto/grpc_channel.h"

int main(int argc, char** argv) {
  CLI::App app(
      "tandem-node: serves a range of a model's layers to a tandem cluster.\n"
      "Every setting can come from a YAML file (--config) and be overridden by its flag.",
      "tandem-node");
  std::string log_level = "info";
  tandem::AddCommonFlags(app, &log_level);
  tandem::NodeConfigFlags flags;
  flags.Register(app);
  if (int code = tandem::ParseArgs(app, argc, argv); code >= 0) return code;
  auto config = flags.Resolve();
  if (!config.ok()) return tandem::ReportError("tandem-node", config.status());
  tandem::InitLogging(app.count("--log-level") ? log_level : config->log_level);
  // Activation chunks are megabytes: keep their memory instead of mapping
  // it afresh for every frame.
  tandem::RetainLargeBufferMemory();

  // SIGINT/SIGTERM stop the daemon cleanly from a dedicated thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto daemon = tandem::NodeDaemon::Start(*config);
  if (!daemon.ok()) return tandem::ReportError("tandem-node", daemon.status());
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("signal {}: stopping", sig);
    (*daemon)->Stop();
  });
  signal_thread.detach();
  tandem::Status s = (*daemon)->Run();
  if (!s.ok()) return tandem::ReportError("tandem-node", s);
  return 0;
}
