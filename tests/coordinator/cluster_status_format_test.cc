#include "coordinator/cluster_status_format.h"

#include "gtest/gtest.h"

namespace tandem {
namespace {

v1::ClusterStatusResponse Sample() {
  v1::ClusterStatusResponse s;
  s.set_state("ready");
  s.set_model_name("LlamaForCausalLM");
  s.set_model_fingerprint("00112233aabbccdd");
  s.set_num_layers(16);
  s.set_requests_running(3);
  s.set_requests_waiting(1);
  s.set_predicted_tokens_per_s(42.5);
  s.add_plan_notes("slow: left out, would slow the pipeline");
  for (int i = 0; i < 2; ++i) {
    v1::NodeStatus* n = s.add_nodes();
    n->set_node_id(i == 0 ? "gpu-box" : "laptop");
    n->set_address(i == 0 ? "10.0.0.1:7200" : "10.0.0.2:7200");
    n->set_state("ready");
    n->set_healthy(true);
    n->set_stage_index(static_cast<uint32_t>(i));
    n->set_first_layer(i == 0 ? 0 : 10);
    n->set_last_layer(i == 0 ? 10 : 16);
    n->set_kv_total_blocks(200);
    n->set_kv_free_blocks(150);
    n->set_busy_fraction(i == 0 ? 0.875 : 0.5);
    n->set_compute_ms_per_step(i == 0 ? 12.25 : 7.5);
    n->set_link_raw_bytes(i == 0 ? 4096 : 0);
    n->set_link_wire_bytes(i == 0 ? 1024 : 0);
    n->set_link_codec(i == 0 ? "shuffle-lz4" : "");
    v1::DeviceInfo* d = n->add_devices();
    d->set_kind(i == 0 ? "cuda" : "cpu");
    d->set_name(i == 0 ? "H100" : "");
    d->set_memory_bytes(1 << 20);
    n->mutable_calibration()->set_cpu_cores(8);
    n->mutable_calibration()->set_threads(4);
  }
  v1::NodeStatus* down = s.add_nodes();
  down->set_node_id("old");
  down->set_state("down");
  return s;
}

TEST(ClusterStatusFormatTest, JsonCarriesEveryFigure) {
  const nlohmann::json j = ClusterStatusToJson(Sample());
  EXPECT_EQ(j["state"], "ready");
  EXPECT_EQ(j["model"]["num_layers"], 16);
  EXPECT_EQ(j["model"]["fingerprint"], "00112233aabbccdd");
  EXPECT_EQ(j["requests"]["running"], 3);
  EXPECT_EQ(j["requests"]["waiting"], 1);
  EXPECT_DOUBLE_EQ(j["predicted_tokens_per_s"].get<double>(), 42.5);
  ASSERT_EQ(j["plan_notes"].size(), 1u);
  ASSERT_EQ(j["nodes"].size(), 3u);
  const nlohmann::json& n0 = j["nodes"][0];
  EXPECT_EQ(n0["name"], "gpu-box");
  EXPECT_EQ(n0["stage"], 0);
  EXPECT_EQ(n0["layers"], nlohmann::json({0, 10}));
  EXPECT_EQ(n0["devices"][0]["kind"], "cuda");
  EXPECT_EQ(n0["cpu_cores"], 8);
  EXPECT_EQ(n0["kv"]["total_blocks"], 200);
  EXPECT_EQ(n0["kv"]["free_blocks"], 150);
  EXPECT_DOUBLE_EQ(n0["kv"]["used_fraction"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(n0["busy_fraction"].get<double>(), 0.875);
  EXPECT_DOUBLE_EQ(n0["compute_ms_per_step"].get<double>(), 12.25);
  EXPECT_EQ(n0["link"]["raw_bytes"], 4096);
  EXPECT_EQ(n0["link"]["wire_bytes"], 1024);
  EXPECT_EQ(n0["link"]["codec"], "shuffle-lz4");
  EXPECT_EQ(j["nodes"][1]["layers"], nlohmann::json({10, 16}));
  // A node outside the plan has no stage or layers.
  EXPECT_TRUE(j["nodes"][2]["stage"].is_null());
  EXPECT_TRUE(j["nodes"][2]["layers"].is_null());
  EXPECT_EQ(j["nodes"][2]["state"], "down");
}

TEST(ClusterStatusFormatTest, TableShowsEachNode) {
  const std::string t = FormatClusterStatus(Sample());
  EXPECT_NE(t.find("cluster ready"), std::string::npos) << t;
  EXPECT_NE(t.find("gpu-box"), std::string::npos);
  EXPECT_NE(t.find("0-9 "), std::string::npos) << t;  // inclusive: layers 0..9
  EXPECT_NE(t.find("10-15"), std::string::npos) << t;
  EXPECT_NE(t.find("50/200 blk"), std::string::npos) << t;
  EXPECT_NE(t.find("88%"), std::string::npos) << t;
  EXPECT_NE(t.find("4.0KiB/1.0KiB shuffle-lz4"), std::string::npos) << t;
  EXPECT_NE(t.find("down"), std::string::npos);
  EXPECT_NE(t.find("note: slow: left out"), std::string::npos);
}

}  // namespace
}  // namespace tandem
