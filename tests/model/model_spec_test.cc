#include "model/model_spec.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/model/test_dir.h"

namespace tandem {
namespace {

// config.json of Llama-3.2-1B as published.
constexpr char kLlama32Config[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

constexpr char kLlama32Generation[] = R"({"bos_token_id": 128000, "do_sample": true,
  "eos_token_id": [128001, 128008, 128009], "temperature": 0.6, "top_p": 0.9})";

// config.json of Qwen2.5-0.5B-Instruct as published.
constexpr char kQwen25Config[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936})";

// config.json of Mistral-7B-v0.1 as published (no head_dim: 4096 / 32).
constexpr char kMistralConfig[] = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
  "vocab_size": 32000})";

// A small Llama-2 style config: no num_key_value_heads, no head_dim, linear rope.
constexpr char kLlama2Config[] = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 688,
  "num_attention_heads": 8, "num_hidden_layers": 2, "vocab_size": 1000,
  "max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0},
  "bos_token_id": 1, "eos_token_id": 2})";

std::string ErrorOf(const std::string& config, const std::string& generation = "") {
  auto spec = ParseModelSpec(config, generation);
  EXPECT_FALSE(spec.ok()) << config;
  return spec.ok() ? "" : std::string(spec.status().message());
}

// Replaces the first occurrence of `from` in `text`.
std::string With(std::string text, const std::string& from, const std::string& to) {
  size_t pos = text.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) text.replace(pos, from.size(), to);
  return text;
}

TEST(ModelSpecTest, ParsesLlama32) {
  auto spec = ParseModelSpec(kLlama32Config, kLlama32Generation);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->architecture, "LlamaForCausalLM");
  EXPECT_EQ(spec->model_type, "llama");
  EXPECT_EQ(spec->hidden_size, 2048);
  EXPECT_EQ(spec->intermediate_size, 8192);
  EXPECT_EQ(spec->num_layers, 16);
  EXPECT_EQ(spec->num_heads, 32);
  EXPECT_EQ(spec->num_kv_heads, 8);
  EXPECT_EQ(spec->head_dim, 64);
  EXPECT_EQ(spec->rope_theta, 500000.0);
  EXPECT_EQ(spec->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(spec->rope_scaling.factor, 32.0);
  EXPECT_EQ(spec->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(spec->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(spec->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(spec->rms_norm_eps, 1e-5);
  EXPECT_EQ(spec->vocab_size, 128256);
  EXPECT_TRUE(spec->tie_word_embeddings);
  EXPECT_FALSE(spec->attention_bias);
  EXPECT_EQ(spec->max_position_embeddings, 131072);
  EXPECT_EQ(spec->torch_dtype, DType::kBF16);
  EXPECT_EQ(spec->bos_token_id, 128000);
  // generation_config.json wins over config.json's single eos id.
  EXPECT_EQ(spec->eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(spec->generation.temperature, 0.6);
  EXPECT_EQ(spec->generation.top_p, 0.9);
  EXPECT_FALSE(spec->generation.top_k.has_value());
  EXPECT_EQ(spec->generation.do_sample, true);
}

TEST(ModelSpecTest, DerivesByteCountsForLlama32) {
  auto spec = ParseModelSpec(kLlama32Config, "");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->eos_token_ids, (std::vector<int>{128001}));
  // q 2048x2048, k and v 512x2048, o 2048x2048, gate/up/down 3 x 8192x2048, two norms of 2048.
  const size_t elements = 2048ull * 2048 * 2 + 512ull * 2048 * 2 + 3ull * 8192 * 2048 + 2 * 2048;
  EXPECT_EQ(spec->LayerWeightBytes(DType::kBF16), elements * 2);
  EXPECT_EQ(spec->LayerWeightBytes(DType::kF32), elements * 4);
  EXPECT_EQ(spec->EmbeddingBytes(DType::kBF16), 128256ull * 2048 * 2);
  EXPECT_EQ(spec->HeadBytes(DType::kBF16), 2048u * 2);  // tied: only the final norm
  EXPECT_EQ(spec->KvBytesPerTokenPerLayer(DType::kBF16), 2u * 8 * 64 * 2);
  EXPECT_EQ(spec->KvBytesPerTokenPerLayer(DType::kF32), 2u * 8 * 64 * 4);
  // int8 matrices, f32 norms.
  const size_t matrices = elements - 2 * 2048;
  EXPECT_EQ(spec->LayerWeightBytes(DType::kI8), matrices + 2 * 2048 * 4);
}

TEST(ModelSpecTest, ParsesQwen25WithBiasesAndTying) {
  auto spec = ParseModelSpec(kQwen25Config, "");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(spec->head_dim, 64);  // 896 / 14
  EXPECT_EQ(spec->num_kv_heads, 2);
  EXPECT_TRUE(spec->attention_bias);
  EXPECT_TRUE(spec->tie_word_embeddings);
  EXPECT_EQ(spec->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_FALSE(spec->sliding_window.has_value());
  EXPECT_EQ(spec->eos_token_ids, (std::vector<int>{151645}));
  const size_t matrices = 896ull * 896 * 2 + 128ull * 896 * 2 + 3ull * 4864 * 896;
  const size_t vectors = 2 * 896 + 896 + 2 * 128;  // norms + q/k/v biases
  EXPECT_EQ(spec->LayerWeightBytes(DType::kBF16), (matrices + vectors) * 2);
  EXPECT_EQ(spec->KvBytesPerTokenPerLayer(DType::kF16), 2u * 2 * 64 * 2);
}

TEST(ModelSpecTest, ParsesMistral) {
  auto spec = ParseModelSpec(kMistralConfig, "");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model_type, "mistral");
  EXPECT_EQ(spec->head_dim, 128);
  EXPECT_EQ(spec->sliding_window, 4096);
  EXPECT_FALSE(spec->attention_bias);
  EXPECT_FALSE(spec->tie_word_embeddings);
  EXPECT_EQ(spec->HeadBytes(DType::kBF16), (32000ull * 4096 + 4096) * 2);
}

TEST(ModelSpecTest, AppliesDefaultsAndLinearRope) {
  auto spec = ParseModelSpec(kLlama2Config, "");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->num_kv_heads, 8);
  EXPECT_EQ(spec->head_dim, 32);
  EXPECT_EQ(spec->rope_theta, 10000.0);
  EXPECT_EQ(spec->rms_norm_eps, 1e-6);
  EXPECT_EQ(spec->torch_dtype, DType::kF32);
  EXPECT_FALSE(spec->tie_word_embeddings);
  EXPECT_EQ(spec->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_EQ(spec->rope_scaling.factor, 2.0);
  auto none = ParseModelSpec(
      With(kLlama2Config, R"({"type": "linear", "factor": 2.0})", R"({"rope_type": "default"})"),
      "");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->rope_scaling.type, RopeScaling::Type::kNone);
}

TEST(ModelSpecTest, RefusesUnknownArchitecturesAndMissingFields) {
  EXPECT_NE(ErrorOf(With(kLlama32Config, "LlamaForCausalLM", "GPTNeoXForCausalLM"))
                .find("unsupported architecture 'GPTNeoXForCausalLM'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("architectures": ["LlamaForCausalLM"],)", ""))
                .find("'architectures'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("hidden_size": 2048,)", "")).find("'hidden_size'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("vocab_size": 128256)", R"("vocab_size": "big")"))
                .find("'vocab_size'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("num_hidden_layers": 16)", R"("num_hidden_layers": 0)"))
                .find("'num_hidden_layers'"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(With(kLlama32Config, R"("num_key_value_heads": 8)", R"("num_key_value_heads": 7)"))
          .find("'num_key_value_heads'"),
      std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama2Config, R"("hidden_size": 256)", R"("hidden_size": 260)"))
                .find("head_dim"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("hidden_act": "silu")", R"("hidden_act": "gelu")"))
                .find("'hidden_act'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("attention_bias": false)", R"("attention_bias": true)"))
                .find("'attention_bias'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("mlp_bias": false)", R"("mlp_bias": true)"))
                .find("'mlp_bias'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, "bfloat16", "int8")).find("'torch_dtype'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("model_type": "llama")", R"("model_type": "qwen2")"))
                .find("'model_type'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(With(kQwen25Config, R"("use_sliding_window": false)",
                         R"("use_sliding_window": true)"))
                .find("'use_sliding_window'"),
            std::string::npos);
  EXPECT_NE(ErrorOf("[1, 2]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(ErrorOf("{\"architectures\": ").find("not valid JSON"), std::string::npos);
}

TEST(ModelSpecTest, RefusesBadRopeScaling) {
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("rope_type": "llama3")", R"("rope_type": "yarn")"))
                .find("unsupported rope type 'yarn'"),
            std::string::npos);
  std::string err =
      ErrorOf(With(kLlama32Config, R"("original_max_position_embeddings": 8192, )", ""));
  EXPECT_NE(err.find("rope_scaling"), std::string::npos) << err;
  EXPECT_NE(err.find("'original_max_position_embeddings'"), std::string::npos) << err;
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("factor": 32.0)", R"("factor": -1)")).find("'factor'"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(With(kLlama32Config, R"("high_freq_factor": 4.0)", R"("high_freq_factor": 0.5)"))
          .find("'high_freq_factor'"),
      std::string::npos);
  EXPECT_NE(ErrorOf(With(kLlama32Config, R"("rope_type": "llama3")", R"("kind": "llama3")"))
                .find("'rope_type'"),
            std::string::npos);
}

TEST(ModelSpecTest, ReadsTokenIdsAsIntOrList) {
  auto a = ParseModelSpec(kLlama32Config, R"({"eos_token_id": 128009})");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->eos_token_ids, (std::vector<int>{128009}));
  EXPECT_NE(ErrorOf(kLlama32Config, R"({"eos_token_id": "x"})").find("'eos_token_id'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(kLlama32Config, R"({"eos_token_id": [999999]})").find("outside the vocabulary"),
            std::string::npos);
  EXPECT_NE(ErrorOf(kLlama32Config, R"({"top_p": 1.5})").find("'top_p'"), std::string::npos);
  std::string err = ErrorOf(kLlama32Config, R"({"temperature": "hot"})");
  EXPECT_NE(err.find("generation_config.json"), std::string::npos) << err;
}

TEST(ModelSpecTest, FingerprintFollowsShapesOnly) {
  auto a = ParseModelSpec(kLlama32Config, kLlama32Generation);
  auto b = ParseModelSpec(kLlama32Config, "");
  auto c = ParseModelSpec(
      With(kLlama32Config, R"("num_hidden_layers": 16)", R"("num_hidden_layers": 15)"), "");
  auto d = ParseModelSpec(With(kLlama32Config, R"("factor": 32.0)", R"("factor": 8.0)"), "");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  EXPECT_EQ(a->Fingerprint().size(), 16u);
  EXPECT_EQ(a->Fingerprint(), b->Fingerprint());
  EXPECT_NE(a->Fingerprint(), c->Fingerprint());
  EXPECT_NE(a->Fingerprint(), d->Fingerprint());
  auto q = ParseModelSpec(kQwen25Config, "");
  ASSERT_TRUE(q.ok());
  EXPECT_NE(a->Fingerprint(), q->Fingerprint());
}

TEST(ModelSpecTest, LoadsFromAFolderAndNamesMissingFiles) {
  auto dir = testing_util::FreshTestDir();
  auto missing = LoadModelSpec(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("config.json"), std::string::npos);
  testing_util::WriteText(dir / "config.json", kLlama32Config);
  testing_util::WriteText(dir / "generation_config.json", kLlama32Generation);
  auto spec = LoadModelSpec(dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->eos_token_ids.size(), 3u);
  testing_util::WriteText(dir / "config.json", With(kLlama32Config, "2048,", "\"x\","));
  auto bad = LoadModelSpec(dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find((dir / "config.json").string()), std::string::npos)
      << bad.status();
}

}  // namespace
}  // namespace tandem
