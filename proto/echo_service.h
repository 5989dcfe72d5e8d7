#pragma once
// The Echo RPC of the Node service (tandem/v1/node.proto), used by
// `tandem-bench comm` to measure a link. The method is served raw (byte
// buffers, chunk_wire.h), so chunk payloads are decoded where they arrived
// and echoed without a copy. A Node service (node_server.h) returns
// NewEchoReactor from NewEcho(); EchoService is a Node service with only
// Echo implemented, for a standalone echo server.
#include <memory>
#include <string>

#include "core/status.h"
#include "grpcpp/server.h"
#include "proto/node_server.h"
#include "proto/tensor_codec.h"

namespace tandem {

using EchoReactor = RawStreamReactor;

EchoReactor* NewEchoReactor(const v1::Hello& mine, const DecodeLimits& limits);

class EchoService final : public NodeServiceBase {
 public:
  explicit EchoService(v1::Hello mine, DecodeLimits limits = {})
      : mine_(std::move(mine)), limits_(limits) {}
  ~EchoService() override { StopServing(); }
  RawStreamReactor* NewEcho() override;

 private:
  v1::Hello mine_;
  DecodeLimits limits_;
};

// A running gRPC server hosting an EchoService. Destruction (or Stop) ends
// them in the order node_server.h requires: the server's Shutdown, the
// service's StopServing, then the server, then the service.
struct GrpcEchoServer {
  GrpcEchoServer() = default;
  GrpcEchoServer(GrpcEchoServer&& other) noexcept = default;
  GrpcEchoServer& operator=(GrpcEchoServer&& other) noexcept {
    Stop();
    service = std::move(other.service);
    server = std::move(other.server);
    port = other.port;
    return *this;
  }
  ~GrpcEchoServer() { Stop(); }
  void Stop();

  std::unique_ptr<EchoService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // the bound port (useful with port 0)
};
// `address`: "host:port"; port 0 picks a free port.
StatusOr<GrpcEchoServer> StartGrpcEchoServer(const std::string& address, const v1::Hello& mine);

}  // namespace tandem
