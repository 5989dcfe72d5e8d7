#pragma once
// Settings of the coordinator (tandem-coordinator), from YAML and flags. See
// config/coordinator.example.yaml for every key with its default, and
// config/config_loader.h for how flags override the file.
#include <cstdint>
#include <string>
#include <vector>

#include "config/config_loader.h"
#include "core/status.h"

namespace tandem {

enum class PlannerPolicy { kBalanced, kManual };

// Layers [begin, end) of the model run on node `node`.
struct ManualLayerRange {
  std::string node;
  int begin = 0;
  int end = 0;
};

// Codec names accepted for links: "auto" lets the coordinator choose per
// link; the others name a tensor-frame codec (shuffle-* split bf16/f16 into
// byte planes before compressing).
inline const std::vector<std::string_view> kCodecNames = {
    "auto", "none", "lz4", "zlib", "zstd", "shuffle-lz4", "shuffle-zlib", "shuffle-zstd"};

struct LinkCodec {
  std::string from;  // sending node
  std::string to;    // receiving node
  std::string codec;
};

struct CoordinatorConfig {
  std::string listen = "0.0.0.0:7100";  // gRPC: nodes register here, clients may Generate
  std::string http;  // OpenAI-style HTTP API and dashboard ("host:port"); empty: off
  std::string api_key;                  // bearer token for the HTTP API; empty: open
  std::string model;                    // Hugging Face model folder (tokenizer + config)
  int nodes = 1;                        // nodes to wait for before planning
  // After a node is lost, re-plan over the live nodes and keep serving while
  // at least this many remain; 0: serve only with all `nodes`.
  int min_nodes = 0;
  PlannerPolicy planner = PlannerPolicy::kBalanced;
  std::vector<ManualLayerRange> manual_layers;  // policy manual: ranges in pipeline order
  std::string codec = "auto";                   // default for every link
  std::vector<LinkCodec> link_codecs;           // per-link overrides
  std::string cluster_token;
  std::string
      chat_template;  // empty: from tokenizer_config.json; else llama3|llama2|chatml|mistral
  int max_batch_tokens = 2048;  // tokens per scheduler step
  int max_sequences = 64;       // sequences in flight
  uint64_t kv_budget = 0;       // KV bytes per node to plan with; 0: what the nodes report
  std::string log_level = "info";
};

const std::vector<ConfigField<CoordinatorConfig>>& CoordinatorConfigFields();
// Cross-field checks run after the file and the flags were applied.
Status ValidateCoordinatorConfig(const CoordinatorConfig& config);

StatusOr<CoordinatorConfig> ParseCoordinatorConfig(std::string_view yaml, const std::string& file);
StatusOr<CoordinatorConfig> LoadCoordinatorConfig(const std::string& path);

class CoordinatorConfigFlags : public ConfigFlags<CoordinatorConfig> {
 public:
  CoordinatorConfigFlags()
      : ConfigFlags<CoordinatorConfig>(CoordinatorConfigFields(), &ValidateCoordinatorConfig) {}
};

}  // namespace tandem
