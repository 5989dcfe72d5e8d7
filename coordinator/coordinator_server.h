#pragma once
// tandem-coordinator in a process: the Coordinator gRPC service, the
// cluster (registry, liveness, plan), the engine, and a liveness monitor.
// Also what tests start in-process on a loopback port.
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "config/coordinator_config.h"
#include "coordinator/chat_template.h"
#include "coordinator/cluster.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/engine.h"
#include "coordinator/tokenizer.h"
#include "core/status.h"
#include "grpcpp/grpcpp.h"
#include "model/model_spec.h"

namespace tandem {

struct CoordinatorServerOptions {
  CoordinatorConfig config;  // listen address, nodes to wait for, planner, ...
  ModelSpec spec;
  std::unique_ptr<Tokenizer> tokenizer;       // null: prompts as token ids only
  std::optional<ChatTemplate> chat_template;  // unset: chats are refused
  uint32_t heartbeat_interval_ms = 1000;
  int missed_heartbeats = 3;  // a node is down after this many intervals without one
};

// Reads config.model: config.json (required), tokenizer.json and the chat
// template (optional: without them the coordinator takes token ids only).
StatusOr<CoordinatorServerOptions> LoadCoordinatorModel(const CoordinatorConfig& config);

class CoordinatorServer {
 public:
  // Binds config.listen (port 0 picks a free port) and starts serving.
  static StatusOr<std::unique_ptr<CoordinatorServer>> Start(CoordinatorServerOptions options);
  ~CoordinatorServer();  // Shutdown()
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  int port() const { return port_; }
  // For front ends hosted beside the gRPC service (the HTTP API). Valid until
  // Shutdown(), which the front ends must not outlive.
  Engine* engine() const { return engine_.get(); }
  Cluster* cluster() const { return cluster_.get(); }
  const CoordinatorServerOptions& options() const { return options_; }
  // Blocks until Shutdown() (from another thread or a signal handler thread).
  void Wait();
  // Stops serving: open streams are cancelled, running requests end with an
  // error. Idempotent.
  void Shutdown();

 private:
  CoordinatorServer() = default;

  CoordinatorServerOptions options_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Cluster> cluster_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  bool stopped_ = false;   // guarded by mu_
  std::thread monitor_;
};

}  // namespace tandem
