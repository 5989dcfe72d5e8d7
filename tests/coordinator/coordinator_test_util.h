#pragma once
// Starting an in-process coordinator on a loopback port for tests, with a
// tiny model spec and no tokenizer (prompts as token ids).
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "coordinator/coordinator_server.h"
#include "gtest/gtest.h"
#include "model/model_spec.h"
#include "proto/grpc_channel.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem::testing {

inline ModelSpec TinySpec() {
  auto spec = ParseModelSpec(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
    "eos_token_id": 999})",
                             "");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

inline std::unique_ptr<CoordinatorServer> StartCoordinator(int nodes,
                                                           const std::string& token = "",
                                                           uint32_t heartbeat_ms = 100) {
  CoordinatorServerOptions o;
  o.config.listen = "127.0.0.1:0";
  o.config.nodes = nodes;
  o.config.cluster_token = token;
  o.spec = TinySpec();
  o.heartbeat_interval_ms = heartbeat_ms;
  o.missed_heartbeats = 3;
  auto server = CoordinatorServer::Start(std::move(o));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(server).value() : nullptr;
}

inline v1::ClusterStatusResponse GetStatus(const std::string& address) {
  auto stub = v1::Coordinator::NewStub(MakeChannel(address));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ClusterStatusResponse r;
  grpc::Status s = stub->ClusterStatus(&context, v1::ClusterStatusRequest(), &r);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return r;
}

// Polls until the cluster state is `state` (or 10 s pass).
inline bool WaitForState(const std::string& address, const std::string& state) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (GetStatus(address).state() == state) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace tandem::testing
