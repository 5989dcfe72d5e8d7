#include "proto/hello.h"

#include <gtest/gtest.h>

namespace tandem {
namespace {

v1::Hello Coordinator() {
  return MakeHello({.role = v1::ROLE_COORDINATOR, .node_id = "", .model_fingerprint = "llama-abc",
                    .cluster_token = "secret-1"});
}
v1::Hello Node() {
  return MakeHello({.role = v1::ROLE_NODE, .node_id = "gpu-box", .model_fingerprint = "llama-abc",
                    .cluster_token = "secret-1"});
}

TEST(CheckHello, AcceptsMatchingPeers) {
  EXPECT_TRUE(CheckHello(Coordinator(), Node()).ok());
  EXPECT_TRUE(CheckHello(Node(), Coordinator()).ok());
  v1::Hello fresh = Node();
  fresh.clear_model_fingerprint();  // no model loaded yet
  EXPECT_TRUE(CheckHello(Coordinator(), fresh).ok());
}

TEST(CheckHello, VersionMismatchNamesBothSides) {
  v1::Hello node = Node();
  node.set_protocol_version(kProtocolVersion + 1);
  Status st = CheckHello(Coordinator(), node);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(), absl::StrCat("protocol version mismatch: this coordinator speaks ",
                                       kProtocolVersion, ", node 'gpu-box' speaks ",
                                       kProtocolVersion + 1));
}

TEST(CheckHello, FingerprintMismatchNamesBothModels) {
  v1::Hello node = Node();
  node.set_model_fingerprint("qwen-xyz");
  Status st = CheckHello(Coordinator(), node);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("this coordinator has model llama-abc"), std::string_view::npos)
      << st.message();
  EXPECT_NE(st.message().find("node 'gpu-box' has model qwen-xyz"), std::string_view::npos)
      << st.message();
}

TEST(CheckHello, TokenMismatchNeverPrintsTokens) {
  v1::Hello node = Node();
  node.set_cluster_token("secret-2");
  Status st = CheckHello(Coordinator(), node);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(st.message().find("a different cluster token"), std::string_view::npos);
  EXPECT_EQ(st.message().find("secret"), std::string_view::npos) << st.message();
  node.clear_cluster_token();
  st = CheckHello(Coordinator(), node);
  EXPECT_NE(st.message().find("node 'gpu-box' sent no cluster token"), std::string_view::npos)
      << st.message();
}

}  // namespace
}  // namespace tandem
