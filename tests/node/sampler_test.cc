#include "node/sampler.h"

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

std::vector<float> RandomLogits(int n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> l(static_cast<size_t>(n));
  for (float& x : l) x = dist(rng);
  return l;
}

double LogSoftmaxAt(const std::vector<float>& l, size_t i) {
  double m = *std::max_element(l.begin(), l.end()), s = 0;
  for (float x : l) s += std::exp(x - m);
  return l[i] - m - std::log(s);
}

// Logits whose softmax is exactly `probs`.
std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

std::vector<double> Frequencies(SamplingParams params, const std::vector<float>& logits,
                                int draws) {
  SequenceSampler sampler(params, static_cast<int>(logits.size()));
  std::vector<double> freq(logits.size());
  for (int i = 0; i < draws; ++i) {
    std::vector<float> l = logits;
    freq[static_cast<size_t>(sampler.Sample(l).token)] += 1.0 / draws;
  }
  return freq;
}

TEST(SamplerTest, GreedyPicksTheArgmaxWithItsLogprob) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> logits = RandomLogits(257, rng);
    size_t best = static_cast<size_t>(std::max_element(logits.begin(), logits.end()) -
                                      logits.begin());
    SequenceSampler sampler(SamplingParams{}, 257);
    std::vector<float> l = logits;
    SampledToken t = sampler.Sample(l);
    EXPECT_EQ(t.token, static_cast<int32_t>(best));
    EXPECT_NEAR(t.logprob, LogSoftmaxAt(logits, best), 1e-4);
  }
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::mt19937 rng(std::random_device{}());
  std::vector<std::vector<float>> steps;
  for (int i = 0; i < 64; ++i) steps.push_back(RandomLogits(100, rng));
  auto run = [&](uint64_t seed) {
    SamplingParams p{.temperature = 1.0f, .top_p = 0.95f, .seed = seed};
    SequenceSampler sampler(p, 100);
    std::vector<int32_t> out;
    for (auto l : steps) out.push_back(sampler.Sample(l).token);
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(SamplerTest, TemperatureOneFollowsTheSoftmax) {
  const std::vector<double> probs{0.5, 0.25, 0.15, 0.1};
  auto freq = Frequencies({.temperature = 1.0f, .seed = 1}, LogitsOf(probs), 40000);
  for (size_t i = 0; i < probs.size(); ++i) EXPECT_NEAR(freq[i], probs[i], 0.015) << i;
}

TEST(SamplerTest, TopKKeepsTheKBest) {
  const std::vector<double> probs{0.1, 0.4, 0.2, 0.3};
  auto freq = Frequencies({.temperature = 1.0f, .top_k = 2, .seed = 2}, LogitsOf(probs), 40000);
  EXPECT_EQ(freq[0], 0.0);
  EXPECT_EQ(freq[2], 0.0);
  EXPECT_NEAR(freq[1], 4.0 / 7.0, 0.015);
  EXPECT_NEAR(freq[3], 3.0 / 7.0, 0.015);
  auto one = Frequencies({.temperature = 5.0f, .top_k = 1, .seed = 3}, LogitsOf(probs), 100);
  EXPECT_NEAR(one[1], 1.0, 1e-9);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  const std::vector<double> probs{0.15, 0.5, 0.3, 0.05};
  // 0.5 + 0.3 = 0.8 >= 0.7: the nucleus is {1, 2}.
  auto freq = Frequencies({.temperature = 1.0f, .top_p = 0.7f, .seed = 4}, LogitsOf(probs), 40000);
  EXPECT_EQ(freq[0], 0.0);
  EXPECT_EQ(freq[3], 0.0);
  EXPECT_NEAR(freq[1], 0.625, 0.015);
}

TEST(SamplerTest, MinPDropsTokensBelowAFractionOfTheBest) {
  const std::vector<double> probs{0.15, 0.5, 0.3, 0.05};
  // min_p 0.4: keep p >= 0.2, i.e. {1, 2}.
  auto freq = Frequencies({.temperature = 1.0f, .min_p = 0.4f, .seed = 5}, LogitsOf(probs), 40000);
  EXPECT_EQ(freq[0], 0.0);
  EXPECT_EQ(freq[3], 0.0);
  EXPECT_NEAR(freq[2], 0.375, 0.015);
}

TEST(SamplerTest, RepetitionPenaltyAppliesToPromptTokens) {
  SequenceSampler sampler({.repetition_penalty = 1.2f}, 4);
  std::vector<int32_t> prompt{0, 3};
  sampler.SetPrompt(prompt);
  std::vector<float> l{2.0f, 1.9f, -5.0f, -0.1f};
  EXPECT_EQ(sampler.Sample(l).token, 1);  // 2.0 / 1.2 < 1.9
  EXPECT_FLOAT_EQ(l[3], -0.12f);          // negative logits are multiplied
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesApplyToOutputTokens) {
  SequenceSampler sampler({.presence_penalty = 0.5f, .frequency_penalty = 0.3f}, 3);
  std::vector<float> l{1.0f, 0.0f, 0.5f};
  EXPECT_EQ(sampler.Sample(l).token, 0);
  l = {1.0f, 0.0f, 0.5f};
  EXPECT_EQ(sampler.Sample(l).token, 2);  // token 0: 1.0 - (0.5 + 0.3) = 0.2 < 0.5
  EXPECT_FLOAT_EQ(l[0], 0.2f);
  l = {1.0f, 0.0f, 0.5f};
  EXPECT_EQ(sampler.Sample(l).token, 0);  // token 2: 0.5 - 0.8 < 0.2
  l = {1.0f, 0.0f, 0.5f};
  sampler.Sample(l);
  EXPECT_FLOAT_EQ(l[0], 1.0f - 0.5f - 0.3f * 2);  // frequency counts every occurrence
}

// A sampler whose step is sampled elsewhere (Draw, then Record of the token
// chosen) stays in step with one that samples itself: the same generator
// state and the same output counts, so the next Sample agrees.
TEST(SamplerTest, DrawAndRecordKeepTheSamplerInStepWithSample) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (SamplingParams params : {SamplingParams{.temperature = 0.0f, .frequency_penalty = 1.5f},
                                SamplingParams{.temperature = 0.9f, .top_k = 8},
                                SamplingParams{.temperature = 1.1f, .frequency_penalty = 1.5f}}) {
    params.seed = seed;
    SequenceSampler self(params, 64), elsewhere(params, 64);
    for (int step = 0; step < 20; ++step) {
      const std::vector<float> logits = RandomLogits(64, rng);
      std::vector<float> a = logits;
      const SampledToken t = self.Sample(a);
      if (step % 2 == 0) {
        // This step's choice was made elsewhere, from the same draw.
        const double u = elsewhere.Draw();
        if (params.temperature == 0.0f) {
          EXPECT_EQ(u, 0.0);
        } else {
          EXPECT_GE(u, 0.0);
          EXPECT_LT(u, 1.0);
        }
        elsewhere.Record(t.token);
      } else {
        std::vector<float> b = logits;
        EXPECT_EQ(elsewhere.Sample(b).token, t.token) << "step " << step;
      }
    }
  }
}

TEST(SamplerTest, PenaltyTokensListThePromptAndTheOutputOnce) {
  SequenceSampler plain({.temperature = 0.0f}, 10);
  plain.SetPrompt(std::vector<int32_t>{1, 2});
  std::vector<int32_t> tokens, counts;
  std::vector<uint8_t> in_prompt;
  plain.AppendPenaltyTokens(&tokens, &counts, &in_prompt);
  EXPECT_TRUE(tokens.empty()) << "no penalty is on";

  SequenceSampler s({.temperature = 0.0f, .repetition_penalty = 1.2f}, 10);
  s.SetPrompt(std::vector<int32_t>{4, 2, 4, 7});
  s.Record(7);
  s.Record(9);
  s.Record(9);
  tokens = {99};  // appended after what is there
  counts = {99};
  in_prompt = {99};
  s.AppendPenaltyTokens(&tokens, &counts, &in_prompt);
  ASSERT_EQ(tokens.size(), 5u);
  ASSERT_EQ(counts.size(), 5u);
  ASSERT_EQ(in_prompt.size(), 5u);
  EXPECT_EQ(tokens[0], 99);
  std::map<int32_t, std::pair<int32_t, uint8_t>> got;
  for (size_t i = 1; i < tokens.size(); ++i) {
    EXPECT_TRUE(got.emplace(tokens[i], std::make_pair(counts[i], in_prompt[i])).second)
        << "token " << tokens[i] << " listed twice";
  }
  const std::map<int32_t, std::pair<int32_t, uint8_t>> want = {
      {2, {0, 1}}, {4, {0, 1}}, {7, {1, 1}}, {9, {2, 0}}};
  EXPECT_EQ(got, want);
}

TEST(SamplerTest, ValidationRejectsOutOfRangeParameters) {
  EXPECT_TRUE(ValidateSamplingParams({}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.temperature = -1.0f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.temperature = NAN}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.top_k = -2}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.top_p = 0.0f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.min_p = 1.5f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.repetition_penalty = 0.0f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.presence_penalty = 3.0f}).ok());
}

}  // namespace
}  // namespace tandem
