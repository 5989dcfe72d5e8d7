#pragma once
// The cluster as the coordinator sees it: the registry of nodes with their
// liveness, the layer plan they serve, and the assignments that realise it.
//
// Thread-safe: gRPC handlers (registration, control streams), the liveness
// monitor and the engine call in; one mutex guards everything here, and
// nothing called under it blocks (control messages are queued, the engine
// takes posts).
//
// Life of a node: RegisterNode (refused on a protocol, fingerprint or token
// mismatch, or while a live node holds the name) -> Control stream opened
// with the same hello -> heartbeats. A node is down when its Control stream
// ends or it misses `missed_heartbeats` heartbeat intervals (also when it
// registered and never opened its Control stream); a down node may register
// again under its name.
//
// Planning: when at least `config.nodes` live nodes hold an open Control
// stream and no plan is loading or serving, the layer planner runs on their
// calibration (or the manual ranges of the config), every stage gets an
// assignment, and once all report their shard loaded the engine is attached
// to stage 0 with the tightest stage's KV capacity. A stage that goes down
// detaches the engine (the cluster is "degraded") and planning starts over
// with the nodes that are live.
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "config/coordinator_config.h"
#include "coordinator/engine.h"
#include "coordinator/layer_planner.h"
#include "core/status.h"
#include "model/model_spec.h"
#include "tandem/v1/coordinator.pb.h"

namespace tandem {

// The coordinator's side of a node's Control stream.
class ControlChannel {
 public:
  virtual ~ControlChannel() = default;
  // Queues a command; never blocks.
  virtual void Send(v1::CoordinatorToNode message) = 0;
  // Ends the stream with `status` (e.g. missed heartbeats).
  virtual void Close(const Status& status) = 0;
};

struct ClusterOptions {
  CoordinatorConfig config;
  ModelSpec spec;
  uint32_t heartbeat_interval_ms = 1000;
  int missed_heartbeats = 3;
};

class Cluster {
 public:
  using Clock = std::chrono::steady_clock;

  // `engine` receives Attach/Detach and must outlive the cluster.
  Cluster(ClusterOptions options, Engine* engine);

  // The coordinator's hello (role coordinator, the model's fingerprint, the
  // cluster token).
  const v1::Hello& hello() const { return hello_; }

  // Coordinator.RegisterNode. Errors are gRPC-ready statuses:
  // FailedPrecondition / PermissionDenied (hello), AlreadyExists (a live node
  // has the name), InvalidArgument (no address or calibration).
  StatusOr<v1::RegisterNodeResponse> Register(const v1::RegisterNodeRequest& request);

  // The node's first Control message was `hello`: checks it and binds the
  // stream to the node's registration. Returns the node's name.
  StatusOr<std::string> OpenControl(const v1::Hello& hello, std::shared_ptr<ControlChannel> channel);
  // Every later Control message of node `name` on `channel`.
  void OnControlMessage(const std::string& name, const ControlChannel* channel,
                        const v1::NodeToCoordinator& message);
  // The Control stream `channel` of node `name` ended.
  void OnControlClosed(const std::string& name, const ControlChannel* channel);

  // Marks nodes down that missed their heartbeats; called periodically.
  void CheckLiveness();
  // From the engine (its pipeline_event).
  void OnPipelineEvent(uint64_t epoch, const Status& status);
  // Tells every stage of the current plan to free these sequences' KV.
  void ReleaseSequences(const std::vector<uint64_t>& sequence_ids);

  // A snapshot for Coordinator.ClusterStatus (requests counts not included).
  v1::ClusterStatusResponse Status() const;

 private:
  enum class NodeState { kRegistered, kConnected, kLoading, kReady, kDown };
  struct Node {
    std::string name;
    uint64_t session_id = 0;
    v1::RegisterNodeRequest registration;
    NodeState state = NodeState::kRegistered;
    std::shared_ptr<ControlChannel> control;
    Clock::time_point registered_at;
    Clock::time_point last_heartbeat;
    bool has_heartbeat = false;
    v1::Heartbeat heartbeat;
    // (receipt time, compute_ms_total, steps) of recent heartbeats.
    std::deque<std::tuple<Clock::time_point, double, uint64_t>> history;
    double busy_fraction = 0;
    double compute_ms_per_step = 0;
    int stage_index = -1;  // in the current plan
    int first_layer = 0, last_layer = 0;
    bool loaded = false;
    v1::LoadShardResponse shard;
  };

  static const char* StateName(NodeState s);
  void MarkDown(Node& node, const std::string& why);  // mu_ held
  void MaybePlan();                                   // mu_ held
  void OnHeartbeat(Node& node, const v1::Heartbeat& heartbeat);
  void OnShardLoaded(Node& node, const v1::LoadShardResponse& loaded);
  v1::Codec LinkCodec(const std::string& from, const std::string& to,
                      const std::string& from_address, const std::string& to_address) const;
  void Degrade(const std::string& reason);  // mu_ held

  ClusterOptions options_;
  Engine* engine_;
  v1::Hello hello_;
  PlannerModel planner_model_;

  mutable std::mutex mu_;
  std::map<std::string, Node> nodes_;  // by name
  uint64_t next_session_ = 1;
  std::string state_ = "waiting";  // waiting | loading | ready | degraded
  std::optional<Plan> plan_;
  std::vector<std::string> plan_notes_;
  uint64_t epoch_ = 0;
};

}  // namespace tandem
