#include "model/tensor_names.h"

namespace tandem {

std::string LayerTensorName(int layer, std::string_view suffix) {
  return absl::StrCat("model.layers.", layer, ".", std::string(suffix));
}

std::vector<ExpectedTensor> LayerTensors(const ModelSpec& spec, int layer) {
  const int64_t h = spec.hidden_size, q = spec.q_size(), kv = spec.kv_size(),
                inter = spec.intermediate_size;
  std::vector<ExpectedTensor> t;
  auto add = [&](std::string_view suffix, Shape shape) {
    t.push_back({LayerTensorName(layer, suffix), shape});
  };
  add("input_layernorm.weight", {h});
  add("self_attn.q_proj.weight", {q, h});
  if (spec.attention_bias) add("self_attn.q_proj.bias", {q});
  add("self_attn.k_proj.weight", {kv, h});
  if (spec.attention_bias) add("self_attn.k_proj.bias", {kv});
  add("self_attn.v_proj.weight", {kv, h});
  if (spec.attention_bias) add("self_attn.v_proj.bias", {kv});
  add("self_attn.o_proj.weight", {h, q});
  add("post_attention_layernorm.weight", {h});
  add("mlp.gate_proj.weight", {inter, h});
  add("mlp.up_proj.weight", {inter, h});
  add("mlp.down_proj.weight", {h, inter});
  return t;
}

ExpectedTensor EmbeddingTensor(const ModelSpec& spec) {
  return {std::string(kEmbedTokensName), Shape{spec.vocab_size, spec.hidden_size}};
}

std::vector<ExpectedTensor> HeadTensors(const ModelSpec& spec) {
  std::vector<ExpectedTensor> t;
  t.push_back({std::string(kFinalNormName), Shape{spec.hidden_size}});
  if (!spec.tie_word_embeddings) {
    t.push_back({std::string(kLmHeadName), Shape{spec.vocab_size, spec.hidden_size}});
  }
  return t;
}

Status CheckTensors(const Checkpoint& checkpoint, std::span<const ExpectedTensor> expected) {
  for (const ExpectedTensor& e : expected) {
    ASSIGN_OR_RETURN(TensorInfo info, checkpoint.Info(e.name));
    if (!(info.shape == e.shape)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", e.name, "' in ", checkpoint.dir().string(), " has shape ",
          info.shape.ToString(), " but the model config implies ", e.shape.ToString()));
    }
    if (!IsFloat(info.dtype) || info.dtype == DType::kF64) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", e.name, "' in ", checkpoint.dir().string(), " has dtype ",
                       std::string(DTypeName(info.dtype)), " (expected f32, f16 or bf16)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tandem
