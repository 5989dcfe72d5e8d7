#pragma once
// The Echo RPC of the Node service (tandem/v1/node.proto), used by
// `tandem-bench comm` to measure a link. The method is served raw (byte
// buffers, chunk_wire.h), so chunk payloads are decoded where they arrived
// and echoed without a copy. A Node service derives from NodeServiceBase
// and returns NewEchoReactor from Echo(); EchoService is a Node service with
// only Echo implemented, for a standalone echo server.
#include <memory>
#include <string>

#include "core/status.h"
#include "proto/tensor_codec.h"
#include "tandem/v1/node.grpc.pb.h"

namespace tandem {

// The callback Node service with Echo taking byte buffers.
using NodeServiceBase = v1::Node::WithCallbackMethod_Forward<
    v1::Node::WithCallbackMethod_ReleaseSequences<v1::Node::WithCallbackMethod_LoadShard<
        v1::Node::WithRawCallbackMethod_Echo<v1::Node::Service>>>>;
using EchoReactor = grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>;

EchoReactor* NewEchoReactor(const v1::Hello& mine, const DecodeLimits& limits);

class EchoService final : public NodeServiceBase {
 public:
  explicit EchoService(v1::Hello mine, DecodeLimits limits = {})
      : mine_(std::move(mine)), limits_(limits) {}
  EchoReactor* Echo(grpc::CallbackServerContext* context) override;

 private:
  v1::Hello mine_;
  DecodeLimits limits_;
};

// A running gRPC server hosting an EchoService.
struct GrpcEchoServer {
  std::unique_ptr<EchoService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // the bound port (useful with port 0)
};
// `address`: "host:port"; port 0 picks a free port.
StatusOr<GrpcEchoServer> StartGrpcEchoServer(const std::string& address, const v1::Hello& mine);

}  // namespace tandem
