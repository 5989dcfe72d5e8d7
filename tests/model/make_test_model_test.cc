// Runs tools/make-test-model and opens what it writes with the model library.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "model/tensor_names.h"
#include "nlohmann/json.hpp"
#include "tests/model/test_dir.h"

namespace tandem {
namespace {

std::filesystem::path Tool() {
  const char* src = std::getenv("TANDEM_SOURCE_DIR");
  return std::filesystem::path(src ? src : ".") / "tools" / "make-test-model";
}

void MakeModel(const std::filesystem::path& out, const std::string& args) {
  const std::string cmd = Tool().string() + " --out " + out.string() + " " + args + " > " +
                          (out.parent_path() / "make-test-model.log").string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

// Every tensor the spec implies is present with its shape, and nothing else.
void ExpectCompleteCheckpoint(const ModelSpec& spec, const Checkpoint& ckpt) {
  std::vector<ExpectedTensor> all = {EmbeddingTensor(spec)};
  for (int l = 0; l < spec.num_layers; ++l) {
    auto layer = LayerTensors(spec, l);
    all.insert(all.end(), layer.begin(), layer.end());
  }
  auto head = HeadTensors(spec);
  all.insert(all.end(), head.begin(), head.end());
  Status s = CheckTensors(ckpt, all);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(ckpt.Names().size(), all.size());
}

double StdDev(const std::vector<float>& v) {
  double mean = 0, sq = 0;
  for (float x : v) mean += x;
  mean /= v.size();
  for (float x : v) sq += (x - mean) * (x - mean);
  return std::sqrt(sq / v.size());
}

std::vector<float> ReadF32(const Checkpoint& ckpt, const std::string& name) {
  auto view = ckpt.Get(name);
  EXPECT_TRUE(view.ok()) << view.status();
  if (!view.ok()) return {};
  std::vector<float> out(view->NumElements());
  ConvertToF32(view->dtype, view->data, out.data(), out.size());
  return out;
}

TEST(MakeTestModelTest, WritesATinyLlamaThatLoads) {
  auto dir = testing_util::FreshTestDir();
  MakeModel(dir / "m", "--preset tiny-llama --seed 3");
  auto spec = LoadModelSpec(dir / "m");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->architecture, "LlamaForCausalLM");
  EXPECT_EQ(spec->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_FALSE(spec->tie_word_embeddings);
  EXPECT_FALSE(spec->attention_bias);
  EXPECT_EQ(spec->torch_dtype, DType::kF32);
  auto ckpt = Checkpoint::Open(dir / "m");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ExpectCompleteCheckpoint(*spec, *ckpt);

  // Query weights spread wide enough for peaked attention; norms near 1.
  auto q = ReadF32(*ckpt, LayerTensorName(1, "self_attn.q_proj.weight"));
  EXPECT_NEAR(StdDev(q), 0.2, 0.02);
  auto norm = ReadF32(*ckpt, LayerTensorName(0, "input_layernorm.weight"));
  double mean = 0;
  for (float x : norm) mean += x;
  EXPECT_NEAR(mean / norm.size(), 1.0, 0.05);
  EXPECT_GT(StdDev(norm), 0.03);

  // The tokenizer's special tokens fit the model's vocabulary and match the config.
  std::ifstream in(dir / "m" / "tokenizer.json");
  nlohmann::json tok = nlohmann::json::parse(in);
  ASSERT_EQ(tok["added_tokens"].size(), 5u);
  EXPECT_EQ(tok["added_tokens"][0]["content"], "<|begin_of_text|>");
  EXPECT_EQ(tok["added_tokens"][0]["id"].get<int>(), spec->bos_token_id.value());
  for (const auto& t : tok["added_tokens"]) EXPECT_LT(t["id"].get<int>(), spec->vocab_size);
  EXPECT_GT(tok["model"]["merges"].size(), 100u);
  EXPECT_EQ(tok["model"]["vocab"].size() + 5, static_cast<size_t>(spec->vocab_size - 16 + 5));
}

TEST(MakeTestModelTest, WritesAShardedTinyQwen2ThatLoads) {
  auto dir = testing_util::FreshTestDir();
  MakeModel(dir / "m", "--preset tiny-qwen2 --dtype bf16 --shards 3");
  auto spec = LoadModelSpec(dir / "m");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->architecture, "Qwen2ForCausalLM");
  EXPECT_TRUE(spec->attention_bias);
  EXPECT_TRUE(spec->tie_word_embeddings);
  auto ckpt = Checkpoint::Open(dir / "m");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(ckpt->sharded());
  EXPECT_EQ(ckpt->num_shards(), 3);
  ExpectCompleteCheckpoint(*spec, *ckpt);
  EXPECT_FALSE(ckpt->Has("lm_head.weight"));
  EXPECT_EQ(ckpt->Info(kEmbedTokensName)->dtype, DType::kBF16);
  EXPECT_TRUE(ckpt->ValidateAll().ok());
}

TEST(MakeTestModelTest, Bf16IsTheRoundedF32OfTheSameSeed) {
  auto dir = testing_util::FreshTestDir();
  const std::string shape =
      "--arch mistral --hidden 48 --heads 3 --kv-heads 1 --layers 1 "
      "--intermediate 96 --vocab 300 --seed 11";
  MakeModel(dir / "f32", shape + " --dtype f32");
  MakeModel(dir / "bf16", shape + " --dtype bf16");
  MakeModel(dir / "f16", shape + " --dtype f16");
  auto f32 = Checkpoint::Open(dir / "f32");
  auto bf16 = Checkpoint::Open(dir / "bf16");
  auto f16 = Checkpoint::Open(dir / "f16");
  ASSERT_TRUE(f32.ok() && bf16.ok() && f16.ok());
  auto spec = LoadModelSpec(dir / "bf16");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->architecture, "MistralForCausalLM");
  EXPECT_EQ(spec->torch_dtype, DType::kBF16);
  size_t compared = 0;
  for (const std::string& name : f32->Names()) {
    TensorView a = f32->Get(name).value();
    TensorView b = bf16->Get(name).value();
    TensorView h = f16->Get(name).value();
    ASSERT_EQ(a.shape, b.shape) << name;
    for (int64_t i = 0; i < a.NumElements(); ++i) {
      const float x = a.As<float>()[i];
      ASSERT_EQ(b.As<BFloat16>()[i].bits, F32ToBF16(x).bits) << name << "[" << i << "]";
      ASSERT_EQ(h.As<Float16>()[i].bits, F32ToF16(x).bits) << name << "[" << i << "]";
      ++compared;
    }
  }
  EXPECT_GT(compared, 10000u);
}

TEST(MakeTestModelTest, IsDeterministicFromTheSeed) {
  auto dir = testing_util::FreshTestDir();
  MakeModel(dir / "a", "--preset tiny-qwen2 --seed 5");
  MakeModel(dir / "b", "--preset tiny-qwen2 --seed 5");
  MakeModel(dir / "c", "--preset tiny-qwen2 --seed 6");
  auto read = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  EXPECT_EQ(read(dir / "a" / "model.safetensors"), read(dir / "b" / "model.safetensors"));
  EXPECT_NE(read(dir / "a" / "model.safetensors"), read(dir / "c" / "model.safetensors"));
  EXPECT_EQ(read(dir / "a" / "tokenizer.json"), read(dir / "c" / "tokenizer.json"));
}

}  // namespace
}  // namespace tandem
