#pragma once
// Hugging Face tensor names and shapes of the supported architectures.
// Linear weights are [out_features, in_features] row-major.
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"

namespace tandem {

inline constexpr std::string_view kEmbedTokensName = "model.embed_tokens.weight";
inline constexpr std::string_view kFinalNormName = "model.norm.weight";
inline constexpr std::string_view kLmHeadName = "lm_head.weight";  // absent when tied

struct ExpectedTensor {
  std::string name;
  Shape shape;
};

// "model.layers.{layer}.{suffix}", e.g. LayerTensorName(3, "mlp.up_proj.weight").
std::string LayerTensorName(int layer, std::string_view suffix);

// The tensors of decoder layer `layer`, in forward order: input_layernorm,
// q/k/v (weight, then bias when attention_bias), o_proj,
// post_attention_layernorm, gate/up/down.
std::vector<ExpectedTensor> LayerTensors(const ModelSpec& spec, int layer);
// Embedding [vocab, hidden].
ExpectedTensor EmbeddingTensor(const ModelSpec& spec);
// Final norm [hidden] and, when not tied, lm_head [vocab, hidden].
std::vector<ExpectedTensor> HeadTensors(const ModelSpec& spec);

// Checks that `checkpoint` holds every tensor in `expected` with that shape
// and a float dtype; maps the shards involved but touches no tensor data.
Status CheckTensors(const Checkpoint& checkpoint, std::span<const ExpectedTensor> expected);

}  // namespace tandem
