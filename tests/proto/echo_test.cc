// Echo round trips over real gRPC and raw TCP on loopback (free ports), and
// the retry of a call whose first connect fails.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>
#include <random>
#include <thread>

#include "grpcpp/server.h"
#include "gtest/gtest.h"
#include "proto/activation_sample.h"
#include "proto/echo_client.h"
#include "proto/echo_service.h"
#include "proto/hello.h"
#include "proto/tcp_echo.h"

namespace tandem {
namespace {

v1::Hello ServerHello() {
  return MakeHello({.role = v1::ROLE_NODE, .node_id = "echo-node", .model_fingerprint = "", .cluster_token = "t0k"});
}
v1::Hello ClientHello() {
  return MakeHello({.role = v1::ROLE_BENCH, .node_id = "bench", .model_fingerprint = "", .cluster_token = "t0k"});
}

class EchoTransportTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto grpc_server = StartGrpcEchoServer("127.0.0.1:0", ServerHello());
    ASSERT_TRUE(grpc_server.ok()) << grpc_server.status();
    grpc_ = std::move(grpc_server).value();
    auto tcp = TcpEchoServer::Start("127.0.0.1", 0, ServerHello());
    ASSERT_TRUE(tcp.ok()) << tcp.status();
    tcp_ = std::move(tcp).value();
  }
  void TearDown() override {
    grpc_.Stop();
  }
  StatusOr<std::unique_ptr<EchoConnection>> Connect(const v1::Hello& hello) {
    if (GetParam() == "grpc") return ConnectGrpcEcho(absl::StrCat("127.0.0.1:", grpc_.port), hello);
    return ConnectTcpEcho("127.0.0.1", tcp_->port(), hello);
  }

  GrpcEchoServer grpc_;
  std::unique_ptr<TcpEchoServer> tcp_;
};

TEST_P(EchoTransportTest, FramesRoundTripInEveryMode) {
  auto conn = Connect(ClientHello());
  ASSERT_TRUE(conn.ok()) << conn.status();
  EXPECT_EQ((*conn)->peer().node_id(), "echo-node");
  std::mt19937_64 rng(std::random_device{}());
  for (Codec codec : {Codec::kNone, Codec::kShuffleLz4, Codec::kZstd}) {
    for (Shape shape : {Shape{1, 8192}, Shape{67, 4096}}) {
      Tensor src = MakeActivations(DType::kBF16, shape, {.seed = rng()});
      auto enc = TensorEncoder::Create(src.view(), {.codec = codec, .chunk_bytes = 128 << 10});
      ASSERT_TRUE(enc.ok());
      Tensor back(DType::kBF16, shape);
      auto echoed = EchoFrame(**conn, *enc, v1::ECHO_MODE_ECHO, {back.As<uint8_t>(), back.NumBytes()});
      ASSERT_TRUE(echoed.ok()) << echoed.status();
      EXPECT_EQ(std::memcmp(src.data(), back.data(), src.NumBytes()), 0);
      auto decoded = EchoFrame(**conn, *enc, v1::ECHO_MODE_DECODE);
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      EXPECT_TRUE(decoded->ack.error().empty());
      auto messages = EncodeChunkMessages(*enc);
      ASSERT_TRUE(messages.ok());
      auto acked = EchoEncoded(**conn, enc->header(), *messages, v1::ECHO_MODE_ACK);
      ASSERT_TRUE(acked.ok()) << acked.status();
      uint64_t wire = 0;
      for (const auto& m : *messages) wire += m.chunk().payload().size();
      EXPECT_EQ(acked->wire_bytes, wire);
    }
  }
  auto rtt = EchoPing(**conn);
  ASSERT_TRUE(rtt.ok()) << rtt.status();
  EXPECT_GT(*rtt, 0.0);
  EXPECT_TRUE((*conn)->Close().ok());
}

TEST_P(EchoTransportTest, CorruptFrameIsRefusedInTheAckAndTheStreamLivesOn) {
  auto conn = Connect(ClientHello());
  ASSERT_TRUE(conn.ok()) << conn.status();
  Tensor src = MakeActivations(DType::kF16, {3, 1000}, {});
  auto enc = TensorEncoder::Create(src.view(), {.codec = Codec::kLz4, .chunk_bytes = 2000});
  ASSERT_TRUE(enc.ok());
  auto messages = EncodeChunkMessages(*enc);
  ASSERT_TRUE(messages.ok());
  (*messages)[1].mutable_chunk()->mutable_payload()->back() ^= 0x5a;
  auto bad = EchoEncoded(**conn, enc->header(), *messages, v1::ECHO_MODE_DECODE);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("chunk 1"), std::string_view::npos) << bad.status();
  auto good = EchoFrame(**conn, *enc, v1::ECHO_MODE_DECODE);
  EXPECT_TRUE(good.ok()) << good.status();
}

TEST_P(EchoTransportTest, HelloMismatchIsRefusedWithReason) {
  v1::Hello wrong = ClientHello();
  wrong.set_protocol_version(kProtocolVersion + 7);
  auto conn = Connect(wrong);
  ASSERT_FALSE(conn.ok());
  EXPECT_NE(conn.status().message().find("protocol version mismatch"), std::string_view::npos)
      << conn.status();
  v1::Hello no_token = ClientHello();
  no_token.clear_cluster_token();
  conn = Connect(no_token);
  ASSERT_FALSE(conn.ok());
  EXPECT_NE(conn.status().message().find("cluster token"), std::string_view::npos) << conn.status();
}

INSTANTIATE_TEST_SUITE_P(Transports, EchoTransportTest, ::testing::Values("grpc", "tcp"));

// A server stopped at once still has every accept pending on its queue;
// they come back after the shutdown and must find the server alive
// (node_server.h); Stop ends both, and the destructor then has nothing left.
TEST(GrpcEchoServerTest, StopsCleanlyWithAcceptsPendingAndAfterACall) {
  for (int i = 0; i < 20; ++i) {
    auto server = StartGrpcEchoServer("127.0.0.1:0", ServerHello());
    ASSERT_TRUE(server.ok()) << server.status();
    if (i % 2 == 1) {  // also with a stream that has come and gone
      auto conn = ConnectGrpcEcho(absl::StrCat("127.0.0.1:", server->port), ClientHello());
      ASSERT_TRUE(conn.ok()) << conn.status();
    }
    server->Stop();
    EXPECT_EQ(server->server, nullptr);
    EXPECT_EQ(server->service, nullptr);
  }
}

// A port another server listens on is refused, not shared: with
// SO_REUSEPORT both would bind and the kernel would split the connections.
TEST(GrpcEchoServerTest, PortInUseIsRefused) {
  auto first = StartGrpcEchoServer("127.0.0.1:0", ServerHello());
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string address = absl::StrCat("127.0.0.1:", first->port);
  auto second = StartGrpcEchoServer(address, ServerHello());
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find(address), std::string::npos) << second.status();
  auto conn = ConnectGrpcEcho(address, ClientHello());
  EXPECT_TRUE(conn.ok()) << conn.status();
}

// A call whose first connect fails is tried again: the server comes up on
// the port 50 ms after the call started and the call succeeds. Without the
// channel's retry policy it fails at once with "connection refused".
TEST(GrpcChannelTest, ACallOutlastsAFailedFirstConnect) {
  // Holds a port whose connects are refused: bound, not listening.
  const int holder = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(holder, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(holder, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));

  auto call =
      std::async(std::launch::async, [&] { return ConnectGrpcEcho(address, ClientHello()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  close(holder);
  auto server = StartGrpcEchoServer(address, ServerHello());
  ASSERT_TRUE(server.ok()) << server.status();
  auto conn = call.get();
  ASSERT_TRUE(conn.ok()) << conn.status();
  EXPECT_EQ((*conn)->peer().node_id(), "echo-node");
  EXPECT_TRUE((*conn)->Close().ok());
  server->Stop();
}

}  // namespace
}  // namespace tandem
