#include "config/node_config.h"

#include <cstdlib>
#include <vector>

#include "core/cli.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

std::string ErrorOf(const std::string& yaml) {
  auto c = ParseNodeConfig(yaml, "node.yaml");
  EXPECT_FALSE(c.ok()) << yaml;
  return c.ok() ? "" : std::string(c.status().message());
}

std::string SourceFile(const std::string& rel) {
  const char* src = std::getenv("TANDEM_SOURCE_DIR");
  return std::string(src ? src : ".") + "/" + rel;
}

TEST(NodeConfigTest, LoadsTheExampleFile) {
  auto c = LoadNodeConfig(SourceFile("config/node.example.yaml"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "gpu-box-1");
  EXPECT_EQ(c->listen, "0.0.0.0:7101");
  EXPECT_EQ(c->advertise, "10.0.0.5:7101");
  EXPECT_EQ(c->memory_budget, 8ull << 30);
  EXPECT_EQ(c->kv_budget, 2ull << 30);
  EXPECT_EQ(c->devices, (std::vector<DeviceId>{DeviceId{}}));
  EXPECT_EQ(c->quantize, Quantize::kNone);
  EXPECT_EQ(c->model, "models/demo");
}

TEST(NodeConfigTest, EmptyFileGivesDefaults) {
  auto c = ParseNodeConfig("", "node.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "0.0.0.0:7101");
  EXPECT_EQ(c->threads, 0);
  EXPECT_EQ(c->memory_budget, 0u);
  EXPECT_EQ(DevicesToString(c->devices), "cpu");
  EXPECT_EQ(c->log_level, "info");
}

TEST(NodeConfigTest, ParsesDevicesSizesAndEnums) {
  auto c = ParseNodeConfig(
      "devices: [\"cuda:0,1\", \"cuda:3\"]\nmemory_budget: 512MiB\nkv_budget: 1000\n"
      "quantize: int4\nthreads: 12\n",
      "node.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(DevicesToString(c->devices), "cuda:0,1,3");
  EXPECT_EQ(c->devices[2], (DeviceId{DeviceKind::kCuda, 3}));
  EXPECT_EQ(c->memory_budget, 512ull << 20);
  EXPECT_EQ(c->kv_budget, 1000u);
  EXPECT_EQ(c->quantize, Quantize::kInt4);
  EXPECT_EQ(c->threads, 12);
  auto scalar = ParseNodeConfig("devices: cuda:2\n", "node.yaml");
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_EQ(DevicesToString(scalar->devices), "cuda:2");
}

TEST(NodeConfigTest, ErrorsNameTheFileLineAndKey) {
  std::string err = ErrorOf("listen: 0.0.0.0:7101\nthreds: 4\n");
  EXPECT_NE(err.find("node.yaml:2:"), std::string::npos) << err;
  EXPECT_NE(err.find("threds"), std::string::npos) << err;
  EXPECT_NE(err.find("unknown key"), std::string::npos) << err;

  err = ErrorOf("name: a\n\nthreads: 100000\n");
  EXPECT_NE(err.find("node.yaml:3:"), std::string::npos) << err;
  EXPECT_NE(err.find("threads"), std::string::npos) << err;
  EXPECT_NE(err.find("out of range"), std::string::npos) << err;

  err = ErrorOf("threads: [1, 2]\n");
  EXPECT_NE(err.find("node.yaml:1:"), std::string::npos) << err;
  EXPECT_NE(err.find("got a list"), std::string::npos) << err;

  err = ErrorOf("memory_budget: lots\n");
  EXPECT_NE(err.find("memory_budget"), std::string::npos) << err;
  EXPECT_NE(err.find("byte size"), std::string::npos) << err;

  err = ErrorOf("quantize: fp8\n");
  EXPECT_NE(err.find("quantize"), std::string::npos) << err;
  EXPECT_NE(err.find("none, int8, int4"), std::string::npos) << err;

  err = ErrorOf("listen: nowhere\n");
  EXPECT_NE(err.find("listen"), std::string::npos) << err;
  // Port 0 asks the node to pick a free port to listen on; a port to dial
  // must be a real one.
  auto any = ParseNodeConfig("listen: 127.0.0.1:0\n", "node.yaml");
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(any->listen, "127.0.0.1:0");
  err = ErrorOf("coordinator: 127.0.0.1:0\n");
  EXPECT_NE(err.find("coordinator"), std::string::npos) << err;
  err = ErrorOf("advertise: 10.0.0.5:0\n");
  EXPECT_NE(err.find("advertise"), std::string::npos) << err;

  err = ErrorOf("devices: [cpu, \"cuda:0\"]\n");
  EXPECT_NE(err.find("devices"), std::string::npos) << err;
  err = ErrorOf("devices: [\"cuda:0,0\"]\n");
  EXPECT_NE(err.find("twice"), std::string::npos) << err;
  err = ErrorOf("devices: [gpu]\n");
  EXPECT_NE(err.find("'gpu'"), std::string::npos) << err;

  err = ErrorOf("threads: 1\nthreads: 2\n");
  EXPECT_NE(err.find("node.yaml:2:"), std::string::npos) << err;

  err = ErrorOf("name: [unclosed\n");
  EXPECT_NE(err.find("node.yaml:"), std::string::npos) << err;
  EXPECT_NE(err.find("invalid YAML"), std::string::npos) << err;

  err = ErrorOf("- a\n- b\n");
  EXPECT_NE(err.find("mapping"), std::string::npos) << err;

  err = ErrorOf("memory_budget: 1GiB\nkv_budget: 2GiB\n");
  EXPECT_NE(err.find("kv_budget"), std::string::npos) << err;
}

// Parses argv with the flags registered the way the binaries do.
StatusOr<NodeConfig> Resolve(std::vector<std::string> args) {
  CLI::App app("test", "tandem-node");
  std::string log_level = "warn";
  AddCommonFlags(app, &log_level);  // brings its own --log-level, which the flags reuse
  NodeConfigFlags flags;
  flags.Register(app);
  std::vector<char*> argv;
  std::string prog = "tandem-node";
  argv.push_back(prog.data());
  for (auto& a : args) argv.push_back(a.data());
  app.parse(static_cast<int>(argv.size()), argv.data());
  return flags.Resolve();
}

TEST(NodeConfigTest, FlagsOverrideTheFile) {
  const std::string example = SourceFile("config/node.example.yaml");
  auto c = Resolve({"--config", example, "--memory-budget", "12GiB", "--devices", "cuda:0,1",
                    "--log-level", "debug"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->memory_budget, 12ull << 30);  // flag
  EXPECT_EQ(c->kv_budget, 2ull << 30);       // file
  EXPECT_EQ(c->name, "gpu-box-1");           // file
  EXPECT_EQ(DevicesToString(c->devices), "cuda:0,1");
  EXPECT_EQ(c->log_level, "debug");

  auto defaults = Resolve({"--threads", "3"});
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->threads, 3);
  EXPECT_EQ(defaults->listen, "0.0.0.0:7101");

  auto bad = Resolve({"--threads", "many"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--threads"), std::string::npos) << bad.status();

  auto cross = Resolve({"--config", example, "--memory-budget", "1GiB"});
  ASSERT_FALSE(cross.ok());
  EXPECT_NE(cross.status().message().find("kv_budget"), std::string::npos) << cross.status();

  auto missing = Resolve({"--config", "/nonexistent/node.yaml"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/node.yaml"), std::string::npos);
}

}  // namespace
}  // namespace tandem
