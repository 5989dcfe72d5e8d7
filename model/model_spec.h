#pragma once
// The shape of a decoder-only model, read from a Hugging Face folder:
// config.json (architecture and shapes) and generation_config.json (token
// ids and sampling defaults, optional). Supported architectures:
// LlamaForCausalLM (Llama 2, 3, 3.1, 3.2), Qwen2ForCausalLM (Qwen2, Qwen2.5:
// q/k/v biases) and MistralForCausalLM. Anything else is refused, as is a
// config that uses a feature these do not implement (another activation,
// MLP biases, an unknown rope scaling type).
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace tandem {

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;                       // kLinear, kLlama3
  double low_freq_factor = 1.0;              // kLlama3
  double high_freq_factor = 1.0;             // kLlama3
  int original_max_position_embeddings = 0;  // kLlama3
};

// Sampling defaults a model ships with; each is set only when given.
struct GenerationDefaults {
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int> top_k;
  std::optional<double> repetition_penalty;
  std::optional<bool> do_sample;
  std::optional<int> max_new_tokens;
};

struct ModelSpec {
  std::string architecture;  // "LlamaForCausalLM" | "Qwen2ForCausalLM" | "MistralForCausalLM"
  std::string model_type;    // "llama" | "qwen2" | "mistral"
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;  // defaults to num_heads
  int head_dim = 0;      // defaults to hidden_size / num_heads
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;
  int vocab_size = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q, k, v projections carry biases (Qwen2)
  int max_position_embeddings = 0;
  // Set when the model restricts attention to a window of this many tokens
  // (Mistral's sliding_window, Qwen2 with use_sliding_window).
  std::optional<int> sliding_window;
  DType torch_dtype = DType::kF32;  // as declared; absent means f32 (Hugging Face default)
  std::optional<int> bos_token_id;
  // generation_config.json's eos_token_id when given, else config.json's.
  std::vector<int> eos_token_ids;
  GenerationDefaults generation;

  int q_size() const { return num_heads * head_dim; }      // q_proj out features
  int kv_size() const { return num_kv_heads * head_dim; }  // k_proj / v_proj out features

  // Bytes of one decoder layer's weights when the matrices are stored as
  // `weight_dtype`: q/k/v/o and gate/up/down matrices, the two RMSNorm weights
  // and the q/k/v biases (when attention_bias). Vectors count at
  // `weight_dtype` for float types and as f32 for integer (quantized) types;
  // quantization scales are not included.
  size_t LayerWeightBytes(DType weight_dtype) const;
  // The token embedding matrix [vocab, hidden].
  size_t EmbeddingBytes(DType weight_dtype) const;
  // What the last stage needs beyond its layers: the final norm plus lm_head
  // [vocab, hidden]. With tied embeddings lm_head is the embedding matrix, so
  // no extra matrix is counted here (a last stage that is not also the first
  // still has to hold EmbeddingBytes()).
  size_t HeadBytes(DType weight_dtype) const;
  // K and V for one token in one layer: 2 * num_kv_heads * head_dim elements.
  size_t KvBytesPerTokenPerLayer(DType kv_dtype) const;
  // Stable 16-hex-digit hash of the fields that define the computation
  // (architecture, every shape, rope settings, norm eps, bias, tying). Equal
  // for two folders holding the same architecture and shapes.
  std::string Fingerprint() const;
  // One line for logs: "LlamaForCausalLM hidden=2048 layers=16 heads=32/8 ...".
  std::string ToString() const;
};

// Reads `model_dir`/config.json and, when present, generation_config.json.
// Errors name the file and the missing or invalid field.
StatusOr<ModelSpec> LoadModelSpec(const std::filesystem::path& model_dir);
// The same from JSON text (generation_json may be empty: no generation
// config); the `*_where` strings name the sources in errors.
StatusOr<ModelSpec> ParseModelSpec(std::string_view config_json, std::string_view generation_json,
                                   std::string_view config_where = "config.json",
                                   std::string_view generation_where = "generation_config.json");

}  // namespace tandem
