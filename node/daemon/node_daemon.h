#pragma once
// The node daemon: serves the Node service, registers with the coordinator,
// keeps a Control stream (hello, heartbeats; assignments and releases come
// back), loads the assigned layer range, and reconnects when the coordinator
// goes away.
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/node_config.h"
#include "core/status.h"
#include "kernels/cuda/device_info.h"
#include "model/model_spec.h"
#include "node/daemon/calibration.h"
#include "node/daemon/node_service.h"
#include "tandem/v1/coordinator.pb.h"

namespace tandem {

class NodeDaemon {
 public:
  // Reads the model spec, calibrates and starts serving the Node service.
  static StatusOr<std::unique_ptr<NodeDaemon>> Start(const NodeConfig& config);
  ~NodeDaemon();

  // Registers and follows the coordinator's commands until Stop() or a
  // shutdown command. Returns an error when the coordinator refuses this node
  // (the message says why); reconnects when the coordinator is unreachable.
  Status Run();
  // Thread-safe (e.g. from a signal-handling thread).
  void Stop();

  const std::string& address() const { return address_; }

 private:
  NodeDaemon() = default;
  v1::LoadShardResponse Load(const v1::ShardAssignment& assignment);
  // One registration and Control session; returns when the stream ends.
  Status Session(bool* refused);
  v1::RegisterNodeRequest Registration() const;

  NodeConfig config_;
  ModelSpec spec_;
  Calibration calibration_;
  v1::Hello hello_;
  std::string address_;  // advertised
  uint64_t memory_budget_ = 0;
  // The GPUs this node computes on, one tensor-parallel rank each; empty:
  // the CPU.
  std::vector<int> cuda_devices_;
  // Those GPUs as the CUDA backend described them, for the registration (a
  // CPU node never loads the backend, so it reports its CPU alone).
  std::vector<cuda::DeviceInfo> gpus_;
  uint64_t kv_budget_ = 0;
  std::unique_ptr<NodeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::mutex load_mutex_;  // one load at a time
  v1::ShardAssignment loaded_;  // what is loaded now (empty: nothing)

  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  grpc::ClientContext* control_ = nullptr;  // the live Control call, to cancel on Stop
};

}  // namespace tandem
