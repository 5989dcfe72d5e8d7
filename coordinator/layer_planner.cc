#include "coordinator/layer_planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/check.h"
#include "model/model_spec.h"

namespace tandem {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string Bytes(size_t b) {
  if (b >= (size_t{1} << 30)) return absl::StrFormat("%.2f GiB", b / double(size_t{1} << 30));
  if (b >= (size_t{1} << 20)) return absl::StrFormat("%.1f MiB", b / double(size_t{1} << 20));
  return absl::StrFormat("%zu B", b);
}

// Costs of one node holding layers [begin, end).
struct StageCost {
  bool fits = false;
  size_t weight_bytes = 0;
  size_t kv_bytes = 0;
  double compute_ms = 0;
  double transfer_ms = 0;  // serialisation onto the link; 0 on the last stage
  double latency_ms = 0;   // compute + transfer + link latency
  double step_ms() const { return compute_ms + transfer_ms; }
};

class CostModel {
 public:
  CostModel(const PlannerModel& model, const PlannerOptions& options)
      : model_(model), options_(options) {}

  StageCost Cost(const NodeProfile& node, int begin, int end) const {
    StageCost c;
    const int layers = end - begin;
    const bool first = begin == 0;
    const bool last = end == model_.num_layers;
    c.weight_bytes = static_cast<size_t>(layers) * model_.layer_bytes;
    if (first) c.weight_bytes += model_.embedding_bytes;
    if (last) {
      c.weight_bytes += model_.head_bytes;
      if (model_.tied_embeddings && !first) c.weight_bytes += model_.embedding_bytes;
    }
    c.kv_bytes = options_.kv_tokens * static_cast<size_t>(layers) * model_.kv_bytes_per_token_layer;
    c.fits = c.weight_bytes + c.kv_bytes <= node.memory_bytes;
    c.compute_ms = layers * node.decode_layer_ms;
    if (last) c.compute_ms += HeadMs(node);
    if (!last) {
      double bytes = static_cast<double>(model_.hidden_bytes_per_token) * options_.step_tokens;
      c.transfer_ms = node.link_bytes_per_s > 0 ? bytes / node.link_bytes_per_s * 1000 : 0;
      c.latency_ms = c.compute_ms + c.transfer_ms + node.link_latency_ms;
    } else {
      c.latency_ms = c.compute_ms;
    }
    return c;
  }

  // Most layers `node` can hold in the middle of the pipeline.
  int MaxMiddleLayers(const NodeProfile& node) const {
    size_t per_layer =
        model_.layer_bytes + options_.kv_tokens * model_.kv_bytes_per_token_layer;
    return per_layer == 0 ? model_.num_layers : static_cast<int>(node.memory_bytes / per_layer);
  }

 private:
  double HeadMs(const NodeProfile& node) const {
    if (node.head_ms >= 0) return node.head_ms;
    size_t matrix = model_.tied_embeddings ? model_.embedding_bytes : model_.head_bytes;
    if (model_.layer_bytes == 0) return 0;
    return node.decode_layer_ms * static_cast<double>(matrix) / model_.layer_bytes;
  }

  const PlannerModel& model_;
  const PlannerOptions& options_;
};

Status ValidateInputs(const PlannerModel& model, const std::vector<NodeProfile>& nodes,
                      const PlannerOptions& options) {
  if (model.num_layers <= 0) return absl::InvalidArgumentError("the model has no layers");
  if (nodes.empty()) return absl::InvalidArgumentError("no nodes to plan for");
  if (options.step_tokens <= 0 || options.tolerance < 0) {
    return absl::InvalidArgumentError("planner options: step_tokens must be > 0, tolerance >= 0");
  }
  std::set<std::string> names;
  for (const NodeProfile& n : nodes) {
    if (n.name.empty()) return absl::InvalidArgumentError("a node profile has no name");
    if (!names.insert(n.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("node '", n.name, "' is listed twice"));
    }
    if (!(n.decode_layer_ms > 0) || !std::isfinite(n.decode_layer_ms)) {
      return absl::InvalidArgumentError(
          absl::StrCat("node '", n.name, "': decode_layer_ms must be a positive time"));
    }
    if (n.link_bytes_per_s < 0 || n.link_latency_ms < 0 || !std::isfinite(n.link_latency_ms)) {
      return absl::InvalidArgumentError(
          absl::StrCat("node '", n.name, "': link bandwidth and latency must not be negative"));
    }
  }
  return absl::OkStatus();
}

Plan BuildPlan(const CostModel& costs, const std::vector<NodeProfile>& nodes,
               const std::vector<std::pair<int, std::pair<int, int>>>& stages) {
  Plan plan;
  for (const auto& [index, range] : stages) {
    const NodeProfile& node = nodes[index];
    StageCost c = costs.Cost(node, range.first, range.second);
    StagePlan s;
    s.node = node.name;
    s.begin = range.first;
    s.end = range.second;
    s.weight_bytes = c.weight_bytes;
    s.kv_bytes = c.kv_bytes;
    s.memory_bytes = node.memory_bytes;
    s.compute_ms = c.compute_ms;
    s.transfer_ms = c.transfer_ms;
    plan.bottleneck_ms = std::max(plan.bottleneck_ms, c.step_ms());
    plan.latency_ms += c.latency_ms;
    plan.stages.push_back(s);
  }
  return plan;
}

void ExplainExclusions(const CostModel& costs, const std::vector<NodeProfile>& nodes, Plan& plan) {
  std::set<std::string> used;
  for (const StagePlan& s : plan.stages) used.insert(s.node);
  for (const NodeProfile& n : nodes) {
    if (used.count(n.name)) continue;
    if (costs.MaxMiddleLayers(n) == 0) {
      plan.excluded.push_back(absl::StrCat(n.name, ": ", Bytes(n.memory_bytes),
                                           " of memory does not hold one layer and its KV"));
    } else {
      plan.excluded.push_back(
          absl::StrCat(n.name, ": including it would not speed up the pipeline"));
    }
  }
}

Status InfeasibleError(const PlannerModel& model, const std::vector<NodeProfile>& nodes,
                       const PlannerOptions& options, const CostModel& costs) {
  size_t weights = static_cast<size_t>(model.num_layers) * model.layer_bytes +
                   model.embedding_bytes + model.head_bytes;
  size_t kv = options.kv_tokens * static_cast<size_t>(model.num_layers) *
              model.kv_bytes_per_token_layer;
  size_t total = 0;
  std::string per_node;
  for (const NodeProfile& n : nodes) {
    total += n.memory_bytes;
    absl::StrAppend(&per_node, per_node.empty() ? "" : ", ", n.name, " ", Bytes(n.memory_bytes),
                    " (at most ", costs.MaxMiddleLayers(n), " layers)");
  }
  if (total < weights + kv) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the cluster cannot hold the model: it needs ", Bytes(weights + kv), " (weights ",
        Bytes(weights), " + KV for ", options.kv_tokens, " tokens ", Bytes(kv), ") but the nodes have ",
        Bytes(total), " in all, ", Bytes(weights + kv - total), " short; nodes: ", per_node));
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "the model's ", model.num_layers, " layers cannot be split to fit the nodes' memory (",
      "the first stage also holds the embedding, ", Bytes(model.embedding_bytes),
      ", the last the head, ", Bytes(model.head_bytes), "); nodes: ", per_node));
}

// Exact: every subset and order. dp over (set of nodes used, layers placed).
std::vector<std::pair<int, std::pair<int, int>>> PlanExact(const CostModel& costs,
                                                           const std::vector<NodeProfile>& nodes,
                                                           int num_layers, double tolerance) {
  const int n = static_cast<int>(nodes.size());
  const int masks = 1 << n;
  const int L = num_layers;
  struct Cell {
    double bottleneck = kInf;
    double latency = kInf;
    int prev_layers = -1;
    int node = -1;
  };
  std::vector<Cell> dp(static_cast<size_t>(masks) * (L + 1));
  auto at = [&](int mask, int l) -> Cell& { return dp[static_cast<size_t>(mask) * (L + 1) + l]; };
  at(0, 0) = {0, 0, -1, -1};
  for (int mask = 0; mask < masks; ++mask) {
    for (int l = 0; l < L; ++l) {
      const Cell& from = at(mask, l);
      if (from.bottleneck == kInf) continue;
      for (int i = 0; i < n; ++i) {
        if (mask & (1 << i)) continue;
        for (int e = l + 1; e <= L; ++e) {
          StageCost c = costs.Cost(nodes[i], l, e);
          if (!c.fits) break;  // longer ranges (and the head at e == L) only need more
          double b = std::max(from.bottleneck, c.step_ms());
          double lat = from.latency + c.latency_ms;
          Cell& to = at(mask | (1 << i), e);
          if (b < to.bottleneck || (b == to.bottleneck && lat < to.latency)) {
            to = {b, lat, l, i};
          }
        }
      }
    }
  }
  double best = kInf;
  for (int mask = 1; mask < masks; ++mask) best = std::min(best, at(mask, L).bottleneck);
  if (best == kInf) return {};
  // Among plans within tolerance of the best, the fewest nodes, then the
  // lowest bottleneck, then the lowest latency.
  int chosen = -1;
  for (int mask = 1; mask < masks; ++mask) {
    const Cell& c = at(mask, L);
    if (c.bottleneck > best * (1 + tolerance)) continue;
    if (chosen < 0) {
      chosen = mask;
      continue;
    }
    const Cell& b = at(chosen, L);
    int pc = __builtin_popcount(mask), pb = __builtin_popcount(chosen);
    if (pc != pb ? pc < pb
                 : (c.bottleneck != b.bottleneck ? c.bottleneck < b.bottleneck
                                                 : c.latency < b.latency)) {
      chosen = mask;
    }
  }
  std::vector<std::pair<int, std::pair<int, int>>> stages;
  int mask = chosen, l = L;
  while (l > 0) {
    const Cell& c = at(mask, l);
    stages.push_back({c.node, {c.prev_layers, l}});
    mask &= ~(1 << c.node);
    l = c.prev_layers;
  }
  std::reverse(stages.begin(), stages.end());
  return stages;
}

// Heuristic for large clusters: nodes in order of speed, each used or skipped.
std::vector<std::pair<int, std::pair<int, int>>> PlanOrdered(
    const CostModel& costs, const std::vector<NodeProfile>& nodes, int num_layers) {
  std::vector<int> order(nodes.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return nodes[a].decode_layer_ms < nodes[b].decode_layer_ms;
  });
  const int n = static_cast<int>(order.size());
  const int L = num_layers;
  struct Cell {
    double bottleneck = kInf;
    double latency = kInf;
    int prev_layers = -1;  // -1: node skipped
  };
  // dp[k][l]: the first k nodes of `order` placed layers [0, l).
  std::vector<std::vector<Cell>> dp(n + 1, std::vector<Cell>(L + 1));
  dp[0][0] = {0, 0, -1};
  for (int k = 1; k <= n; ++k) {
    const NodeProfile& node = nodes[order[k - 1]];
    for (int e = 0; e <= L; ++e) {
      Cell best = dp[k - 1][e];
      best.prev_layers = -1;
      for (int b = 0; b < e; ++b) {
        const Cell& from = dp[k - 1][b];
        if (from.bottleneck == kInf) continue;
        StageCost c = costs.Cost(node, b, e);
        if (!c.fits) continue;
        double bn = std::max(from.bottleneck, c.step_ms());
        double lat = from.latency + c.latency_ms;
        if (bn < best.bottleneck || (bn == best.bottleneck && lat < best.latency)) {
          best = {bn, lat, b};
        }
      }
      dp[k][e] = best;
    }
  }
  if (dp[n][L].bottleneck == kInf) return {};
  std::vector<std::pair<int, std::pair<int, int>>> stages;
  int l = L;
  for (int k = n; k >= 1 && l > 0; --k) {
    const Cell& c = dp[k][l];
    if (c.prev_layers < 0) continue;
    stages.push_back({order[k - 1], {c.prev_layers, l}});
    l = c.prev_layers;
  }
  std::reverse(stages.begin(), stages.end());
  return stages;
}

}  // namespace

PlannerModel PlannerModelFromSpec(const ModelSpec& spec, int weight_dtype_bits,
                                  int kv_dtype_bits) {
  auto weight_type = weight_dtype_bits == 32 ? DType::kF32
                     : weight_dtype_bits == 8 ? DType::kI8
                     : weight_dtype_bits == 4 ? DType::kI4
                                              : DType::kBF16;
  auto kv_type = kv_dtype_bits == 32 ? DType::kF32 : DType::kBF16;
  PlannerModel m;
  m.num_layers = spec.num_layers;
  m.layer_bytes = spec.LayerWeightBytes(weight_type);
  m.embedding_bytes = spec.EmbeddingBytes(weight_type);
  m.head_bytes = spec.HeadBytes(weight_type);
  m.tied_embeddings = spec.tie_word_embeddings;
  m.kv_bytes_per_token_layer = spec.KvBytesPerTokenPerLayer(kv_type);
  m.hidden_bytes_per_token = static_cast<size_t>(spec.hidden_size) * 2;
  return m;
}

StatusOr<Plan> PlanLayers(const PlannerModel& model, const std::vector<NodeProfile>& nodes,
                          const PlannerOptions& options) {
  RETURN_IF_ERROR(ValidateInputs(model, nodes, options));
  CostModel costs(model, options);
  auto stages = static_cast<int>(nodes.size()) <= kExactPlannerNodes
                    ? PlanExact(costs, nodes, model.num_layers, options.tolerance)
                    : PlanOrdered(costs, nodes, model.num_layers);
  if (stages.empty()) return InfeasibleError(model, nodes, options, costs);
  Plan plan = BuildPlan(costs, nodes, stages);
  ExplainExclusions(costs, nodes, plan);
  return plan;
}

StatusOr<Plan> PlanManual(const PlannerModel& model, const std::vector<NodeProfile>& nodes,
                          const std::vector<ManualRange>& ranges, const PlannerOptions& options) {
  RETURN_IF_ERROR(ValidateInputs(model, nodes, options));
  if (ranges.empty()) return absl::InvalidArgumentError("manual plan: no layer ranges given");
  CostModel costs(model, options);
  std::vector<std::pair<int, std::pair<int, int>>> stages;
  std::set<std::string> seen;
  int expected_begin = 0;
  for (const ManualRange& r : ranges) {
    auto it = std::find_if(nodes.begin(), nodes.end(),
                           [&](const NodeProfile& n) { return n.name == r.node; });
    if (it == nodes.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("manual plan: node '", r.node, "' is not a known node"));
    }
    if (!seen.insert(r.node).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("manual plan: node '", r.node, "' has more than one range"));
    }
    if (r.begin < 0 || r.end > model.num_layers || r.begin >= r.end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "manual plan: range [", r.begin, ", ", r.end, ") of node '", r.node,
          "' is not a non-empty range within the model's ", model.num_layers, " layers"));
    }
    if (r.begin > expected_begin) {
      return absl::InvalidArgumentError(absl::StrCat("manual plan: layers [", expected_begin, ", ",
                                                     r.begin, ") are not assigned (gap before '",
                                                     r.node, "')"));
    }
    if (r.begin < expected_begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          "manual plan: range [", r.begin, ", ", r.end, ") of node '", r.node,
          "' overlaps the previous range, which ends at ", expected_begin));
    }
    StageCost c = costs.Cost(*it, r.begin, r.end);
    if (!c.fits) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "manual plan: node '", r.node, "' cannot hold layers [", r.begin, ", ", r.end, "): needs ",
          Bytes(c.weight_bytes + c.kv_bytes), " (weights ", Bytes(c.weight_bytes), " + KV ",
          Bytes(c.kv_bytes), "), has ", Bytes(it->memory_bytes)));
    }
    stages.push_back({static_cast<int>(it - nodes.begin()), {r.begin, r.end}});
    expected_begin = r.end;
  }
  if (expected_begin != model.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("manual plan: layers [", expected_begin, ", ",
                                                   model.num_layers, ") are not assigned"));
  }
  Plan plan = BuildPlan(costs, nodes, stages);
  ExplainExclusions(costs, nodes, plan);
  return plan;
}

std::string Plan::ToString() const {
  std::string out = absl::StrFormat("%-16s %-10s %-7s %-12s %-12s %-11s %-11s\n", "node", "layers",
                                    "count", "weights", "kv reserved", "compute ms", "link ms");
  for (const StagePlan& s : stages) {
    absl::StrAppend(&out, absl::StrFormat("%-16s %-10s %-7d %-12s %-12s %-11.3f %-11.3f\n", s.node,
                                          absl::StrCat(s.begin, "-", s.end - 1), s.end - s.begin,
                                          Bytes(s.weight_bytes), Bytes(s.kv_bytes), s.compute_ms,
                                          s.transfer_ms));
  }
  absl::StrAppend(&out, absl::StrFormat(
                            "slowest stage %.3f ms/step; one sequence %.1f tokens/s; "
                            "pipelined %.1f steps/s\n",
                            bottleneck_ms, single_sequence_tokens_per_s(), pipelined_steps_per_s()));
  for (const std::string& e : excluded) absl::StrAppend(&out, "left out: ", e, "\n");
  return out;
}

}  // namespace tandem
