// The GPU stage against the CPU stage on generated tiny models: the same
// logits for decode steps and prefill chunks, a mixed batch, a split across
// two stages, quantized weights, sampling on the GPU, tensor parallelism
// against one rank, and bad input refused. Skips without a GPU (the device
// list checks run everywhere).
#include "node/cuda_stage_executor.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/cuda/require_gpu.h"
#include "kernels/cuda/device_info.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/sampler.h"
#include "node/stage_executor.h"
#include "tests/node/stage_test_models.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

using testing::MakeModel;
using testing::RandomTokens;
using testing::RelL2;

struct Loaded {
  ModelSpec spec;
  std::shared_ptr<const Checkpoint> checkpoint;
};

Loaded Load(const fs::path& dir) {
  auto spec = LoadModelSpec(dir);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto checkpoint = Checkpoint::Open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  return {*spec, std::make_shared<const Checkpoint>(std::move(checkpoint).value())};
}

StageOptions Options(const ModelSpec& spec, int begin = 0, int end = -1,
                     WeightQuantization quantize = WeightQuantization::kNone) {
  return StageOptions{.range = {.layer_begin = begin, .layer_end = end < 0 ? spec.num_layers : end},
                      .tp = 1,
                      .threads = 2,
                      .max_batch_tokens = 64,
                      .max_batch_sequences = 4,
                      .kv_budget_bytes = size_t{8} << 20,
                      .quantize = quantize};
}

// Runs the same steps through two stages and compares each step's output:
// `prefill` tokens in one step, then greedy decode steps fed from the
// reference stage's choice.
void CompareForward(Stage& reference, Stage& tested, int prefill, int decode,
                    double prefill_tolerance, double decode_tolerance) {
  std::vector<int32_t> prompt = RandomTokens(prefill, reference.spec().vocab_size);
  SequenceStep step{.seq_id = 5, .start = 0, .count = prefill};
  auto want = reference.Forward({&step, 1}, prompt, {});
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<float> expected(want->begin(), want->end());
  auto got = tested.Forward({&step, 1}, prompt, {});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LT(RelL2(*got, expected), prefill_tolerance) << "prefill of " << prefill;
  for (int i = 0; i < decode; ++i) {
    const int32_t t = static_cast<int32_t>(std::max_element(expected.begin(), expected.end()) -
                                           expected.begin());
    SequenceStep s{.seq_id = 5, .start = prefill + i, .count = 1};
    auto w = reference.Forward({&s, 1}, {&t, 1}, {});
    ASSERT_TRUE(w.ok()) << w.status();
    expected.assign(w->begin(), w->end());
    auto g = tested.Forward({&s, 1}, {&t, 1}, {});
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_LT(RelL2(*g, expected), decode_tolerance) << "decode step " << i;
  }
}

// A CPU and a GPU stage through CompareForward: a long prefill (above 8
// tokens) takes the cuBLAS path, which rounds activations to the weight
// type; decode steps the GEMV path (f32 activations).
void CompareSteps(const Loaded& m, const StageOptions& options, int prefill, int decode,
                  double prefill_tolerance, double decode_tolerance) {
  auto cpu = StageExecutor::Create(m.spec, m.checkpoint, options);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto gpu = CudaStageExecutor::Create(m.spec, m.checkpoint, options, {0});
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  CompareForward(**cpu, **gpu, prefill, decode, prefill_tolerance, decode_tolerance);
}

TEST(CudaStageExecutorTest, DecodeStepsMatchTheCpuStage) {
  REQUIRE_GPU();
  for (auto [name, args] : {std::pair{"llama-f32", "--preset tiny-llama --dtype f32 --seed 21"},
                            std::pair{"qwen2-bf16", "--preset tiny-qwen2 --dtype bf16 --seed 22"},
                            std::pair{"llama-tied", "--preset tiny-llama --dtype f16 --seed 23 --tied"}}) {
    SCOPED_TRACE(name);
    Loaded m = Load(MakeModel(name, args));
    // A prompt of 6 tokens stays on the GEMV path: f32 activations throughout.
    CompareSteps(m, Options(m.spec), 6, 8, 1e-4, 1e-4);
  }
}

TEST(CudaStageExecutorTest, LongPrefillUsesCublasAndStaysClose) {
  REQUIRE_GPU();
  Loaded m = Load(MakeModel("llama-bf16", "--preset tiny-llama --dtype bf16 --seed 24"));
  CompareSteps(m, Options(m.spec), 40, 4, 3e-2, 3e-2);
}

TEST(CudaStageExecutorTest, QuantizedWeightsMatchTheCpuStage) {
  REQUIRE_GPU();
  Loaded m = Load(MakeModel("llama-q", "--preset tiny-llama --dtype bf16 --seed 25"));
  for (WeightQuantization q : {WeightQuantization::kInt8, WeightQuantization::kInt4}) {
    SCOPED_TRACE(std::string(WeightQuantizationName(q)));
    // The CPU decode path may quantize activations for int8/int4 weights;
    // the GPU keeps them in f32, so allow that difference.
    CompareSteps(m, Options(m.spec, 0, -1, q), 5, 4, 3e-2, 3e-2);
  }
}

TEST(CudaStageExecutorTest, TwoStagesPassHiddenStates) {
  REQUIRE_GPU();
  Loaded m = Load(MakeModel("llama-split", "--preset tiny-llama --dtype f32 --seed 26"));
  const int half = m.spec.num_layers / 2;
  auto first = CudaStageExecutor::Create(m.spec, m.checkpoint, Options(m.spec, 0, half), {0});
  auto second = CudaStageExecutor::Create(m.spec, m.checkpoint, Options(m.spec, half), {0});
  auto whole = StageExecutor::Create(m.spec, m.checkpoint, Options(m.spec));
  ASSERT_TRUE(first.ok() && second.ok() && whole.ok());
  std::vector<int32_t> prompt = RandomTokens(7, m.spec.vocab_size);
  SequenceStep s{.seq_id = 9, .start = 0, .count = 7};
  auto h = (*first)->Forward({&s, 1}, prompt, {});
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->size(), size_t{7} * m.spec.hidden_size);
  std::vector<float> hidden(h->begin(), h->end());
  auto got = (*second)->Forward({&s, 1}, {}, hidden);
  ASSERT_TRUE(got.ok()) << got.status();
  auto want = (*whole)->Forward({&s, 1}, prompt, {});
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_LT(RelL2(*got, *want), 1e-4);
}

TEST(CudaStageExecutorTest, MixedBatchEqualsSequencesAlone) {
  REQUIRE_GPU();
  Loaded m = Load(MakeModel("qwen2-mixed", "--preset tiny-qwen2 --dtype f32 --seed 27"));
  auto alone = CudaStageExecutor::Create(m.spec, m.checkpoint, Options(m.spec), {0});
  auto mixed = CudaStageExecutor::Create(m.spec, m.checkpoint, Options(m.spec), {0});
  ASSERT_TRUE(alone.ok() && mixed.ok());
  std::vector<int32_t> a = RandomTokens(5, m.spec.vocab_size), b = RandomTokens(3, m.spec.vocab_size);
  // Both sequences prefill separately, then sequence 1 decodes while 2 prefills more.
  for (auto* stage : {alone->get(), mixed->get()}) {
    SequenceStep s1{.seq_id = 1, .start = 0, .count = 5};
    ASSERT_TRUE(stage->Forward({&s1, 1}, a, {}).ok());
  }
  const int32_t next = 3;
  SequenceStep d1{.seq_id = 1, .start = 5, .count = 1};
  auto want1 = (*alone)->Forward({&d1, 1}, {&next, 1}, {});
  ASSERT_TRUE(want1.ok());
  std::vector<float> w1(want1->begin(), want1->end());
  SequenceStep p2{.seq_id = 2, .start = 0, .count = 3};
  auto want2 = (*alone)->Forward({&p2, 1}, b, {});
  ASSERT_TRUE(want2.ok());
  std::vector<float> w2(want2->begin(), want2->end());

  SequenceStep both[] = {d1, p2};
  std::vector<int32_t> tokens = {next};
  tokens.insert(tokens.end(), b.begin(), b.end());
  auto got = (*mixed)->Forward(both, tokens, {});
  ASSERT_TRUE(got.ok()) << got.status();
  const size_t vocab = static_cast<size_t>(m.spec.vocab_size);
  EXPECT_LT(RelL2(got->subspan(0, vocab), w1), 1e-5);
  EXPECT_LT(RelL2(got->subspan(vocab, vocab), w2), 1e-5);
}

// Decode steps replayed from captured graphs give exactly what launching the
// kernels one by one gives, batch size after batch size.
TEST(CudaStageExecutorTest, GraphReplayEqualsDirectLaunches) {
  REQUIRE_GPU();
  Loaded m = Load(MakeModel("llama-graph", "--preset tiny-llama --dtype bf16 --seed 29"));
  StageOptions with = Options(m.spec), without = Options(m.spec);
  without.cuda_graphs = false;
  auto graphs = CudaStageExecutor::Create(m.spec, m.checkpoint, with, {0});
  auto direct = CudaStageExecutor::Create(m.spec, m.checkpoint, without, {0});
  ASSERT_TRUE(graphs.ok() && direct.ok());
  std::vector<int32_t> prompt = RandomTokens(4, m.spec.vocab_size);
  for (uint64_t id = 1; id <= 3; ++id) {
    SequenceStep p{.seq_id = id, .start = 0, .count = 4};
    ASSERT_TRUE((*graphs)->Forward({&p, 1}, prompt, {}).ok());
    ASSERT_TRUE((*direct)->Forward({&p, 1}, prompt, {}).ok());
  }
  for (int step = 0; step < 12; ++step) {
    std::vector<SequenceStep> seqs;
    std::vector<int32_t> tokens;
    for (uint64_t id = 1; id <= 3; ++id) {
      seqs.push_back({.seq_id = id, .start = 4 + step, .count = 1});
      tokens.push_back(static_cast<int32_t>((step * 7 + id) % m.spec.vocab_size));
    }
    auto g = (*graphs)->Forward(seqs, tokens, {});
    ASSERT_TRUE(g.ok()) << g.status();
    std::vector<float> got(g->begin(), g->end());
    auto w = (*direct)->Forward(seqs, tokens, {});
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_EQ(got.size(), w->size());
    EXPECT_EQ(std::memcmp(got.data(), w->data(), got.size() * sizeof(float)), 0) << "step " << step;
  }
}

// Sampling on the GPU gives the CPU stage's tokens: three sequences (greedy,
// seeded top-p, seeded top-k with penalties) prefill, one of them without a
// token, then decode together, with and without captured graphs; each step
// feeds both stages the CPU's tokens.
TEST(CudaStageExecutorTest, SamplingOnTheGpuMatchesTheCpuStage) {
  REQUIRE_GPU();
  Loaded m = Load(MakeModel("llama-sample", "--preset tiny-llama --dtype f32 --seed 30"));
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const int vocab = m.spec.vocab_size;
  const std::vector<SamplingParams> params = {
      {.temperature = 0.0f},
      {.temperature = 0.8f, .top_p = 0.9f, .seed = seed},
      {.temperature = 1.0f, .top_k = 20, .repetition_penalty = 1.3f, .presence_penalty = 0.4f,
       .frequency_penalty = 0.5f, .seed = seed + 1}};
  for (bool graphs : {true, false}) {
    SCOPED_TRACE(graphs ? "graphs" : "direct launches");
    StageOptions options = Options(m.spec);
    options.cuda_graphs = graphs;
    auto cpu = StageExecutor::Create(m.spec, m.checkpoint, options);
    auto gpu = CudaStageExecutor::Create(m.spec, m.checkpoint, options, {0});
    ASSERT_TRUE(cpu.ok() && gpu.ok());
    std::vector<std::unique_ptr<SequenceSampler>> on_cpu, on_gpu;
    std::vector<SequenceStep> steps;
    std::vector<int32_t> tokens;
    for (size_t i = 0; i < params.size(); ++i) {
      on_cpu.push_back(std::make_unique<SequenceSampler>(params[i], vocab));
      on_gpu.push_back(std::make_unique<SequenceSampler>(params[i], vocab));
      const std::vector<int32_t> prompt = RandomTokens(4 + static_cast<int>(i), vocab);
      on_cpu.back()->SetPrompt(prompt);
      on_gpu.back()->SetPrompt(prompt);
      steps.push_back({.seq_id = 20 + i, .start = 0, .count = static_cast<int64_t>(prompt.size())});
      tokens.insert(tokens.end(), prompt.begin(), prompt.end());
    }
    std::vector<SequenceSampler*> cpu_samplers = {on_cpu[0].get(), nullptr, on_cpu[2].get()};
    std::vector<SequenceSampler*> gpu_samplers = {on_gpu[0].get(), nullptr, on_gpu[2].get()};
    for (int step = 0; step < 10; ++step) {
      auto want = (*cpu)->ForwardAndSample(steps, tokens, {}, cpu_samplers);
      ASSERT_TRUE(want.ok()) << want.status();
      const std::vector<SampledToken> expected(want->begin(), want->end());
      auto got = (*gpu)->ForwardAndSample(steps, tokens, {}, gpu_samplers);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->size(), expected.size());
      std::vector<int32_t> next;
      for (size_t i = 0; i < steps.size(); ++i) {
        EXPECT_EQ((*got)[i].token, expected[i].token) << "step " << step << " sequence " << i;
        if (expected[i].token >= 0) {
          EXPECT_NEAR((*got)[i].logprob, expected[i].logprob, 1e-3)
              << "step " << step << " sequence " << i;
        }
        next.push_back(expected[i].token >= 0 ? expected[i].token : 1);
      }
      for (size_t i = 0; i < steps.size(); ++i) {
        steps[i].start += steps[i].count;
        steps[i].count = 1;
        on_cpu[i]->SetPrompt({&next[i], 1});
        on_gpu[i]->SetPrompt({&next[i], 1});
      }
      tokens = next;
      cpu_samplers = {on_cpu[0].get(), on_cpu[1].get(), on_cpu[2].get()};
      gpu_samplers = {on_gpu[0].get(), on_gpu[1].get(), on_gpu[2].get()};
    }
  }
}

TEST(CudaStageExecutorTest, BadInputIsAnErrorAndTheStageLivesOn) {
  REQUIRE_GPU();
  Loaded m = Load(MakeModel("llama-bad", "--preset tiny-llama --dtype f32 --seed 28"));
  auto stage = CudaStageExecutor::Create(m.spec, m.checkpoint, Options(m.spec), {0});
  ASSERT_TRUE(stage.ok()) << stage.status();
  const int32_t bad = m.spec.vocab_size;
  SequenceStep s{.seq_id = 1, .start = 0, .count = 1};
  EXPECT_FALSE((*stage)->Forward({&s, 1}, {&bad, 1}, {}).ok());
  const int32_t good = 1;
  EXPECT_TRUE((*stage)->Forward({&s, 1}, {&good, 1}, {}).ok());
  EXPECT_FALSE(CudaStageExecutor::Create(m.spec, m.checkpoint, Options(m.spec), {999}).ok());
}

// The same steps through a one-rank GPU stage and through one rank per
// entry of `devices`: a prompt of `prefill` tokens, greedy decode steps fed
// from the one-rank stage's choice, then sampling on the GPU (greedy and
// seeded top-k) for both. Logits within `tolerance` relative (the ranks only
// reorder the sums); the sampled tokens are the same. int8 quantizes each
// rank's shard with its own row scales, so the row-parallel matrices'
// scales differ from one rank's: close logits, tokens not compared.
void CompareTensorParallel(const Loaded& m, const std::vector<int>& devices,
                           WeightQuantization quantize, int prefill, double tolerance) {
  const bool same_weights = quantize != WeightQuantization::kInt8;
  StageOptions one = Options(m.spec, 0, -1, quantize);
  StageOptions split = one;
  split.tp = static_cast<int>(devices.size());
  auto a = CudaStageExecutor::Create(m.spec, m.checkpoint, one, {devices[0]});
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = CudaStageExecutor::Create(m.spec, m.checkpoint, split, devices);
  ASSERT_TRUE(b.ok()) << b.status();
  CompareForward(**a, **b, prefill, 6, tolerance, tolerance);
  if (::testing::Test::HasFatalFailure()) return;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const std::vector<SamplingParams> params = {
      {.temperature = 0.0f}, {.temperature = 1.0f, .top_k = 5, .seed = seed}};
  std::vector<std::unique_ptr<SequenceSampler>> on_a, on_b;
  std::vector<SequenceStep> steps;
  std::vector<int32_t> tokens;
  for (size_t i = 0; i < params.size(); ++i) {
    on_a.push_back(std::make_unique<SequenceSampler>(params[i], m.spec.vocab_size));
    on_b.push_back(std::make_unique<SequenceSampler>(params[i], m.spec.vocab_size));
    const std::vector<int32_t> p = RandomTokens(3, m.spec.vocab_size);
    on_a.back()->SetPrompt(p);
    on_b.back()->SetPrompt(p);
    steps.push_back({.seq_id = 10 + i, .start = 0, .count = 3});
    tokens.insert(tokens.end(), p.begin(), p.end());
  }
  for (int k = 0; k < 4; ++k) {
    std::vector<SequenceSampler*> sa = {on_a[0].get(), on_a[1].get()};
    std::vector<SequenceSampler*> sb = {on_b[0].get(), on_b[1].get()};
    auto ta = (*a)->ForwardAndSample(steps, tokens, {}, sa);
    ASSERT_TRUE(ta.ok()) << ta.status();
    const std::vector<SampledToken> ea(ta->begin(), ta->end());
    auto tb = (*b)->ForwardAndSample(steps, tokens, {}, sb);
    ASSERT_TRUE(tb.ok()) << tb.status();
    tokens.clear();
    for (size_t i = 0; i < steps.size(); ++i) {
      if (same_weights) {
        EXPECT_EQ((*tb)[i].token, ea[i].token) << "sampling step " << k << " sequence " << i;
      }
      tokens.push_back(ea[i].token);
      on_a[i]->SetPrompt({&tokens.back(), 1});
      on_b[i]->SetPrompt({&tokens.back(), 1});
      steps[i].start += steps[i].count;
      steps[i].count = 1;
    }
  }
}

// One GPU holds every rank (the group reduces with device copies and adds
// between host barriers): the split, the per-block all-reduces and the
// gathered vocabulary are checked wherever a GPU is lent.
TEST(CudaStageExecutorTest, TensorParallelRanksOnOneGpuMatchOneRank) {
  REQUIRE_GPU();
  for (auto [name, args] :
       {std::pair{"llama-f32", "--preset tiny-llama --dtype f32 --seed 21"},
        std::pair{"qwen2-bf16", "--preset tiny-qwen2 --dtype bf16 --seed 22"},
        std::pair{"llama-tied", "--preset tiny-llama --dtype f16 --seed 23 --tied"}}) {
    SCOPED_TRACE(name);
    Loaded m = Load(MakeModel(name, args));
    CompareTensorParallel(m, {0, 0}, WeightQuantization::kNone, 6, 1e-5);
  }
  Loaded m = Load(MakeModel("llama-bf16", "--preset tiny-llama --dtype bf16 --seed 24"));
  {
    SCOPED_TRACE("a 40-token prefill through cuBLAS");
    CompareTensorParallel(m, {0, 0}, WeightQuantization::kNone, 40, 1e-4);
  }
  {
    // Groups of 32 fall on the shards' edges: the same int4 weights.
    SCOPED_TRACE("int4");
    CompareTensorParallel(m, {0, 0}, WeightQuantization::kInt4, 5, 1e-5);
    SCOPED_TRACE("int8");
    CompareTensorParallel(m, {0, 0}, WeightQuantization::kInt8, 5, 3e-2);
  }
  // Three ranks, and a vocabulary of 601 rows split 200 / 200 / 201.
  Loaded odd = Load(MakeModel("llama-tp3", "--arch llama --hidden 96 --layers 2 --heads 6 "
                                           "--kv-heads 3 --intermediate 192 --vocab 601 "
                                           "--dtype f32 --seed 31"));
  SCOPED_TRACE("tp 3, uneven vocabulary");
  CompareTensorParallel(odd, {0, 0, 0}, WeightQuantization::kNone, 6, 1e-5);
}

// NCCL between two GPUs, with decode steps captured in graphs.
TEST(CudaStageExecutorTest, TensorParallelAcrossGpusThroughNcclMatchesOneRank) {
  REQUIRE_GPU();
  if (cuda::ListDevices().size() < 2) GTEST_SKIP() << "needs two CUDA GPUs on this machine";
  Loaded m = Load(MakeModel("qwen2-f32", "--preset tiny-qwen2 --dtype f32 --seed 32"));
  CompareTensorParallel(m, {0, 1}, WeightQuantization::kNone, 6, 1e-5);
  Loaded q = Load(MakeModel("llama-bf16", "--preset tiny-llama --dtype bf16 --seed 24"));
  CompareTensorParallel(q, {0, 1}, WeightQuantization::kInt4, 20, 1e-5);
}

// Checked before any device is touched, so these run on every machine.
TEST(CudaStageExecutorTest, RefusesADeviceListThatIsNotOneDevicePerRank) {
  Loaded m = Load(MakeModel("llama-devices", "--preset tiny-llama --dtype f32 --seed 33"));
  StageOptions two = Options(m.spec);
  two.tp = 2;
  auto short_list = CudaStageExecutor::Create(m.spec, m.checkpoint, two, {0});
  ASSERT_FALSE(short_list.ok());
  EXPECT_EQ(short_list.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_list.status().message().find("one CUDA device per rank"), std::string::npos)
      << short_list.status();
  auto none = CudaStageExecutor::Create(m.spec, m.checkpoint, Options(m.spec), {});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument) << none.status();
}

}  // namespace
}  // namespace tandem

