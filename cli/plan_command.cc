// `tandem plan`: plans layer ranges for a model over node profiles from a
// YAML file and prints the plan with its predicted speed, starting nothing.
#include <cstdio>
#include <memory>
#include <string>

#include "coordinator/layer_planner.h"
#include "coordinator/node_profiles_file.h"
#include "core/cli.h"
#include "core/command.h"
#include "core/dtype.h"
#include "model/model_spec.h"

namespace tandem {
namespace {

struct PlanFlags {
  std::string model;
  std::string nodes;
  size_t kv_tokens = 4096;
  std::string quantize = "none";
};

Status RunPlan(const PlanFlags& f) {
  ASSIGN_OR_RETURN(ModelSpec spec, LoadModelSpec(f.model));
  ASSIGN_OR_RETURN(std::vector<NodeProfile> nodes, LoadNodeProfiles(f.nodes));
  const int activation_bits = DTypeBits(spec.torch_dtype);
  int weight_bits = activation_bits;
  if (f.quantize == "int8") {
    weight_bits = 8;
  } else if (f.quantize == "int4") {
    weight_bits = 4;
  } else if (f.quantize != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--quantize: '", f.quantize, "' is not one of none, int8, int4"));
  }
  const PlannerModel model = PlannerModelFromSpec(spec, weight_bits, activation_bits);
  ASSIGN_OR_RETURN(Plan plan, PlanLayers(model, nodes, {.kv_tokens = f.kv_tokens}));
  std::printf("%s: %d layers, weights %s, KV reserved for %zu tokens on every stage\n",
              spec.architecture.c_str(), spec.num_layers, f.quantize.c_str(), f.kv_tokens);
  std::printf("%s", plan.ToString().c_str());
  std::printf("predicted: %.1f tokens/s for one sequence, %.1f tokens/s with %zu sequences in "
              "flight\n",
              plan.single_sequence_tokens_per_s(), plan.pipelined_steps_per_s(),
              plan.stages.size());
  return absl::OkStatus();
}

std::function<int()> SetupPlan(CLI::App& app) {
  auto f = std::make_shared<PlanFlags>();
  app.add_option("--model", f->model, "model folder (config.json)")->required();
  app.add_option("--nodes", f->nodes,
                 "YAML file: nodes: [{name, memory, decode_layer_ms, head_ms, link, latency_ms}]")
      ->required();
  app.add_option("--kv-tokens", f->kv_tokens, "KV cache tokens every stage must hold")
      ->capture_default_str();
  app.add_option("--quantize", f->quantize, "weights quantized at load: none, int8 or int4")
      ->capture_default_str();
  return [f] {
    Status status = RunPlan(*f);
    return status.ok() ? 0 : ReportError("tandem plan", status);
  };
}

const bool kRegistered = RegisterCommand(
    {.name = "plan", .summary = "plan layer ranges from node profiles, start nothing",
     .setup = &SetupPlan});

}  // namespace
}  // namespace tandem
