// The weight description: which tensors a stage loads for its layer range,
// how tensor parallelism splits them, and what quantization materializes.
#include "node/model_weights.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

class ModelWeightsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* source = std::getenv("TANDEM_SOURCE_DIR");
    ASSERT_NE(source, nullptr) << "TANDEM_SOURCE_DIR must point at the repository";
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("tandem-weights-test-" + std::to_string(::getpid())));
    for (auto [name, args] : {std::pair{"untied", "--preset tiny-llama --dtype bf16 --untied"},
                              std::pair{"tied", "--preset tiny-qwen2 --dtype f16 --tied"},
                              // down_proj rows wider than one CPU column block
                              std::pair{"wide", "--preset tiny-llama --dtype bf16 --layers 1 "
                                                "--intermediate 4160"}}) {
      std::string cmd = std::string(source) + "/tools/make-test-model --out " +
                        (*dir_ / name).string() + " " + args + " > /dev/null";
      ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    }
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    fs::remove_all(*dir_, ignored);
    delete dir_;
  }

  static std::unique_ptr<LoadedStageWeights> Load(const std::string& name,
                                                  const WeightLoadOptions& options,
                                                  ModelSpec* spec_out = nullptr) {
    ModelSpec spec = LoadModelSpec(*dir_ / name).value();
    if (spec_out) *spec_out = spec;
    auto checkpoint = std::make_shared<const Checkpoint>(Checkpoint::Open(*dir_ / name).value());
    auto loaded = LoadStageWeights(spec, checkpoint, options);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? std::move(loaded).value() : nullptr;
  }

  static fs::path* dir_;
};
fs::path* ModelWeightsTest::dir_ = nullptr;

std::vector<std::string> Names(StageWeights w) {
  std::vector<std::string> names;
  w.ForEachTensor([&](TensorSlot& slot) { names.push_back(slot.name); });
  return names;
}

TEST_F(ModelWeightsTest, EachStageVisitsOnlyItsTensors) {
  ModelSpec spec = LoadModelSpec(*dir_ / "untied").value();
  StageWeights first{.spec = spec, .range = {.layer_begin = 0, .layer_end = 1}};
  first.layers.resize(1);
  std::vector<std::string> names = Names(first);
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names.size(), 1u + 9u);  // embedding + 2 norms + 7 matrices
  for (const std::string& n : names) EXPECT_EQ(n.find("layers.1."), std::string::npos) << n;

  StageWeights middle{.spec = spec, .range = {.layer_begin = 1, .layer_end = 3}};
  middle.layers.resize(2);
  names = Names(middle);
  EXPECT_EQ(names.size(), 18u);
  EXPECT_EQ(names.front(), "model.layers.1.input_layernorm.weight");

  StageWeights last{.spec = spec, .range = {.layer_begin = 3, .layer_end = 4}};
  last.layers.resize(1);
  names = Names(last);
  EXPECT_EQ(names[names.size() - 2], "model.norm.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
}

TEST_F(ModelWeightsTest, TiedLmHeadReadsTheEmbeddingAndBiasesAreVisited) {
  ModelSpec spec = LoadModelSpec(*dir_ / "tied").value();
  StageWeights all{.spec = spec, .range = {.layer_begin = 0, .layer_end = spec.num_layers}};
  all.layers.resize(static_cast<size_t>(spec.num_layers));
  std::vector<std::string> names = Names(all);
  EXPECT_EQ(names.back(), "model.embed_tokens.weight");
  EXPECT_EQ(std::count(names.begin(), names.end(), "model.layers.0.self_attn.k_proj.bias"), 1);
}

TEST_F(ModelWeightsTest, TensorParallelShardsHaveTheirShare) {
  ModelSpec spec;
  auto w = Load("untied", {.range = {.layer_begin = 0, .layer_end = 4}, .tp = 2}, &spec);
  ASSERT_TRUE(w);
  ASSERT_EQ(w->tp(), 2);
  for (int r = 0; r < 2; ++r) {
    const LayerWeights& l = w->rank(r).layers[0];
    EXPECT_EQ(l.q.rows, spec.q_size() / 2);
    EXPECT_EQ(l.q.cols, spec.hidden_size);
    EXPECT_EQ(l.k.rows, spec.kv_size() / 2);
    EXPECT_EQ(l.o.rows, spec.hidden_size);
    EXPECT_EQ(l.o.cols, spec.q_size() / 2);
    EXPECT_EQ(l.down.cols, spec.intermediate_size / 2);
    EXPECT_EQ(l.gate.dtype, DType::kBF16);  // kept as stored
    EXPECT_EQ(w->rank(r).lm_head.rows, spec.vocab_size / 2);
    EXPECT_EQ(w->rank(r).lm_head_row_begin, r * spec.vocab_size / 2);
  }
  // Row shards point into the checkpoint; column shards are copies.
  EXPECT_TRUE(w->uses_checkpoint());
  EXPECT_NE(w->rank(0).layers[0].q.data, w->rank(1).layers[0].q.data);
  EXPECT_GT(w->owned_bytes(), 0u);
  // The replicated embedding is shared by the ranks, not loaded twice.
  EXPECT_EQ(w->rank(0).embedding.data, w->rank(1).embedding.data);
  // A decode step reads every layer and lm_head once: the whole bf16 model
  // but the embedding (untied) and minus nothing else.
  const size_t expected = spec.LayerWeightBytes(DType::kBF16) * 4 -
                          // norms count as f32 after widening
                          0 + spec.HeadBytes(DType::kBF16);
  EXPECT_NEAR(static_cast<double>(w->bytes_per_step()), static_cast<double>(expected),
              0.02 * static_cast<double>(expected));
}

TEST_F(ModelWeightsTest, QuantizedTiedHeadSharesTheQuantizedEmbedding) {
  ModelSpec spec;
  auto w = Load("tied", {.range = {.layer_begin = 0, .layer_end = 3},
                         .quantize = WeightQuantization::kInt8}, &spec);
  ASSERT_TRUE(w);
  const StageWeights& s = w->rank(0);
  EXPECT_EQ(s.embedding.dtype, DType::kI8);
  EXPECT_EQ(s.lm_head.data, s.embedding.data);
  EXPECT_EQ(s.layers[1].down.dtype, DType::kI8);
  EXPECT_NE(s.layers[1].q_bias, nullptr);
  EXPECT_FALSE(w->uses_checkpoint());

  auto w4 = Load("tied", {.range = {.layer_begin = 1, .layer_end = 2},
                          .quantize = WeightQuantization::kInt4, .int4_group_size = 32});
  ASSERT_TRUE(w4);
  EXPECT_EQ(w4->rank(0).layers[0].up.dtype, DType::kI4);
  EXPECT_EQ(w4->rank(0).layers[0].up.group_size, 32);
  EXPECT_EQ(w4->rank(0).embedding.data, nullptr);  // not the first stage
}

TEST_F(ModelWeightsTest, CpuLayoutOwnsTheSameRows) {
  ModelSpec spec;
  for (int tp : {1, 2}) {
    SCOPED_TRACE(::testing::Message() << "tp=" << tp);
    const WeightLoadOptions plain_options{.range = {.layer_begin = 0, .layer_end = 1}, .tp = tp};
    WeightLoadOptions blocked_options = plain_options;
    blocked_options.cpu_layout = true;
    auto plain = Load("wide", plain_options, &spec);
    auto blocked = Load("wide", blocked_options);
    ASSERT_TRUE(plain && blocked);
    for (int r = 0; r < tp; ++r) {
      const StageWeights& p = plain->rank(r);
      const StageWeights& b = blocked->rank(r);
      const cpu::WeightMatrix& down = b.layers[0].down;
      ASSERT_EQ(down.cols, spec.intermediate_size / tp);
      EXPECT_EQ(p.layers[0].down.col_block, 0);
      EXPECT_EQ(down.col_block, cpu::ColumnBlockFor(DType::kBF16, down.cols));
      EXPECT_GT(cpu::NumColumnBlocks(down), 1);
      // Narrow rows and the looked-up embedding stay row-major.
      EXPECT_EQ(b.layers[0].gate.col_block, 0);
      EXPECT_EQ(b.embedding.col_block, 0);
      // Every matrix is an owned copy, its rows starting on cache lines.
      for (const cpu::WeightMatrix* m : {&b.embedding, &b.layers[0].q, &b.layers[0].k,
                                         &b.layers[0].o, &b.layers[0].gate, &down}) {
        EXPECT_EQ(reinterpret_cast<uintptr_t>(m->data) % kBufferAlignment, 0u);
      }
      for (int64_t row : {int64_t{0}, b.layers[0].gate.rows - 1}) {
        std::vector<float> want_gate(static_cast<size_t>(spec.hidden_size)), got_gate(want_gate.size());
        cpu::DequantizeRow(p.layers[0].gate, row, want_gate.data());
        cpu::DequantizeRow(b.layers[0].gate, row, got_gate.data());
        ASSERT_EQ(want_gate, got_gate) << "rank " << r << " gate row " << row;
      }
      std::vector<float> want(static_cast<size_t>(down.cols)), got(want.size());
      for (int64_t row = 0; row < down.rows; ++row) {
        cpu::DequantizeRow(p.layers[0].down, row, want.data());
        cpu::DequantizeRow(down, row, got.data());
        ASSERT_EQ(want, got) << "rank " << r << " row " << row;
      }
    }
    EXPECT_TRUE(plain->uses_checkpoint());
    EXPECT_FALSE(blocked->uses_checkpoint());
    EXPECT_EQ(blocked->weight_bytes(), plain->weight_bytes());
    EXPECT_EQ(blocked->bytes_per_step(), plain->bytes_per_step());
  }
}

TEST_F(ModelWeightsTest, BadRangesAndSplitsAreErrors) {
  ModelSpec spec = LoadModelSpec(*dir_ / "untied").value();
  auto checkpoint =
      std::make_shared<const Checkpoint>(Checkpoint::Open(*dir_ / "untied").value());
  EXPECT_FALSE(LoadStageWeights(spec, checkpoint, {.range = {.layer_begin = 2, .layer_end = 2}}).ok());
  EXPECT_FALSE(LoadStageWeights(spec, checkpoint, {.range = {.layer_begin = 0, .layer_end = 9}}).ok());
  EXPECT_FALSE(LoadStageWeights(spec, checkpoint,
                                {.range = {.layer_begin = 0, .layer_end = 1}, .tp = 3}).ok());
  EXPECT_FALSE(LoadStageWeights(spec, checkpoint,
                                {.range = {.layer_begin = 0, .layer_end = 1},
                                 .quantize = WeightQuantization::kInt4, .int4_group_size = 20})
                   .ok());
  // A config that does not match the checkpoint's shapes.
  ModelSpec wrong = spec;
  wrong.intermediate_size += 2;
  auto status = LoadStageWeights(wrong, checkpoint, {.range = {.layer_begin = 0, .layer_end = 1}});
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.status().message().find("gate_proj"), std::string::npos) << status.status();
}

}  // namespace
}  // namespace tandem
