#include "coordinator/node_profiles_file.h"

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(NodeProfilesFileTest, ReadsEveryKey) {
  auto nodes = ParseNodeProfiles(R"(nodes:
  - name: gpu
    memory: 24GiB
    decode_layer_ms: 0.25
    head_ms: 1.5
    link: 1Gbit/s
    latency_ms: 0.5
  - {name: laptop, memory: 512MiB, decode_layer_ms: 2}
)",
                                 "nodes.yaml");
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_EQ(nodes->size(), 2u);
  const NodeProfile& a = (*nodes)[0];
  EXPECT_EQ(a.name, "gpu");
  EXPECT_EQ(a.memory_bytes, uint64_t{24} << 30);
  EXPECT_DOUBLE_EQ(a.decode_layer_ms, 0.25);
  EXPECT_DOUBLE_EQ(a.head_ms, 1.5);
  EXPECT_DOUBLE_EQ(a.link_bytes_per_s, 125e6);
  EXPECT_DOUBLE_EQ(a.link_latency_ms, 0.5);
  const NodeProfile& b = (*nodes)[1];
  EXPECT_EQ(b.memory_bytes, uint64_t{512} << 20);
  EXPECT_LT(b.head_ms, 0);  // estimated by the planner
  EXPECT_EQ(b.link_bytes_per_s, 0);
}

TEST(NodeProfilesFileTest, ParsesLinkRates) {
  EXPECT_DOUBLE_EQ(*ParseLinkRate("100Mbit/s"), 12.5e6);
  EXPECT_DOUBLE_EQ(*ParseLinkRate("125MB/s"), 125e6);
  EXPECT_DOUBLE_EQ(*ParseLinkRate("2GiB/s"), 2.0 * 1073741824.0);
  EXPECT_DOUBLE_EQ(*ParseLinkRate("5000"), 5000);
  EXPECT_FALSE(ParseLinkRate("fast").ok());
  EXPECT_FALSE(ParseLinkRate("10 parsecs").ok());
  EXPECT_FALSE(ParseLinkRate("0").ok());
}

void ExpectError(const std::string& yaml, const std::string& where, const std::string& what) {
  auto nodes = ParseNodeProfiles(yaml, "nodes.yaml");
  ASSERT_FALSE(nodes.ok());
  const std::string message(nodes.status().message());
  EXPECT_NE(message.find(where), std::string::npos) << message;
  EXPECT_NE(message.find(what), std::string::npos) << message;
}

TEST(NodeProfilesFileTest, ErrorsNameTheKeyAndLine) {
  ExpectError("nodes:\n  - name: a\n    memory: lots\n    decode_layer_ms: 1\n",
              "nodes.yaml:3:", "nodes[0].memory");
  ExpectError("nodes:\n  - name: a\n    memory: 1GiB\n", "nodes.yaml:2:",
              "nodes[0].decode_layer_ms: missing");
  ExpectError("nodes:\n  - name: a\n    memory: 1GiB\n    decode_layer_ms: 1\n    speed: 3\n",
              "nodes.yaml:5:", "nodes[0].speed: unknown key");
  ExpectError("nodes:\n  - {name: a, memory: 1GiB, decode_layer_ms: 1}\n"
              "  - {name: a, memory: 1GiB, decode_layer_ms: 1}\n",
              "nodes.yaml:3:", "listed twice");
  ExpectError("nodes:\n  - {name: a, memory: 1GiB, decode_layer_ms: 0}\n", "nodes.yaml:2:",
              "must be > 0");
  ExpectError("nodes:\n  - {name: a, memory: 1GiB, decode_layer_ms: 1, link: 3 furlongs}\n",
              "nodes.yaml:2:", "nodes[0].link");
  ExpectError("machines: []\n", "nodes.yaml", "nodes");
}

}  // namespace
}  // namespace tandem
