// Registration and Control-stream refusals over real gRPC on loopback, with
// fake nodes written here.
#include <thread>

#include "fake_node.h"
#include "coordinator_test_util.h"
#include "gtest/gtest.h"

namespace tandem::testing {
namespace {

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartCoordinator(/*nodes=*/2, /*token=*/"secret");
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(server_->port());
    fingerprint_ = TinySpec().Fingerprint();
  }
  FakeNodeOptions Options(const std::string& name) {
    return {.name = name, .fingerprint = fingerprint_, .cluster_token = "secret"};
  }

  std::unique_ptr<CoordinatorServer> server_;
  std::string address_;
  std::string fingerprint_;
};

TEST_F(RegistryTest, AcceptsAMatchingNode) {
  FakeNode node(Options("a"));
  v1::RegisterNodeResponse r;
  grpc::Status s = node.Register(address_, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(r.session_id(), 0u);
  EXPECT_EQ(r.heartbeat_interval_ms(), 100u);
  EXPECT_EQ(r.hello().model_fingerprint(), fingerprint_);
  ASSERT_TRUE(node.OpenControl(address_, r.session_id(), r.heartbeat_interval_ms()).ok());
  const v1::ClusterStatusResponse status = GetStatus(address_);
  EXPECT_EQ(status.state(), "waiting");  // one of two nodes
  ASSERT_EQ(status.nodes_size(), 1);
  EXPECT_EQ(status.nodes(0).node_id(), "a");
  EXPECT_TRUE(status.nodes(0).healthy());
}

TEST_F(RegistryTest, RefusesAnotherProtocolVersion) {
  FakeNodeOptions o = Options("a");
  o.protocol_version = kProtocolVersion + 1;
  FakeNode node(o);
  v1::RegisterNodeResponse r;
  grpc::Status s = node.Register(address_, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("protocol version mismatch"), std::string::npos)
      << s.error_message();
  EXPECT_NE(s.error_message().find("node 'a'"), std::string::npos) << s.error_message();
}

TEST_F(RegistryTest, RefusesAnotherModel) {
  FakeNodeOptions o = Options("a");
  o.fingerprint = "0123456789abcdef";
  FakeNode node(o);
  v1::RegisterNodeResponse r;
  grpc::Status s = node.Register(address_, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("model fingerprint mismatch"), std::string::npos)
      << s.error_message();
  EXPECT_NE(s.error_message().find("0123456789abcdef"), std::string::npos) << s.error_message();
}

TEST_F(RegistryTest, RefusesAWrongClusterToken) {
  FakeNodeOptions o = Options("a");
  o.cluster_token = "guess";
  FakeNode node(o);
  v1::RegisterNodeResponse r;
  grpc::Status s = node.Register(address_, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(s.error_message().find("cluster token"), std::string::npos) << s.error_message();
  EXPECT_EQ(s.error_message().find("secret"), std::string::npos) << "tokens are never printed";
  EXPECT_EQ(s.error_message().find("guess"), std::string::npos) << "tokens are never printed";
}

TEST_F(RegistryTest, RefusesADuplicateLiveName) {
  FakeNode first(Options("a"));
  ASSERT_TRUE(first.Join(address_));
  FakeNode second(Options("a"));
  v1::RegisterNodeResponse r;
  grpc::Status s = second.Register(address_, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(s.error_message().find("a node named 'a' is already registered from " +
                                   first.address()),
            std::string::npos)
      << s.error_message();
}

TEST_F(RegistryTest, RefusesAControlStreamWithoutRegistration) {
  FakeNode node(Options("ghost"));
  grpc::Status s = node.OpenControl(address_, 42, 100);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("not registered"), std::string::npos) << s.error_message();
}

TEST_F(RegistryTest, RefusesAControlStreamWithAWrongToken) {
  FakeNode good(Options("a"));
  v1::RegisterNodeResponse r;
  ASSERT_TRUE(good.Register(address_, &r).ok());
  FakeNodeOptions o = Options("a");
  o.cluster_token = "guess";
  FakeNode bad(o);
  grpc::Status s = bad.OpenControl(address_, r.session_id(), 100);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(RegistryTest, ADeadNodeIsShownDownAndMayRegisterAgain) {
  auto node = std::make_unique<FakeNode>(Options("a"));
  ASSERT_TRUE(node->Join(address_));
  node->Kill();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool down = false;
  while (!down && std::chrono::steady_clock::now() < deadline) {
    const v1::ClusterStatusResponse st = GetStatus(address_);
    down = st.nodes_size() == 1 && st.nodes(0).state() == "down" && !st.nodes(0).healthy();
    if (!down) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(down);
  FakeNode again(Options("a"));
  EXPECT_TRUE(again.Join(address_));
  const v1::ClusterStatusResponse st = GetStatus(address_);
  ASSERT_EQ(st.nodes_size(), 1);
  EXPECT_TRUE(st.nodes(0).healthy());
  EXPECT_EQ(st.nodes(0).address(), again.address());
}

TEST_F(RegistryTest, ANodeThatStopsHeartbeatingIsDown) {
  // Registered but never opens its Control stream: down after 3 intervals,
  // after which the name is free again.
  FakeNode silent(Options("quiet"));
  v1::RegisterNodeResponse r;
  ASSERT_TRUE(silent.Register(address_, &r).ok());
  FakeNode again(Options("quiet"));
  EXPECT_EQ(again.Register(address_, &r).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  grpc::Status s;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    s = again.Register(address_, &r);
  } while (!s.ok() && std::chrono::steady_clock::now() < deadline);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

}  // namespace
}  // namespace tandem::testing
