#pragma once
// Layer planning: which nodes serve the model, in which order, and which
// contiguous layer range each holds, so that the slowest stage's time per
// decode step is as small as possible while every node keeps its weights and
// a reserved KV budget within its memory.
//
// Exact for up to kExactPlannerNodes nodes (dynamic programming over node
// subsets, last layer assigned, so every order and every subset is tried);
// beyond that the nodes are ordered fastest first and the dynamic program
// chooses ranges (and may skip nodes) in that order.
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace tandem {

struct ModelSpec;

inline constexpr int kExactPlannerNodes = 8;

// What the planner needs to know of the model, per the weight dtype in use.
struct PlannerModel {
  int num_layers = 0;
  size_t layer_bytes = 0;           // weights of one decoder layer
  size_t embedding_bytes = 0;       // held by the first stage
  size_t head_bytes = 0;            // final norm + lm_head, held by the last stage
  bool tied_embeddings = false;     // the last stage also needs embedding_bytes
  size_t kv_bytes_per_token_layer = 0;
  size_t hidden_bytes_per_token = 0;  // activation crossing a link per token
};

// Builds the planner's view from a model spec with weights stored as
// `weight_dtype` (f32/f16/bf16, or i8/i4 when quantized at load) and a KV
// cache of `kv_dtype`; hidden states cross links as bf16.
PlannerModel PlannerModelFromSpec(const ModelSpec& spec, int weight_dtype_bits, int kv_dtype_bits);

// A node's measured profile.
struct NodeProfile {
  std::string name;
  size_t memory_bytes = 0;        // budget for weights + KV
  double decode_layer_ms = 0;     // one layer, one decode step
  double head_ms = -1;            // final norm + lm_head for one step; < 0: estimate from bytes
  double link_bytes_per_s = 0;    // towards the next stage; 0 = unlimited (same machine)
  double link_latency_ms = 0;     // one way
};

struct PlannerOptions {
  // KV cache every stage must be able to hold, in tokens (summed over
  // sequences): memory for it is reserved before layers are placed.
  size_t kv_tokens = 4096;
  // Micro-batch tokens per decode step crossing each link.
  int step_tokens = 1;
  // A plan with fewer nodes wins when its bottleneck is within this factor of
  // the best one: each extra hop costs latency for no throughput.
  double tolerance = 0.01;
};

struct StagePlan {
  std::string node;
  int begin = 0;  // layers [begin, end)
  int end = 0;
  size_t weight_bytes = 0;
  size_t kv_bytes = 0;        // reserved for options.kv_tokens
  size_t memory_bytes = 0;    // the node's budget
  double compute_ms = 0;      // layers (+ head on the last stage)
  double transfer_ms = 0;     // sending the hidden state onward
  double step_ms() const { return compute_ms + transfer_ms; }
};

struct Plan {
  std::vector<StagePlan> stages;            // pipeline order
  std::vector<std::string> excluded;        // "name: reason"
  double bottleneck_ms = 0;                 // slowest stage per step
  double latency_ms = 0;                    // one token through every stage
  // One sequence decodes at 1000 / latency_ms; with one micro-batch in
  // flight per stage the pipeline completes 1000 / bottleneck_ms steps/s.
  double single_sequence_tokens_per_s() const { return latency_ms > 0 ? 1000 / latency_ms : 0; }
  double pipelined_steps_per_s() const { return bottleneck_ms > 0 ? 1000 / bottleneck_ms : 0; }
  std::string ToString() const;  // a table for people
};

// Plans automatically. Errors: no nodes, a node profile that is not valid
// (negative or zero times, duplicate names), or a cluster whose memory cannot
// hold the model (the message names the shortfall in bytes and where).
StatusOr<Plan> PlanLayers(const PlannerModel& model, const std::vector<NodeProfile>& nodes,
                          const PlannerOptions& options = {});

// A manual assignment, in pipeline order.
struct ManualRange {
  std::string node;
  int begin = 0;
  int end = 0;
};

// Validates manual ranges (known nodes, each at most once, no gaps, no
// overlaps, within [0, num_layers), covering every layer, fitting memory)
// and predicts their times like PlanLayers.
StatusOr<Plan> PlanManual(const PlannerModel& model, const std::vector<NodeProfile>& nodes,
                          const std::vector<ManualRange>& ranges,
                          const PlannerOptions& options = {});

}  // namespace tandem
