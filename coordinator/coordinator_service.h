#pragma once
// The Coordinator gRPC service (tandem/v1/coordinator.proto) on the callback
// API: RegisterNode and ClusterStatus (unary), Control (a bidi stream per
// node) and Generate (server streaming). Handlers never block: registration
// and status take the cluster's lock briefly, generation posts to the engine.
#include "coordinator/cluster.h"
#include "coordinator/engine.h"
#include "coordinator/generate_request.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem {

// absl -> gRPC status (the codes share their numbering).
grpc::Status ToGrpcStatus(const Status& status);

class CoordinatorService final : public v1::Coordinator::CallbackService {
 public:
  // Every pointer must outlive the service.
  CoordinatorService(Cluster* cluster, Engine* engine, PromptTools tools)
      : cluster_(cluster), engine_(engine), tools_(tools) {}

  grpc::ServerUnaryReactor* RegisterNode(grpc::CallbackServerContext* context,
                                         const v1::RegisterNodeRequest* request,
                                         v1::RegisterNodeResponse* response) override;
  grpc::ServerBidiReactor<v1::NodeToCoordinator, v1::CoordinatorToNode>* Control(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ClusterStatus(grpc::CallbackServerContext* context,
                                          const v1::ClusterStatusRequest* request,
                                          v1::ClusterStatusResponse* response) override;

 private:
  Cluster* cluster_;
  Engine* engine_;
  PromptTools tools_;
};

}  // namespace tandem
