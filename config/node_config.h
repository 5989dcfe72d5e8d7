#pragma once
// Settings of a node daemon (tandem-node), from YAML and flags. See
// config/node.example.yaml for every key with its default, and
// config/config_loader.h for how flags override the file.
#include <cstdint>
#include <string>
#include <vector>

#include "config/config_loader.h"
#include "core/status.h"

namespace tandem {

enum class DeviceKind { kCpu, kCuda };

struct DeviceId {
  DeviceKind kind = DeviceKind::kCpu;
  int ordinal = 0;  // CUDA device index; 0 for the CPU
  bool operator==(const DeviceId&) const = default;
};

enum class Quantize { kNone, kInt8, kInt4 };

struct NodeConfig {
  std::string name;                     // empty: the host name
  std::string listen = "0.0.0.0:7101";  // gRPC address this node serves on
  std::string advertise;                // address peers dial; empty: derived from listen
  std::string coordinator = "127.0.0.1:7100";
  // Either {cpu} or a set of CUDA devices used for tensor parallelism.
  std::vector<DeviceId> devices = {DeviceId{}};
  uint64_t memory_budget = 0;  // bytes for weights + KV + activations; 0: decide from free memory
  uint64_t kv_budget = 0;      // bytes for the KV cache; 0: memory_budget / 4, at most 512 MiB
  int threads = 0;             // CPU compute threads; 0: all cores
  std::string model;           // Hugging Face model folder
  std::string cluster_token;   // shared secret checked in the hello; empty: none
  Quantize quantize = Quantize::kNone;
  std::string log_level = "info";
};

// "cpu", "cuda:0", "cuda:0,1" (several devices), or a YAML list of those.
StatusOr<std::vector<DeviceId>> ParseDevices(const std::vector<std::string>& items);
std::string DevicesToString(const std::vector<DeviceId>& devices);
// The CUDA device indices among `devices`, in order; empty for {cpu}.
std::vector<int> CudaOrdinals(const std::vector<DeviceId>& devices);
std::string_view QuantizeName(Quantize q);

// The settings table (YAML keys and flags).
const std::vector<ConfigField<NodeConfig>>& NodeConfigFields();
// Cross-field checks run after the file and the flags were applied.
Status ValidateNodeConfig(const NodeConfig& config);

// Loads YAML text; errors name `file`, the line and the key.
StatusOr<NodeConfig> ParseNodeConfig(std::string_view yaml, const std::string& file);
StatusOr<NodeConfig> LoadNodeConfig(const std::string& path);

class NodeConfigFlags : public ConfigFlags<NodeConfig> {
 public:
  NodeConfigFlags() : ConfigFlags<NodeConfig>(NodeConfigFields(), &ValidateNodeConfig) {}
};

}  // namespace tandem
