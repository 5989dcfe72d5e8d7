#pragma once
// The gRPC Node service a node daemon hosts (tandem/v1/node.proto):
// Forward streams of pipeline steps, ReleaseSequences, LoadShard and Echo.
// Served from one thread (proto/node_server.h): handlers never block;
// decoding happens as chunks arrive, straight from gRPC's receive buffers,
// and compute runs on the StageRuntime's thread.
#include <functional>
#include <memory>
#include <mutex>

#include "node/daemon/stage_runtime.h"
#include "proto/echo_service.h"
#include "proto/tensor_codec.h"
#include "proto/node_server.h"

namespace tandem {

class NodeService final : public NodeServiceBase {
 public:
  // Loads an assignment; the daemon's loader, shared with the Control stream.
  using Loader = std::function<v1::LoadShardResponse(const v1::ShardAssignment&)>;

  NodeService(v1::Hello hello, Loader loader);
  ~NodeService() override { StopServing(); }

  // The stage now served (null while none is loaded). Thread-safe.
  std::shared_ptr<StageRuntime> runtime() const;
  void set_runtime(std::shared_ptr<StageRuntime> runtime);
  const v1::Hello& hello() const { return hello_; }

  // Served raw: chunks are decoded from the slices they arrived in.
  RawStreamReactor* NewForward() override;
  RawStreamReactor* NewEcho() override;
  void HandleReleaseSequences(const v1::ReleaseSequencesRequest& request,
                              v1::ReleaseSequencesResponse* response, Done done) override;
  // Loads on a thread of its own.
  void HandleLoadShard(const v1::LoadShardRequest& request, v1::LoadShardResponse* response,
                       Done done) override;

 private:
  const v1::Hello hello_;  // fixed at start: read by every stream
  Loader loader_;
  mutable std::mutex mutex_;
  std::shared_ptr<StageRuntime> runtime_;
};

}  // namespace tandem
