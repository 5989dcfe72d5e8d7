#pragma once
// How `tandem status` shows a ClusterStatusResponse: one JSON object
// (--json) or a table for people.
#include <string>

#include "nlohmann/json.hpp"
#include "tandem/v1/coordinator.pb.h"

namespace tandem {

// {"state", "model": {"name", "fingerprint", "num_layers"},
//  "requests": {"waiting", "running"}, "predicted_tokens_per_s", "plan_notes",
//  "nodes": [{"name", "address", "state", "healthy", "stage", "layers": [first, last)
//             or null, "devices": [{"kind", "name", "memory_bytes"}], "cpu_cores",
//             "threads", "memory_budget_bytes", "kv": {"total_blocks", "free_blocks",
//             "used_fraction"}, "compute_ms_per_step", "busy_fraction",
//             "link": {"raw_bytes", "wire_bytes", "codec"}, "last_heartbeat_ms_ago"}]}
nlohmann::json ClusterStatusToJson(const v1::ClusterStatusResponse& status);

// A header line per cluster and a row per node.
std::string FormatClusterStatus(const v1::ClusterStatusResponse& status);

}  // namespace tandem
