#pragma once
// The gRPC Node service a node daemon hosts (tandem/v1/node.proto):
// Forward streams of pipeline steps, ReleaseSequences, LoadShard and Echo.
// Callback API: handlers never block; decoding happens as chunks arrive and
// compute runs on the StageRuntime's thread.
#include <functional>
#include <memory>
#include <mutex>

#include "node/daemon/stage_runtime.h"
#include "proto/echo_service.h"
#include "proto/tensor_codec.h"
#include "tandem/v1/node.grpc.pb.h"

namespace tandem {

class NodeService final : public NodeServiceBase {
 public:
  // Loads an assignment; the daemon's loader, shared with the Control stream.
  using Loader = std::function<v1::LoadShardResponse(const v1::ShardAssignment&)>;

  NodeService(v1::Hello hello, Loader loader);

  // The stage now served (null while none is loaded). Thread-safe.
  std::shared_ptr<StageRuntime> runtime() const;
  void set_runtime(std::shared_ptr<StageRuntime> runtime);
  const v1::Hello& hello() const { return hello_; }

  grpc::ServerBidiReactor<v1::ForwardRequest, v1::ForwardResponse>* Forward(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ReleaseSequences(grpc::CallbackServerContext* context,
                                             const v1::ReleaseSequencesRequest* request,
                                             v1::ReleaseSequencesResponse* response) override;
  grpc::ServerUnaryReactor* LoadShard(grpc::CallbackServerContext* context,
                                      const v1::LoadShardRequest* request,
                                      v1::LoadShardResponse* response) override;
  EchoReactor* Echo(grpc::CallbackServerContext* context) override;

 private:
  const v1::Hello hello_;  // fixed at start: read by every stream
  Loader loader_;
  mutable std::mutex mutex_;
  std::shared_ptr<StageRuntime> runtime_;
};

}  // namespace tandem
