#pragma once
// The Echo stream over plain TCP (Boost.Asio), the baseline that shows what
// gRPC costs on the same route. Each message is framed as
//   [u32 meta bytes][u32 payload bytes][EchoMessage without payload][payload]
// (little endian), so chunk payloads go straight between the socket and
// their buffers. The server side runs the same EchoSession as gRPC.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"
#include "proto/echo_client.h"
#include "proto/tensor_codec.h"

namespace tandem {

// Largest meta part and payload a TCP echo peer accepts.
inline constexpr uint32_t kMaxTcpMetaBytes = 1 << 20;
inline constexpr uint32_t kMaxTcpPayloadBytes = 80 << 20;

class TcpEchoServer {
 public:
  // `host`: address to bind; `port` 0 picks a free port.
  static StatusOr<std::unique_ptr<TcpEchoServer>> Start(const std::string& host, int port,
                                                        const v1::Hello& mine,
                                                        const DecodeLimits& limits = {});
  ~TcpEchoServer();
  int port() const { return port_; }

 private:
  struct Impl;
  TcpEchoServer() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

StatusOr<std::unique_ptr<EchoConnection>> ConnectTcpEcho(const std::string& host, int port,
                                                         const v1::Hello& mine);

}  // namespace tandem
