#include "model/model_spec.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "nlohmann/json.hpp"

namespace tandem {

namespace {

using Json = nlohmann::json;

constexpr uintmax_t kMaxConfigBytes = 16u << 20;

// Typed access to the fields of one JSON object; errors name the source and
// the field. A field set to null counts as absent.
class Fields {
 public:
  Fields(const Json& obj, std::string_view where) : obj_(obj), where_(where) {}

  const Json* Find(std::string_view key) const {
    auto it = obj_.find(std::string(key));
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool Has(std::string_view key) const { return Find(key) != nullptr; }

  Status Missing(std::string_view key) const {
    return absl::InvalidArgumentError(
        absl::StrCat(where_, ": missing required field '", std::string(key), "'"));
  }
  Status Invalid(std::string_view key, std::string_view what) const {
    const Json* j = Find(key);
    return absl::InvalidArgumentError(
        absl::StrCat(where_, ": field '", std::string(key), "' ", std::string(what),
                     j ? absl::StrCat(" (got ", j->dump(), ")") : ""));
  }

  // Integer in [min, max]; required unless a default is given.
  StatusOr<int> Int(std::string_view key, int64_t min, std::optional<int> fallback = std::nullopt,
                    int64_t max = std::numeric_limits<int>::max()) const {
    const Json* j = Find(key);
    if (j == nullptr) {
      if (fallback) return *fallback;
      return Missing(key);
    }
    if (!j->is_number_integer()) return Invalid(key, "must be an integer");
    if (j->is_number_unsigned() && j->get<uint64_t>() > static_cast<uint64_t>(max)) {
      return Invalid(key, absl::StrCat("must be at most ", max));
    }
    int64_t v = j->get<int64_t>();
    if (v < min || v > max) {
      return Invalid(key, absl::StrCat("must be in [", min, ", ", max, "]"));
    }
    return static_cast<int>(v);
  }

  // Finite number > 0 (or >= 0 when allow_zero); required unless a default is given.
  StatusOr<double> Positive(std::string_view key, std::optional<double> fallback = std::nullopt,
                            bool allow_zero = false) const {
    const Json* j = Find(key);
    if (j == nullptr) {
      if (fallback) return *fallback;
      return Missing(key);
    }
    if (!j->is_number()) return Invalid(key, "must be a number");
    double v = j->get<double>();
    if (!std::isfinite(v) || v < 0 || (v == 0 && !allow_zero)) {
      return Invalid(key,
                     allow_zero ? "must be a finite number >= 0" : "must be a finite number > 0");
    }
    return v;
  }

  StatusOr<bool> Bool(std::string_view key, bool fallback) const {
    const Json* j = Find(key);
    if (j == nullptr) return fallback;
    if (!j->is_boolean()) return Invalid(key, "must be true or false");
    return j->get<bool>();
  }

  // A token id or a list of token ids; empty when absent.
  StatusOr<std::vector<int>> TokenIds(std::string_view key) const {
    const Json* j = Find(key);
    std::vector<int> ids;
    if (j == nullptr) return ids;
    auto one = [&](const Json& v) -> Status {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
          v.get<int64_t>() > std::numeric_limits<int>::max()) {
        return Invalid(key, "must be a non-negative token id or a list of them");
      }
      ids.push_back(static_cast<int>(v.get<int64_t>()));
      return absl::OkStatus();
    };
    if (j->is_array()) {
      for (const Json& v : *j) RETURN_IF_ERROR(one(v));
    } else {
      RETURN_IF_ERROR(one(*j));
    }
    return ids;
  }

 private:
  const Json& obj_;
  std::string where_;
};

StatusOr<Json> ParseObject(std::string_view text, std::string_view where) {
  Json j;
  try {
    j = Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(where), ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(where), ": not a JSON object"));
  }
  return j;
}

StatusOr<std::string> ReadSmallFile(const std::filesystem::path& path) {
  std::error_code ec;
  uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path.string(), ": ", ec.message()));
  }
  if (size > kMaxConfigBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": larger than ", kMaxConfigBytes, " bytes"));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return absl::InternalError(absl::StrCat("cannot read ", path.string()));
  return text.str();
}

Status ParseRopeScaling(const Fields& config, std::string_view where, RopeScaling* out) {
  const Json* j = config.Find("rope_scaling");
  *out = RopeScaling{};
  if (j == nullptr) return absl::OkStatus();
  if (!j->is_object()) return config.Invalid("rope_scaling", "must be an object or null");
  const std::string rwhere = absl::StrCat(std::string(where), ": rope_scaling");
  Fields rope(*j, rwhere);
  const Json* type = rope.Find("rope_type");
  if (type == nullptr) type = rope.Find("type");
  if (type == nullptr) return rope.Missing("rope_type");
  if (!type->is_string()) return rope.Invalid("rope_type", "must be a string");
  const std::string name = type->get<std::string>();
  if (name == "default") return absl::OkStatus();
  if (name == "linear") {
    out->type = RopeScaling::Type::kLinear;
    ASSIGN_OR_RETURN(out->factor, rope.Positive("factor"));
    return absl::OkStatus();
  }
  if (name == "llama3") {
    out->type = RopeScaling::Type::kLlama3;
    ASSIGN_OR_RETURN(out->factor, rope.Positive("factor"));
    ASSIGN_OR_RETURN(out->low_freq_factor, rope.Positive("low_freq_factor"));
    ASSIGN_OR_RETURN(out->high_freq_factor, rope.Positive("high_freq_factor"));
    ASSIGN_OR_RETURN(out->original_max_position_embeddings,
                     rope.Int("original_max_position_embeddings", 1));
    if (out->high_freq_factor <= out->low_freq_factor) {
      return rope.Invalid("high_freq_factor", "must be greater than low_freq_factor");
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(rwhere, ": unsupported rope type '", name,
                                                 "' (supported: default, linear, llama3)"));
}

StatusOr<DType> ParseTorchDtype(const Fields& config) {
  const char* key = config.Has("torch_dtype") ? "torch_dtype" : "dtype";
  const Json* j = config.Find(key);
  if (j == nullptr) return DType::kF32;
  if (!j->is_string()) return config.Invalid(key, "must be a string");
  const std::string s = j->get<std::string>();
  if (s == "bfloat16") return DType::kBF16;
  if (s == "float16") return DType::kF16;
  if (s == "float32") return DType::kF32;
  return config.Invalid(key, "must be bfloat16, float16 or float32");
}

Status ParseGeneration(std::string_view text, std::string_view where, ModelSpec* spec) {
  ASSIGN_OR_RETURN(Json root, ParseObject(text, where));
  Fields gen(root, where);
  if (gen.Has("bos_token_id")) {
    ASSIGN_OR_RETURN(std::vector<int> bos, gen.TokenIds("bos_token_id"));
    if (bos.size() != 1) return gen.Invalid("bos_token_id", "must be a single token id");
    spec->bos_token_id = bos[0];
  }
  if (gen.Has("eos_token_id")) {
    ASSIGN_OR_RETURN(spec->eos_token_ids, gen.TokenIds("eos_token_id"));
  }
  GenerationDefaults& g = spec->generation;
  if (gen.Has("temperature")) {
    ASSIGN_OR_RETURN(g.temperature, gen.Positive("temperature", std::nullopt, true));
  }
  if (gen.Has("top_p")) {
    ASSIGN_OR_RETURN(double top_p, gen.Positive("top_p"));
    if (top_p > 1.0) return gen.Invalid("top_p", "must be in (0, 1]");
    g.top_p = top_p;
  }
  if (gen.Has("top_k")) {
    ASSIGN_OR_RETURN(g.top_k, gen.Int("top_k", 0));
  }
  if (gen.Has("repetition_penalty")) {
    ASSIGN_OR_RETURN(g.repetition_penalty, gen.Positive("repetition_penalty"));
  }
  if (gen.Has("do_sample")) {
    ASSIGN_OR_RETURN(g.do_sample, gen.Bool("do_sample", false));
  }
  if (gen.Has("max_new_tokens")) {
    ASSIGN_OR_RETURN(g.max_new_tokens, gen.Int("max_new_tokens", 1));
  }
  return absl::OkStatus();
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Float vectors (norm weights, biases) are kept at the weight dtype for float
// types; quantized layouts keep them in f32.
size_t VectorBytes(DType weight_dtype, size_t count) {
  return IsFloat(weight_dtype) ? DTypeBytes(weight_dtype, count) : DTypeBytes(DType::kF32, count);
}

}  // namespace

StatusOr<ModelSpec> ParseModelSpec(std::string_view config_json, std::string_view generation_json,
                                   std::string_view config_where,
                                   std::string_view generation_where) {
  ASSIGN_OR_RETURN(Json root, ParseObject(config_json, config_where));
  Fields config(root, config_where);
  ModelSpec spec;

  const Json* archs = config.Find("architectures");
  if (archs == nullptr) return config.Missing("architectures");
  if (!archs->is_array() || archs->size() != 1 || !(*archs)[0].is_string()) {
    return config.Invalid("architectures", "must be a list holding one architecture name");
  }
  spec.architecture = (*archs)[0].get<std::string>();
  std::string expected_type;
  if (spec.architecture == "LlamaForCausalLM") {
    expected_type = "llama";
  } else if (spec.architecture == "Qwen2ForCausalLM") {
    expected_type = "qwen2";
  } else if (spec.architecture == "MistralForCausalLM") {
    expected_type = "mistral";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(config_where), ": unsupported architecture '", spec.architecture,
                     "' (supported: LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)"));
  }
  spec.model_type = expected_type;
  if (const Json* mt = config.Find("model_type")) {
    if (!mt->is_string() || mt->get<std::string>() != expected_type) {
      return config.Invalid("model_type",
                            absl::StrCat("must be '", expected_type, "' for ", spec.architecture));
    }
  }

  if (const Json* act = config.Find("hidden_act")) {
    if (!act->is_string() || act->get<std::string>() != "silu") {
      return config.Invalid("hidden_act", "must be 'silu' (the only supported activation)");
    }
  }
  ASSIGN_OR_RETURN(bool mlp_bias, config.Bool("mlp_bias", false));
  if (mlp_bias) return config.Invalid("mlp_bias", "is not supported (must be false)");

  ASSIGN_OR_RETURN(spec.hidden_size, config.Int("hidden_size", 1));
  ASSIGN_OR_RETURN(spec.intermediate_size, config.Int("intermediate_size", 1));
  ASSIGN_OR_RETURN(spec.num_layers, config.Int("num_hidden_layers", 1));
  ASSIGN_OR_RETURN(spec.num_heads, config.Int("num_attention_heads", 1));
  ASSIGN_OR_RETURN(spec.num_kv_heads,
                   config.Int("num_key_value_heads", 1, spec.num_heads, spec.num_heads));
  if (spec.num_heads % spec.num_kv_heads != 0) {
    return config.Invalid("num_key_value_heads",
                          absl::StrCat("must divide num_attention_heads (", spec.num_heads, ")"));
  }
  if (config.Has("head_dim")) {
    ASSIGN_OR_RETURN(spec.head_dim, config.Int("head_dim", 2));
  } else {
    if (spec.hidden_size % spec.num_heads != 0) {
      return config.Invalid("num_attention_heads",
                            absl::StrCat("must divide hidden_size (", spec.hidden_size,
                                         ") when head_dim is not given"));
    }
    spec.head_dim = spec.hidden_size / spec.num_heads;
  }
  if (spec.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(config_where), ": head_dim ",
                                                   spec.head_dim,
                                                   " must be even for rotary embeddings"));
  }
  ASSIGN_OR_RETURN(spec.vocab_size, config.Int("vocab_size", 1));
  ASSIGN_OR_RETURN(spec.max_position_embeddings, config.Int("max_position_embeddings", 1));
  ASSIGN_OR_RETURN(spec.rope_theta, config.Positive("rope_theta", 10000.0));
  RETURN_IF_ERROR(ParseRopeScaling(config, config_where, &spec.rope_scaling));
  ASSIGN_OR_RETURN(spec.rms_norm_eps, config.Positive("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(spec.tie_word_embeddings, config.Bool("tie_word_embeddings", false));

  if (expected_type == "qwen2") {
    spec.attention_bias = true;  // Qwen2 always has q/k/v biases
    ASSIGN_OR_RETURN(bool sliding, config.Bool("use_sliding_window", false));
    if (sliding) {
      return config.Invalid("use_sliding_window", "is not supported (must be false)");
    }
  } else if (expected_type == "llama") {
    // Llama's attention_bias also puts a bias on o_proj, which is not supported.
    ASSIGN_OR_RETURN(bool bias, config.Bool("attention_bias", false));
    if (bias) return config.Invalid("attention_bias", "is not supported for Llama (must be false)");
  } else {  // mistral
    if (config.Has("sliding_window")) {
      ASSIGN_OR_RETURN(int window, config.Int("sliding_window", 1));
      spec.sliding_window = window;
    }
  }
  ASSIGN_OR_RETURN(spec.torch_dtype, ParseTorchDtype(config));

  if (config.Has("bos_token_id")) {
    ASSIGN_OR_RETURN(std::vector<int> bos, config.TokenIds("bos_token_id"));
    if (bos.size() != 1) return config.Invalid("bos_token_id", "must be a single token id");
    spec.bos_token_id = bos[0];
  }
  ASSIGN_OR_RETURN(spec.eos_token_ids, config.TokenIds("eos_token_id"));
  if (!generation_json.empty()) {
    RETURN_IF_ERROR(ParseGeneration(generation_json, generation_where, &spec));
  }
  for (int id : spec.eos_token_ids) {
    if (id >= spec.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(config_where), ": eos_token_id ",
                                                     id, " is outside the vocabulary (",
                                                     spec.vocab_size, ")"));
    }
  }
  if (spec.bos_token_id && *spec.bos_token_id >= spec.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(config_where), ": bos_token_id ", *spec.bos_token_id,
                     " is outside the vocabulary (", spec.vocab_size, ")"));
  }
  return spec;
}

StatusOr<ModelSpec> LoadModelSpec(const std::filesystem::path& model_dir) {
  const std::filesystem::path config_path = model_dir / "config.json";
  const std::filesystem::path gen_path = model_dir / "generation_config.json";
  ASSIGN_OR_RETURN(std::string config_text, ReadSmallFile(config_path));
  std::string gen_text;
  std::error_code ec;
  if (std::filesystem::exists(gen_path, ec)) {
    ASSIGN_OR_RETURN(gen_text, ReadSmallFile(gen_path));
    if (gen_text.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(gen_path.string(), ": empty file"));
    }
  }
  return ParseModelSpec(config_text, gen_text, config_path.string(), gen_path.string());
}

size_t ModelSpec::LayerWeightBytes(DType weight_dtype) const {
  const size_t h = hidden_size;
  const size_t matrix_elems = h * q_size() + 2 * h * kv_size() + q_size() * h +
                              3 * h * static_cast<size_t>(intermediate_size);
  size_t vector_elems = 2 * h;  // input_layernorm, post_attention_layernorm
  if (attention_bias) vector_elems += q_size() + 2 * static_cast<size_t>(kv_size());
  return DTypeBytes(weight_dtype, matrix_elems) + VectorBytes(weight_dtype, vector_elems);
}

size_t ModelSpec::EmbeddingBytes(DType weight_dtype) const {
  return DTypeBytes(weight_dtype, static_cast<size_t>(vocab_size) * hidden_size);
}

size_t ModelSpec::HeadBytes(DType weight_dtype) const {
  size_t bytes = VectorBytes(weight_dtype, hidden_size);
  if (!tie_word_embeddings) bytes += EmbeddingBytes(weight_dtype);
  return bytes;
}

size_t ModelSpec::KvBytesPerTokenPerLayer(DType kv_dtype) const {
  return DTypeBytes(kv_dtype, 2 * static_cast<size_t>(kv_size()));
}

std::string ModelSpec::Fingerprint() const {
  char theta[64], eps[64], rope[160];
  std::snprintf(theta, sizeof theta, "%.17g", rope_theta);
  std::snprintf(eps, sizeof eps, "%.17g", rms_norm_eps);
  std::snprintf(rope, sizeof rope, "%d,%.17g,%.17g,%.17g,%d", static_cast<int>(rope_scaling.type),
                rope_scaling.factor, rope_scaling.low_freq_factor, rope_scaling.high_freq_factor,
                rope_scaling.original_max_position_embeddings);
  const std::string canonical =
      absl::StrCat("v1|", architecture, "|h", hidden_size, "|i", intermediate_size, "|l",
                   num_layers, "|q", num_heads, "|kv", num_kv_heads, "|d", head_dim, "|theta",
                   theta, "|rope", rope, "|eps", eps, "|vocab", vocab_size, "|tie",
                   tie_word_embeddings, "|bias", attention_bias, "|sw", sliding_window.value_or(0));
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(Fnv1a64(canonical)));
  return hex;
}

std::string ModelSpec::ToString() const {
  std::string rope = "none";
  if (rope_scaling.type == RopeScaling::Type::kLinear) {
    rope = absl::StrCat("linear x", rope_scaling.factor);
  } else if (rope_scaling.type == RopeScaling::Type::kLlama3) {
    rope = absl::StrCat("llama3 x", rope_scaling.factor);
  }
  return absl::StrCat(architecture, " hidden=", hidden_size, " intermediate=", intermediate_size,
                      " layers=", num_layers, " heads=", num_heads, "/", num_kv_heads,
                      " head_dim=", head_dim, " vocab=", vocab_size, " rope_theta=", rope_theta,
                      " rope_scaling=", rope, tie_word_embeddings ? " tied" : " untied",
                      attention_bias ? " qkv_bias" : "");
}

}  // namespace tandem
