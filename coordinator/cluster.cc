#include "coordinator/cluster.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "config/value_parsers.h"
#include "core/dtype.h"
#include "proto/hello.h"
#include "spdlog/spdlog.h"

namespace tandem {

namespace {

constexpr size_t kHeartbeatWindow = 6;  // heartbeats the busy fraction spans

v1::Codec CodecFromName(const std::string& name) {
  if (name == "lz4") return v1::CODEC_LZ4;
  if (name == "zlib") return v1::CODEC_ZLIB;
  if (name == "zstd") return v1::CODEC_ZSTD;
  if (name == "shuffle-lz4") return v1::CODEC_SHUFFLE_LZ4;
  if (name == "shuffle-zlib") return v1::CODEC_SHUFFLE_ZLIB;
  if (name == "shuffle-zstd") return v1::CODEC_SHUFFLE_ZSTD;
  return v1::CODEC_NONE;
}

std::string HostOf(const std::string& address) {
  auto hp = ParseHostPort(address);
  return hp.ok() ? hp->host : address;
}

int64_t MsSince(Cluster::Clock::time_point t, Cluster::Clock::time_point now) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - t).count();
}

}  // namespace

Cluster::Cluster(ClusterOptions options, Engine* engine)
    : options_(std::move(options)), engine_(engine) {
  hello_ = MakeHello({.role = v1::ROLE_COORDINATOR,
                      .node_id = "",
                      .model_fingerprint = options_.spec.Fingerprint(),
                      .cluster_token = options_.config.cluster_token});
  const int bits = DTypeBits(options_.spec.torch_dtype);
  planner_model_ = PlannerModelFromSpec(options_.spec, bits, bits);
  engine_->Detach(absl::StrCat("waiting for ", options_.config.nodes, " node(s) to register"));
}

const char* Cluster::StateName(NodeState s) {
  switch (s) {
    case NodeState::kRegistered: return "registered";
    case NodeState::kConnected: return "registered";
    case NodeState::kLoading: return "loading";
    case NodeState::kReady: return "ready";
    case NodeState::kDown: return "down";
  }
  return "unknown";
}

StatusOr<v1::RegisterNodeResponse> Cluster::Register(const v1::RegisterNodeRequest& request) {
  const v1::Hello& theirs = request.hello();
  RETURN_IF_ERROR(CheckHello(hello_, theirs));
  const std::string& name = theirs.node_id();
  if (name.empty()) return absl::InvalidArgumentError("the node's hello has no node_id (name)");
  if (theirs.model_fingerprint().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "node '", name, "' has no model; this coordinator serves model ", hello_.model_fingerprint()));
  }
  if (!ParseHostPort(request.address()).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "node '", name, "' advertised address '", request.address(), "' is not host:port"));
  }
  const v1::NodeCalibration& cal = request.calibration();
  if (!(cal.decode_layer_ms() > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "node '", name, "': calibration.decode_layer_ms must be > 0, got ", cal.decode_layer_ms()));
  }
  if (cal.memory_budget_bytes() == 0 && request.free_memory_bytes() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("node '", name, "' reports neither a memory budget nor free memory"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(name);
  if (it != nodes_.end() && it->second.state != NodeState::kDown) {
    return absl::AlreadyExistsError(absl::StrCat("a node named '", name,
                                                 "' is already registered from ",
                                                 it->second.registration.address()));
  }
  Node node;
  node.name = name;
  node.session_id = next_session_++;
  node.registration = request;
  node.registration.mutable_hello()->clear_cluster_token();
  node.registered_at = Clock::now();
  nodes_[name] = std::move(node);
  spdlog::info("node '{}' registered from {} (session {})", name, request.address(),
               nodes_[name].session_id);
  v1::RegisterNodeResponse response;
  *response.mutable_hello() = hello_;
  response.set_session_id(nodes_[name].session_id);
  response.set_heartbeat_interval_ms(options_.heartbeat_interval_ms);
  return response;
}

StatusOr<std::string> Cluster::OpenControl(const v1::Hello& hello,
                                           std::shared_ptr<ControlChannel> channel) {
  RETURN_IF_ERROR(CheckHello(hello_, hello));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(hello.node_id());
  if (it == nodes_.end() || it->second.state == NodeState::kDown) {
    return absl::FailedPreconditionError(absl::StrCat(
        "node '", hello.node_id(), "' is not registered: call RegisterNode first"));
  }
  Node& node = it->second;
  if (node.control != nullptr) {
    return absl::AlreadyExistsError(
        absl::StrCat("node '", node.name, "' already has a control stream open"));
  }
  node.control = std::move(channel);
  node.state = NodeState::kConnected;
  node.last_heartbeat = Clock::now();
  v1::CoordinatorToNode answer;
  *answer.mutable_hello() = hello_;
  node.control->Send(std::move(answer));
  MaybePlan();
  return node.name;
}

void Cluster::OnControlMessage(const std::string& name, const ControlChannel* channel,
                               const v1::NodeToCoordinator& message) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end() || it->second.control.get() != channel) return;
  Node& node = it->second;
  switch (message.kind_case()) {
    case v1::NodeToCoordinator::kHeartbeat:
      if (message.heartbeat().session_id() != node.session_id) {
        node.control->Close(absl::FailedPreconditionError(absl::StrCat(
            "heartbeat for session ", message.heartbeat().session_id(), " but node '", name,
            "' holds session ", node.session_id)));
        return;
      }
      OnHeartbeat(node, message.heartbeat());
      break;
    case v1::NodeToCoordinator::kShardLoaded:
      node.last_heartbeat = Clock::now();
      OnShardLoaded(node, message.shard_loaded());
      break;
    case v1::NodeToCoordinator::kError:
      spdlog::warn("node '{}' reports: {}", name, message.error());
      plan_notes_.push_back(absl::StrCat(name, ": ", message.error()));
      break;
    default:
      break;
  }
}

void Cluster::OnHeartbeat(Node& node, const v1::Heartbeat& hb) {
  const Clock::time_point now = Clock::now();
  node.last_heartbeat = now;
  node.has_heartbeat = true;
  node.heartbeat = hb;
  // A node's counters restart with it; a drop starts a new window.
  if (!node.history.empty() && std::get<1>(node.history.back()) > hb.compute_ms_total()) {
    node.history.clear();
  }
  node.history.emplace_back(now, hb.compute_ms_total(), hb.steps());
  while (node.history.size() > kHeartbeatWindow) node.history.pop_front();
  if (node.history.size() >= 2) {
    const auto& [t0, c0, s0] = node.history.front();
    const auto& [t1, c1, s1] = node.history.back();
    const double wall_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    if (wall_ms > 0) node.busy_fraction = std::clamp((c1 - c0) / wall_ms, 0.0, 1.0);
    if (s1 > s0) node.compute_ms_per_step = (c1 - c0) / static_cast<double>(s1 - s0);
  }
  if (node.compute_ms_per_step == 0 && hb.steps() > 0) {
    node.compute_ms_per_step = hb.compute_ms_total() / static_cast<double>(hb.steps());
  }
}

void Cluster::OnShardLoaded(Node& node, const v1::LoadShardResponse& loaded) {
  if (node.stage_index < 0 || node.state != NodeState::kLoading) return;
  if (!loaded.error().empty()) {
    const std::string reason =
        absl::StrCat("node '", node.name, "' could not load layers [", node.first_layer, ", ",
                     node.last_layer, "): ", loaded.error());
    spdlog::error("{}", reason);
    plan_notes_.push_back(reason);
    node.state = NodeState::kConnected;
    Degrade(reason);
    return;
  }
  node.loaded = true;
  node.shard = loaded;
  node.state = NodeState::kReady;
  spdlog::info("node '{}' loaded layers [{}, {}): KV for {} tokens", node.name, node.first_layer,
               node.last_layer, loaded.kv_capacity_tokens());
  if (!plan_) return;
  int64_t kv = -1;
  std::string stage0;
  for (const StagePlan& stage : plan_->stages) {
    const Node& n = nodes_.at(stage.node);
    if (!n.loaded) return;
    const int64_t cap = static_cast<int64_t>(n.shard.kv_capacity_tokens());
    kv = kv < 0 ? cap : std::min(kv, cap);
    if (stage0.empty()) stage0 = n.registration.address();
  }
  spdlog::info("every stage is loaded; connecting the pipeline to stage 0 at {}", stage0);
  engine_->Attach({.epoch = epoch_,
                   .stage0_address = stage0,
                   .num_stages = static_cast<int>(plan_->stages.size()),
                   .kv_capacity_tokens = kv});
}

void Cluster::OnControlClosed(const std::string& name, const ControlChannel* channel) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end() || it->second.control.get() != channel) return;
  MarkDown(it->second, "its control stream closed");
}

void Cluster::MarkDown(Node& node, const std::string& why) {
  if (node.state == NodeState::kDown) return;
  spdlog::warn("node '{}' is down: {}", node.name, why);
  const bool in_plan = node.stage_index >= 0;
  node.state = NodeState::kDown;
  node.loaded = false;
  if (node.control) {
    node.control->Close(absl::UnavailableError(absl::StrCat("node '", node.name, "' is down: ", why)));
    node.control.reset();
  }
  // Also when the pipeline already broke: the reason new requests hear of
  // becomes the node that is down.
  if (in_plan && state_ != "waiting") Degrade(absl::StrCat("node '", node.name, "' is down"));
  MaybePlan();
}

void Cluster::Degrade(const std::string& reason) {
  state_ = "degraded";
  engine_->Detach(reason);
  for (auto& [name, n] : nodes_) {
    if (n.state == NodeState::kLoading || n.state == NodeState::kReady) n.state = NodeState::kConnected;
    n.loaded = false;
  }
}

void Cluster::CheckLiveness() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = Clock::now();
  const int64_t limit =
      static_cast<int64_t>(options_.heartbeat_interval_ms) * options_.missed_heartbeats;
  for (auto& [name, node] : nodes_) {
    if (node.state == NodeState::kDown) continue;
    if (node.control == nullptr) {
      if (MsSince(node.registered_at, now) > limit) {
        MarkDown(node, "it registered but never opened its control stream");
      }
    } else if (MsSince(node.last_heartbeat, now) > limit) {
      MarkDown(node, absl::StrCat("no heartbeat for ", MsSince(node.last_heartbeat, now), " ms"));
    }
  }
}

void Cluster::OnPipelineEvent(uint64_t epoch, const tandem::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (epoch != epoch_ || (state_ != "loading" && state_ != "ready")) return;
  if (status.ok()) {
    state_ = "ready";
    spdlog::info("cluster ready: {} stage(s)", plan_ ? plan_->stages.size() : 0);
    return;
  }
  // The engine already failed its requests and refuses new ones.
  state_ = "degraded";
  plan_notes_.push_back(std::string(status.message()));
  for (auto& [name, n] : nodes_) {
    if (n.state == NodeState::kLoading || n.state == NodeState::kReady) n.state = NodeState::kConnected;
    n.loaded = false;
  }
}

v1::Codec Cluster::LinkCodec(const std::string& from, const std::string& to,
                             const std::string& from_address,
                             const std::string& to_address) const {
  std::string name = options_.config.codec;
  for (const auto& link : options_.config.link_codecs) {
    if (link.from == from && link.to == to) name = link.codec;
  }
  if (name == "auto") {
    // On one machine compression costs more than it saves.
    return HostOf(from_address) == HostOf(to_address) ? v1::CODEC_NONE : v1::CODEC_SHUFFLE_LZ4;
  }
  return CodecFromName(name);
}

void Cluster::MaybePlan() {
  if (state_ == "loading" || state_ == "ready") return;
  std::vector<Node*> live;
  for (auto& [name, n] : nodes_) {
    if (n.state != NodeState::kDown && n.control != nullptr) live.push_back(&n);
  }
  // The first plan waits for every node; after a loss, min_nodes (when set)
  // lets the survivors carry on.
  const int needed = state_ == "degraded" && options_.config.min_nodes > 0
                         ? options_.config.min_nodes
                         : options_.config.nodes;
  if (static_cast<int>(live.size()) < needed) {
    if (state_ != "degraded") {
      engine_->Detach(absl::StrCat("waiting for nodes: ", live.size(), " of ",
                                   options_.config.nodes, " registered"));
    }
    return;
  }
  const auto& cfg = options_.config;
  uint64_t kv_budget = cfg.kv_budget;
  if (kv_budget == 0) {
    for (Node* n : live) {
      const uint64_t b = n->registration.calibration().kv_budget_bytes();
      if (b > 0) kv_budget = kv_budget == 0 ? b : std::min(kv_budget, b);
    }
  }
  PlannerOptions popts;
  const size_t per_token_all_layers =
      planner_model_.kv_bytes_per_token_layer * static_cast<size_t>(planner_model_.num_layers);
  if (kv_budget > 0 && per_token_all_layers > 0) {
    popts.kv_tokens = std::max<size_t>(16, kv_budget / per_token_all_layers);
  }
  std::vector<NodeProfile> profiles;
  for (Node* n : live) {
    const v1::NodeCalibration& cal = n->registration.calibration();
    profiles.push_back({.name = n->name,
                        .memory_bytes = cal.memory_budget_bytes() > 0
                                            ? cal.memory_budget_bytes()
                                            : n->registration.free_memory_bytes(),
                        .decode_layer_ms = cal.decode_layer_ms(),
                        .head_ms = cal.head_ms() > 0 ? cal.head_ms() : -1});
  }
  StatusOr<Plan> plan = absl::UnknownError("unset");
  if (cfg.planner == PlannerPolicy::kManual) {
    std::vector<ManualRange> ranges;
    for (const auto& r : cfg.manual_layers) ranges.push_back({r.node, r.begin, r.end});
    plan = PlanManual(planner_model_, profiles, ranges, popts);
  } else {
    plan = PlanLayers(planner_model_, profiles, popts);
  }
  if (!plan.ok()) {
    const std::string reason = absl::StrCat("cannot plan: ", plan.status().message());
    spdlog::error("{}", reason);
    plan_notes_ = {reason};
    engine_->Detach(reason);
    return;
  }
  plan_ = std::move(plan).value();
  plan_notes_ = plan_->excluded;
  ++epoch_;
  state_ = "loading";
  spdlog::info("plan {}:\n{}", epoch_, plan_->ToString());
  for (auto& [name, n] : nodes_) {
    n.stage_index = -1;
    n.loaded = false;
  }
  const int num_stages = static_cast<int>(plan_->stages.size());
  for (int i = 0; i < num_stages; ++i) {
    const StagePlan& stage = plan_->stages[i];
    Node& n = nodes_.at(stage.node);
    n.stage_index = i;
    n.first_layer = stage.begin;
    n.last_layer = stage.end;
    n.state = NodeState::kLoading;
    v1::ShardAssignment a;
    a.set_model_fingerprint(hello_.model_fingerprint());
    a.set_first_layer(static_cast<uint32_t>(stage.begin));
    a.set_last_layer(static_cast<uint32_t>(stage.end));
    a.set_has_embedding(i == 0);
    a.set_has_lm_head(i == num_stages - 1);
    a.set_tensor_parallel(1);
    if (i + 1 < num_stages) {
      const Node& next = nodes_.at(plan_->stages[i + 1].node);
      a.set_next_stage(next.registration.address());
      a.set_link_codec(LinkCodec(n.name, next.name, n.registration.address(),
                                 next.registration.address()));
    }
    a.set_weight_quantization("none");
    a.set_kv_budget_bytes(cfg.kv_budget > 0 ? cfg.kv_budget
                                            : n.registration.calibration().kv_budget_bytes());
    a.set_max_batch_tokens(static_cast<uint32_t>(cfg.max_batch_tokens));
    a.set_max_batch_sequences(static_cast<uint32_t>(cfg.max_sequences));
    a.set_stage_index(static_cast<uint32_t>(i));
    v1::CoordinatorToNode message;
    *message.mutable_assign() = std::move(a);
    n.control->Send(std::move(message));
  }
}

void Cluster::ReleaseSequences(const std::vector<uint64_t>& sequence_ids) {
  if (sequence_ids.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [name, n] : nodes_) {
    if (n.stage_index < 0 || n.control == nullptr) continue;
    v1::CoordinatorToNode message;
    for (uint64_t id : sequence_ids) message.mutable_release()->add_sequence_ids(id);
    n.control->Send(std::move(message));
  }
}

v1::ClusterStatusResponse Cluster::Status() const {
  std::lock_guard<std::mutex> lock(mu_);
  v1::ClusterStatusResponse r;
  r.set_model_fingerprint(hello_.model_fingerprint());
  r.set_num_layers(static_cast<uint32_t>(options_.spec.num_layers));
  r.set_state(state_);
  r.set_model_name(options_.spec.architecture);
  if (plan_) r.set_predicted_tokens_per_s(plan_->single_sequence_tokens_per_s());
  for (const std::string& note : plan_notes_) r.add_plan_notes(note);
  std::vector<const Node*> order;
  for (const auto& [name, n] : nodes_) order.push_back(&n);
  std::stable_sort(order.begin(), order.end(), [](const Node* a, const Node* b) {
    const int sa = a->stage_index < 0 ? 1 << 30 : a->stage_index;
    const int sb = b->stage_index < 0 ? 1 << 30 : b->stage_index;
    return sa < sb;
  });
  const auto now = Clock::now();
  for (const Node* n : order) {
    v1::NodeStatus* s = r.add_nodes();
    s->set_node_id(n->name);
    s->set_address(n->registration.address());
    if (n->stage_index >= 0) {
      s->set_first_layer(static_cast<uint32_t>(n->first_layer));
      s->set_last_layer(static_cast<uint32_t>(n->last_layer));
      s->set_stage_index(static_cast<uint32_t>(n->stage_index));
    }
    s->set_healthy(n->state != NodeState::kDown);
    const auto seen = n->has_heartbeat ? n->last_heartbeat : n->registered_at;
    s->set_last_heartbeat_ms_ago(static_cast<uint64_t>(std::max<int64_t>(0, MsSince(seen, now))));
    *s->mutable_devices() = n->registration.devices();
    s->set_state(StateName(n->state));
    *s->mutable_calibration() = n->registration.calibration();
    s->set_kv_total_blocks(n->heartbeat.kv_total_blocks());
    s->set_kv_free_blocks(n->heartbeat.kv_free_blocks());
    s->set_busy_fraction(n->busy_fraction);
    s->set_compute_ms_per_step(n->compute_ms_per_step);
    s->set_link_raw_bytes(n->heartbeat.link_raw_bytes());
    s->set_link_wire_bytes(n->heartbeat.link_wire_bytes());
    s->set_link_codec(n->heartbeat.link_codec());
  }
  return r;
}

}  // namespace tandem
