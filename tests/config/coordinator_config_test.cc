#include "config/coordinator_config.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace tandem {
namespace {

std::string ErrorOf(const std::string& yaml) {
  auto c = ParseCoordinatorConfig(yaml, "coord.yaml");
  EXPECT_FALSE(c.ok()) << yaml;
  return c.ok() ? "" : std::string(c.status().message());
}

TEST(CoordinatorConfigTest, LoadsTheExampleFile) {
  const char* src = std::getenv("TANDEM_SOURCE_DIR");
  auto c = LoadCoordinatorConfig(std::string(src ? src : ".") + "/config/coordinator.example.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "0.0.0.0:7100");
  EXPECT_EQ(c->http, "0.0.0.0:8000");
  EXPECT_EQ(c->nodes, 2);
  EXPECT_EQ(c->min_nodes, 1);
  EXPECT_EQ(c->planner, PlannerPolicy::kBalanced);
  EXPECT_EQ(c->codec, "auto");
  ASSERT_EQ(c->link_codecs.size(), 1u);
  EXPECT_EQ(c->link_codecs[0].from, "gpu-box-1");
  EXPECT_EQ(c->link_codecs[0].to, "laptop");
  EXPECT_EQ(c->link_codecs[0].codec, "shuffle-lz4");
  EXPECT_EQ(c->chat_template, "");
  EXPECT_EQ(c->max_batch_tokens, 2048);
}

TEST(CoordinatorConfigTest, ParsesManualPlansAndScalarShortcuts) {
  auto c = ParseCoordinatorConfig(
      "nodes: 2\nplanner:\n  policy: manual\n  layers:\n"
      "    - {node: a, begin: 0, end: 10}\n    - {node: b, begin: 10, end: 16}\n"
      "codec: zstd\nchat_template: chatml\nkv_budget: 4GiB\n",
      "coord.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->planner, PlannerPolicy::kManual);
  ASSERT_EQ(c->manual_layers.size(), 2u);
  EXPECT_EQ(c->manual_layers[1].node, "b");
  EXPECT_EQ(c->manual_layers[1].begin, 10);
  EXPECT_EQ(c->manual_layers[1].end, 16);
  EXPECT_EQ(c->codec, "zstd");
  EXPECT_EQ(c->chat_template, "chatml");
  EXPECT_EQ(c->kv_budget, 4ull << 30);
  auto d = ParseCoordinatorConfig("planner: balanced\n", "coord.yaml");
  ASSERT_TRUE(d.ok()) << d.status();
}

TEST(CoordinatorConfigTest, ErrorsNameTheFileLineAndKey) {
  std::string err =
      ErrorOf("planner:\n  policy: manual\n  layers:\n    - {node: a, begin: 0, stop: 4}\n");
  EXPECT_NE(err.find("coord.yaml:4:"), std::string::npos) << err;
  EXPECT_NE(err.find("planner.layers[0].stop"), std::string::npos) << err;

  err = ErrorOf("planner:\n  policy: manual\n  layers:\n    - {node: a, begin: 4, end: 2}\n");
  EXPECT_NE(err.find("planner.layers[0].end"), std::string::npos) << err;
  EXPECT_NE(err.find("coord.yaml:4:"), std::string::npos) << err;

  err = ErrorOf("planner:\n  policy: manual\n  layers:\n    - {node: a, begin: 0}\n");
  EXPECT_NE(err.find("planner.layers[0].end: missing"), std::string::npos) << err;

  err = ErrorOf("planner: greedy\n");
  EXPECT_NE(err.find("coord.yaml:1:"), std::string::npos) << err;
  EXPECT_NE(err.find("balanced, manual"), std::string::npos) << err;

  err = ErrorOf("http: 0.0.0.0:8000\ncodec:\n  default: brotli\n");
  EXPECT_NE(err.find("coord.yaml:3:"), std::string::npos) << err;
  EXPECT_NE(err.find("codec.default"), std::string::npos) << err;

  err = ErrorOf("codec:\n  links:\n    - {from: a, to: b, codec: lz4, level: 3}\n");
  EXPECT_NE(err.find("codec.links[0].level"), std::string::npos) << err;

  // Listen addresses may ask for a free port (logged once bound); others not.
  auto any = ParseCoordinatorConfig("listen: 127.0.0.1:0\nhttp: 127.0.0.1:0\n", "coord.yaml");
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(any->listen, "127.0.0.1:0");
  EXPECT_EQ(any->http, "127.0.0.1:0");
  err = ErrorOf("listen: 127.0.0.1:65536\n");
  EXPECT_NE(err.find("[0, 65535]"), std::string::npos) << err;

  err = ErrorOf("nodes: 0\n");
  EXPECT_NE(err.find("nodes"), std::string::npos) << err;
  EXPECT_NE(err.find("out of range"), std::string::npos) << err;

  err = ErrorOf("max_sequences: lots\n");
  EXPECT_NE(err.find("max_sequences"), std::string::npos) << err;

  err = ErrorOf("chat_template: vicuna\n");
  EXPECT_NE(err.find("chat_template"), std::string::npos) << err;

  err = ErrorOf("nodes: 1\nmin_nodes: 2\n");
  EXPECT_NE(err.find("min_nodes"), std::string::npos) << err;

  err = ErrorOf("apikey: x\n");
  EXPECT_NE(err.find("unknown key"), std::string::npos) << err;
}

TEST(CoordinatorConfigTest, ChecksManualPlansAsAWhole) {
  std::string err = ErrorOf(
      "nodes: 2\nplanner:\n  policy: manual\n  layers:\n"
      "    - {node: a, begin: 0, end: 8}\n    - {node: b, begin: 9, end: 16}\n");
  EXPECT_NE(err.find("contiguous"), std::string::npos) << err;
  err = ErrorOf(
      "nodes: 2\nplanner:\n  policy: manual\n  layers:\n"
      "    - {node: a, begin: 0, end: 8}\n    - {node: a, begin: 8, end: 16}\n");
  EXPECT_NE(err.find("two ranges"), std::string::npos) << err;
  err = ErrorOf("planner:\n  policy: manual\n");
  EXPECT_NE(err.find("planner.layers"), std::string::npos) << err;
  err = ErrorOf("planner:\n  layers:\n    - {node: a, begin: 0, end: 8}\n");
  EXPECT_NE(err.find("only used with policy manual"), std::string::npos) << err;
}

TEST(CoordinatorConfigTest, FlagsOverrideTheFile) {
  CLI::App app("test", "tandem-coordinator");
  CoordinatorConfigFlags flags;
  flags.Register(app);
  const char* src = std::getenv("TANDEM_SOURCE_DIR");
  std::string example = std::string(src ? src : ".") + "/config/coordinator.example.yaml";
  std::vector<std::string> args = {
      "tandem-coordinator", "--config", example, "--nodes", "3", "--codec", "lz4",
      "--api-key",          "secret"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  app.parse(static_cast<int>(argv.size()), argv.data());
  auto c = flags.Resolve();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->nodes, 3);
  EXPECT_EQ(c->codec, "lz4");
  EXPECT_EQ(c->api_key, "secret");
  EXPECT_EQ(c->link_codecs.size(), 1u);  // from the file
  EXPECT_EQ(c->http, "0.0.0.0:8000");
}

}  // namespace
}  // namespace tandem
