#include "coordinator/cluster_status_format.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tandem {

namespace {

bool InPlan(const v1::NodeStatus& n) { return n.last_layer() > n.first_layer(); }

std::string Bytes(uint64_t b) {
  if (b >= (uint64_t{1} << 30)) return absl::StrFormat("%.1fGiB", b / double(uint64_t{1} << 30));
  if (b >= (uint64_t{1} << 20)) return absl::StrFormat("%.1fMiB", b / double(uint64_t{1} << 20));
  if (b >= (uint64_t{1} << 10)) return absl::StrFormat("%.1fKiB", b / double(uint64_t{1} << 10));
  return absl::StrCat(b, "B");
}

std::string Hardware(const v1::NodeStatus& n) {
  std::string out;
  for (const v1::DeviceInfo& d : n.devices()) {
    absl::StrAppend(&out, out.empty() ? "" : "+", d.kind(), d.name().empty() ? "" : ":", d.name());
  }
  if (out.empty()) out = "cpu";
  if (n.calibration().cpu_cores() > 0) {
    absl::StrAppend(&out, " ", n.calibration().threads(), "/", n.calibration().cpu_cores(), "t");
  }
  return out;
}

}  // namespace

nlohmann::json ClusterStatusToJson(const v1::ClusterStatusResponse& s) {
  nlohmann::json nodes = nlohmann::json::array();
  for (const v1::NodeStatus& n : s.nodes()) {
    nlohmann::json devices = nlohmann::json::array();
    for (const v1::DeviceInfo& d : n.devices()) {
      devices.push_back({{"kind", d.kind()}, {"name", d.name()}, {"memory_bytes", d.memory_bytes()}});
    }
    const uint64_t total = n.kv_total_blocks();
    const uint64_t used = total >= n.kv_free_blocks() ? total - n.kv_free_blocks() : 0;
    nodes.push_back({
        {"name", n.node_id()},
        {"address", n.address()},
        {"state", n.state()},
        {"healthy", n.healthy()},
        {"stage", InPlan(n) ? nlohmann::json(n.stage_index()) : nlohmann::json(nullptr)},
        {"layers", InPlan(n) ? nlohmann::json({n.first_layer(), n.last_layer()})
                             : nlohmann::json(nullptr)},
        {"devices", devices},
        {"cpu_cores", n.calibration().cpu_cores()},
        {"threads", n.calibration().threads()},
        {"memory_budget_bytes", n.calibration().memory_budget_bytes()},
        {"kv",
         {{"total_blocks", total},
          {"free_blocks", n.kv_free_blocks()},
          {"used_fraction", total > 0 ? static_cast<double>(used) / total : 0.0}}},
        {"compute_ms_per_step", n.compute_ms_per_step()},
        {"busy_fraction", n.busy_fraction()},
        {"link",
         {{"raw_bytes", n.link_raw_bytes()},
          {"wire_bytes", n.link_wire_bytes()},
          {"codec", n.link_codec()}}},
        {"last_heartbeat_ms_ago", n.last_heartbeat_ms_ago()},
    });
  }
  nlohmann::json notes = nlohmann::json::array();
  for (const std::string& note : s.plan_notes()) notes.push_back(note);
  return {
      {"state", s.state()},
      {"model",
       {{"name", s.model_name()}, {"fingerprint", s.model_fingerprint()}, {"num_layers", s.num_layers()}}},
      {"requests", {{"waiting", s.requests_waiting()}, {"running", s.requests_running()}}},
      {"predicted_tokens_per_s", s.predicted_tokens_per_s()},
      {"plan_notes", notes},
      {"nodes", nodes},
  };
}

std::string FormatClusterStatus(const v1::ClusterStatusResponse& s) {
  std::string out = absl::StrFormat(
      "cluster %s: %s, %u layers (model %s); %u running, %u waiting", s.state(), s.model_name(),
      s.num_layers(), s.model_fingerprint(), s.requests_running(), s.requests_waiting());
  if (s.predicted_tokens_per_s() > 0) {
    absl::StrAppend(&out, absl::StrFormat("; plan predicts %.1f tokens/s", s.predicted_tokens_per_s()));
  }
  absl::StrAppend(&out, "\n");
  absl::StrAppend(&out, absl::StrFormat("%-5s %-14s %-21s %-10s %-16s %-9s %-12s %-9s %-6s %s\n",
                                        "stage", "node", "address", "state", "hardware", "layers",
                                        "kv used", "ms/step", "busy", "link raw/wire codec"));
  for (const v1::NodeStatus& n : s.nodes()) {
    const uint64_t total = n.kv_total_blocks();
    const uint64_t used = total >= n.kv_free_blocks() ? total - n.kv_free_blocks() : 0;
    std::string link = "-";
    if (n.link_raw_bytes() > 0) {
      link = absl::StrCat(Bytes(n.link_raw_bytes()), "/", Bytes(n.link_wire_bytes()), " ",
                          n.link_codec().empty() ? "none" : n.link_codec());
    }
    absl::StrAppend(
        &out,
        absl::StrFormat(
            "%-5s %-14s %-21s %-10s %-16s %-9s %-12s %-9s %-6s %s\n",
            InPlan(n) ? absl::StrCat(n.stage_index()) : "-", n.node_id(), n.address(), n.state(),
            Hardware(n),
            InPlan(n) ? absl::StrCat(n.first_layer(), "-", n.last_layer() - 1) : "-",
            total > 0 ? absl::StrCat(used, "/", total, " blk") : "-",
            absl::StrFormat("%.2f", n.compute_ms_per_step()),
            absl::StrFormat("%.0f%%", 100 * n.busy_fraction()), link));
  }
  for (const std::string& note : s.plan_notes()) absl::StrAppend(&out, "note: ", note, "\n");
  return out;
}

}  // namespace tandem
