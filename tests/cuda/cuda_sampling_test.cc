// GPU sampling against the CPU sampler (node/sampler.h): the same seed gives
// the same token and logprob for greedy, temperature, top-k, top-p, min-p,
// their combination and the penalties, one sequence per row of one launch.
#include <cuda_runtime.h>

#include <cmath>
#include <map>
#include <random>
#include <set>
#include <span>
#include <vector>

#include "gtest/gtest.h"
#include "tests/cuda/require_gpu.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/sampling.h"
#include "node/sampler.h"

namespace tandem::cuda {
namespace {

// One row: its parameters, logits and the CPU sampler's choice.
struct Row {
  SamplingParams params;
  std::vector<float> logits;
  std::vector<int32_t> prompt;
  std::map<int32_t, int> outputs;  // generated before the compared draw
  double uniform = 0;
  SampledToken expected{};
};

TEST(CudaSamplingTest, SameTokensAsTheCpuSampler) {
  REQUIRE_GPU();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int vocab : {1000, 128256}) {
    SCOPED_TRACE(::testing::Message() << "vocab " << vocab);
    std::vector<SamplingParams> cases = {
        {.temperature = 0.0f},
        {.temperature = 0.8f},
        {.temperature = 1.0f, .top_k = 40},
        {.temperature = 0.7f, .top_p = 0.9f},
        {.temperature = 1.2f, .min_p = 0.05f},
        {.temperature = 0.9f, .top_k = 50, .top_p = 0.8f, .min_p = 0.02f},
        {.temperature = 1.0f, .top_k = 1},
        {.temperature = 0.0f, .repetition_penalty = 1.3f, .presence_penalty = 0.5f,
         .frequency_penalty = 0.3f},
        {.temperature = 0.8f, .top_p = 0.95f, .repetition_penalty = 1.2f,
         .presence_penalty = 0.4f, .frequency_penalty = 0.2f},
    };
    std::vector<Row> rows;
    for (size_t c = 0; c < cases.size(); ++c) {
      Row row;
      row.params = cases[c];
      row.params.seed = rng();
      std::vector<int32_t> prompt(20);
      for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
      SequenceSampler sampler(row.params, vocab);
      sampler.SetPrompt(prompt);
      row.prompt = prompt;
      std::mt19937_64 draws(*row.params.seed);
      // Three earlier steps give the penalties outputs to count.
      for (int step = 0; step < 3; ++step) {
        std::vector<float> l(static_cast<size_t>(vocab));
        for (float& v : l) v = normal(rng);
        const SampledToken t = sampler.Sample(l);
        ++row.outputs[t.token];
        if (row.params.temperature != 0.0f) draws();
      }
      row.logits.resize(static_cast<size_t>(vocab));
      for (float& v : row.logits) v = normal(rng);
      // A few exact ties, which must go to the lowest id.
      row.logits[7] = row.logits[3] = 40.0f;
      if (c % 2 == 0) row.logits[3] = row.logits[7] = -1.0f;
      row.uniform = static_cast<double>(draws() >> 11) * 0x1.0p-53;
      std::vector<float> cpu_logits = row.logits;
      row.expected = sampler.Sample(cpu_logits);
      rows.push_back(std::move(row));
    }

    // Pack the rows for the GPU.
    const int64_t S = static_cast<int64_t>(rows.size());
    std::vector<float> logits;
    std::vector<DeviceSamplingParams> params;
    std::vector<int32_t> tokens, counts;
    std::vector<uint8_t> in_prompt;
    for (const Row& row : rows) {
      logits.insert(logits.end(), row.logits.begin(), row.logits.end());
      DeviceSamplingParams p{.temperature = row.params.temperature,
                             .top_k = row.params.top_k,
                             .top_p = row.params.top_p,
                             .min_p = row.params.min_p,
                             .repetition_penalty = row.params.repetition_penalty,
                             .presence_penalty = row.params.presence_penalty,
                             .frequency_penalty = row.params.frequency_penalty,
                             .uniform = row.uniform,
                             .penalty_begin = static_cast<int32_t>(tokens.size())};
      std::set<int32_t> distinct(row.prompt.begin(), row.prompt.end());
      for (const auto& [t, n] : row.outputs) distinct.insert(t);
      const std::set<int32_t> prompt_set(row.prompt.begin(), row.prompt.end());
      for (int32_t t : distinct) {
        tokens.push_back(t);
        auto it = row.outputs.find(t);
        counts.push_back(it == row.outputs.end() ? 0 : it->second);
        in_prompt.push_back(prompt_set.contains(t) ? 1 : 0);
      }
      p.penalty_count = static_cast<int32_t>(tokens.size()) - p.penalty_begin;
      params.push_back(p);
    }
    DeviceBuffer d_logits = DeviceBuffer::FromHost(std::span<const float>(logits));
    DeviceBuffer d_raw(logits.size() * sizeof(float));
    DeviceBuffer d_params = DeviceBuffer::FromHost(std::span<const DeviceSamplingParams>(params));
    DeviceBuffer d_tokens = DeviceBuffer::FromHost(std::span<const int32_t>(tokens));
    DeviceBuffer d_counts = DeviceBuffer::FromHost(std::span<const int32_t>(counts));
    DeviceBuffer d_in_prompt = DeviceBuffer::FromHost(std::span<const uint8_t>(in_prompt));
    DeviceBuffer d_out(static_cast<size_t>(S) * sizeof(DeviceSampled));
    SampleTokens(d_logits.As<float>(), S, vocab, d_params.As<DeviceSamplingParams>(),
                 {.tokens = d_tokens.As<int32_t>(), .output_counts = d_counts.As<int32_t>(),
                  .in_prompt = d_in_prompt.As<uint8_t>()},
                 d_raw.As<float>(), d_out.As<DeviceSampled>(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<DeviceSampled> got(static_cast<size_t>(S));
    d_out.CopyToHost(got.data(), got.size() * sizeof(DeviceSampled));
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ(got[i].token, rows[i].expected.token) << "case " << i;
      EXPECT_NEAR(got[i].logprob, rows[i].expected.logprob, 1e-4) << "case " << i;
    }
  }
}

}  // namespace
}  // namespace tandem::cuda
