#include "coordinator/layer_planner.h"

#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kGiB = size_t{1} << 30;

// A 32-layer model of 200 MiB layers, 500 MiB embedding, 500 MiB head.
PlannerModel Model(int layers = 32) {
  PlannerModel m;
  m.num_layers = layers;
  m.layer_bytes = 200 * kMiB;
  m.embedding_bytes = 500 * kMiB;
  m.head_bytes = 500 * kMiB;
  m.kv_bytes_per_token_layer = 4096;
  m.hidden_bytes_per_token = 8192;
  return m;
}

NodeProfile Node(std::string name, double layer_ms, size_t memory = 64 * kGiB) {
  NodeProfile n;
  n.name = std::move(name);
  n.decode_layer_ms = layer_ms;
  n.head_ms = 0;
  n.memory_bytes = memory;
  return n;
}

int Layers(const Plan& plan, const std::string& node) {
  for (const StagePlan& s : plan.stages)
    if (s.node == node) return s.end - s.begin;
  return 0;
}

void ExpectContiguousAndWithinMemory(const Plan& plan, int num_layers) {
  int next = 0;
  for (const StagePlan& s : plan.stages) {
    EXPECT_EQ(s.begin, next);
    EXPECT_LT(s.begin, s.end);
    EXPECT_LE(s.weight_bytes + s.kv_bytes, s.memory_bytes) << s.node;
    next = s.end;
  }
  EXPECT_EQ(next, num_layers);
}

TEST(LayerPlannerTest, FourTimesSlowerNodeGetsAboutAFifth) {
  auto plan = PlanLayers(Model(40), {Node("fast", 1.0), Node("slow", 4.0)});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Layers(*plan, "slow"), 8);
  EXPECT_EQ(Layers(*plan, "fast"), 32);
  EXPECT_DOUBLE_EQ(plan->bottleneck_ms, 32.0);
  ExpectContiguousAndWithinMemory(*plan, 40);
}

TEST(LayerPlannerTest, MemoryLimitsAreNeverExceeded) {
  // The fast node can hold only 6 layers; the rest must go to the slow one.
  size_t six_layers = 6 * (200 * kMiB + 4096 * 4096) + 500 * kMiB;
  auto plan = PlanLayers(Model(32), {Node("fast", 1.0, six_layers), Node("slow", 5.0)});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_LE(Layers(*plan, "fast"), 6);
  ExpectContiguousAndWithinMemory(*plan, 32);
}

TEST(LayerPlannerTest, MixedClustersOfThreeToEightNodes) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> speed(0.5, 6.0);
  std::uniform_int_distribution<int> gib(3, 12);
  for (int n = 3; n <= 8; ++n) {
    std::vector<NodeProfile> nodes;
    for (int i = 0; i < n; ++i) {
      nodes.push_back(Node(absl::StrCat("n", i), speed(rng), gib(rng) * kGiB));
    }
    auto plan = PlanLayers(Model(32), nodes);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ExpectContiguousAndWithinMemory(*plan, 32);
    EXPECT_EQ(plan->stages.size() + plan->excluded.size(), nodes.size());
    // No single node that fits everything could beat the plan.
    for (const NodeProfile& node : nodes) {
      auto alone = PlanManual(Model(32), nodes, {{node.name, 0, 32}});
      if (alone.ok()) {
        EXPECT_LE(plan->bottleneck_ms, alone->bottleneck_ms + 1e-9);
      }
    }
  }
}

TEST(LayerPlannerTest, EqualNodesSplitEvenly) {
  auto plan = PlanLayers(Model(32), {Node("a", 1.0), Node("b", 1.0), Node("c", 1.0),
                                     Node("d", 1.0)});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->stages.size(), 4u);
  for (const StagePlan& s : plan->stages) EXPECT_EQ(s.end - s.begin, 8);
}

TEST(LayerPlannerTest, NodeThatWouldSlowThePipelineIsLeftOut) {
  // A very slow link makes the second hop cost more than it saves.
  NodeProfile fast = Node("fast", 1.0);
  NodeProfile far = Node("far", 1.0);
  fast.link_bytes_per_s = 1000;  // 8 KiB per token takes 8 s to send
  far.link_bytes_per_s = 1000;
  auto plan = PlanLayers(Model(8), {fast, far});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->stages.size(), 1u);
  ASSERT_EQ(plan->excluded.size(), 1u);
  EXPECT_NE(plan->excluded[0].find("would not speed up"), std::string::npos) << plan->excluded[0];
}

TEST(LayerPlannerTest, TinyNodeIsLeftOutForMemory) {
  auto plan = PlanLayers(Model(8), {Node("big", 1.0), Node("tiny", 0.1, 10 * kMiB)});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->excluded.size(), 1u);
  EXPECT_NE(plan->excluded[0].find("tiny"), std::string::npos);
  EXPECT_NE(plan->excluded[0].find("memory"), std::string::npos);
}

TEST(LayerPlannerTest, InfeasibleClusterNamesTheShortfall) {
  auto plan = PlanLayers(Model(32), {Node("a", 1.0, 2 * kGiB), Node("b", 1.0, 2 * kGiB)});
  ASSERT_FALSE(plan.ok());
  std::string msg(plan.status().message());
  EXPECT_NE(msg.find("short"), std::string::npos) << msg;
  EXPECT_NE(msg.find("a 2.00 GiB"), std::string::npos) << msg;
}

TEST(LayerPlannerTest, LargeClusterUsesTheOrderedHeuristic) {
  std::vector<NodeProfile> nodes;
  for (int i = 0; i < 16; ++i) nodes.push_back(Node(absl::StrCat("n", i), 1.0 + i % 3, 4 * kGiB));
  auto plan = PlanLayers(Model(64), nodes);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ExpectContiguousAndWithinMemory(*plan, 64);
}

TEST(LayerPlannerTest, RejectsBadProfiles) {
  EXPECT_FALSE(PlanLayers(Model(), {}).ok());
  EXPECT_FALSE(PlanLayers(Model(), {Node("a", 0.0)}).ok());
  EXPECT_FALSE(PlanLayers(Model(), {Node("a", 1.0), Node("a", 1.0)}).ok());
}

TEST(LayerPlannerTest, ManualRangesAreValidated) {
  std::vector<NodeProfile> nodes = {Node("a", 1.0), Node("b", 2.0)};
  auto ok = PlanManual(Model(32), nodes, {{"a", 0, 20}, {"b", 20, 32}});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_DOUBLE_EQ(ok->bottleneck_ms, 24.0);

  auto message = [&](std::vector<ManualRange> r) {
    auto p = PlanManual(Model(32), nodes, r);
    EXPECT_FALSE(p.ok());
    return std::string(p.status().message());
  };
  EXPECT_NE(message({{"a", 0, 10}, {"b", 12, 32}}).find("not assigned"), std::string::npos);
  EXPECT_NE(message({{"a", 0, 20}, {"b", 18, 32}}).find("overlaps"), std::string::npos);
  EXPECT_NE(message({{"a", 0, 20}, {"b", 20, 40}}).find("within"), std::string::npos);
  EXPECT_NE(message({{"a", 0, 20}}).find("[20, 32) are not assigned"), std::string::npos);
  EXPECT_NE(message({{"c", 0, 32}}).find("not a known node"), std::string::npos);
  EXPECT_NE(message({{"a", 0, 10}, {"a", 10, 32}}).find("more than one"), std::string::npos);
  std::vector<NodeProfile> small = {Node("a", 1.0, 1 * kGiB), Node("b", 1.0)};
  auto p = PlanManual(Model(32), small, {{"a", 0, 16}, {"b", 16, 32}});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("cannot hold"), std::string::npos) << p.status();
}

}  // namespace
}  // namespace tandem
