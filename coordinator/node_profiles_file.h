#pragma once
// Node profiles for offline planning (`tandem plan --nodes nodes.yaml`):
//
//   nodes:
//     - name: gpu-box          # required, unique
//       memory: 24GiB          # required: budget for weights + KV
//       decode_layer_ms: 0.12  # required: one layer, one decode token
//       head_ms: 0.8           # optional: final norm + lm_head (default: estimated)
//       link: 1Gbit/s          # optional: towards the next stage (default: unlimited)
//       latency_ms: 0.5        # optional: one way (default 0)
//
// Errors name the file, line, column and key.
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/layer_planner.h"
#include "core/status.h"

namespace tandem {

// "1Gbit/s", "100Mbit/s", "10kbit/s", "125MB/s", "1.5GiB/s", "800KiB/s", or a
// plain number of bytes per second.
StatusOr<double> ParseLinkRate(std::string_view text);

StatusOr<std::vector<NodeProfile>> ParseNodeProfiles(std::string_view yaml,
                                                     const std::string& file);
StatusOr<std::vector<NodeProfile>> LoadNodeProfiles(const std::string& path);

}  // namespace tandem
