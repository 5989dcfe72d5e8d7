#include "node/communicator.h"

#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

// Each rank contributes fresh random data; after the all-reduce every rank
// holds the sum in rank order, bit for bit, for several rounds.
void RunAllReduce(int ranks, size_t count, int rounds) {
  InProcessGroup group(ranks);
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<std::vector<std::vector<float>>> data(
      static_cast<size_t>(rounds),
      std::vector<std::vector<float>>(static_cast<size_t>(ranks), std::vector<float>(count)));
  for (auto& round : data)
    for (auto& rank : round)
      for (float& x : rank) x = dist(rng);
  auto expected = data;
  for (auto& round : expected) {
    for (size_t i = 0; i < count; ++i) {
      float sum = round[0][i];
      for (int r = 1; r < ranks; ++r) sum += round[static_cast<size_t>(r)][i];
      for (auto& rank : round) rank[i] = sum;
    }
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      Communicator* comm = group.rank_communicator(r);
      EXPECT_EQ(comm->rank(), r);
      EXPECT_EQ(comm->size(), ranks);
      for (auto& round : data) comm->AllReduceSum(round[static_cast<size_t>(r)].data(), count);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(data, expected);
}

TEST(CommunicatorTest, TwoRanks) { RunAllReduce(2, 1001, 5); }
TEST(CommunicatorTest, ThreeRanksOddSizes) { RunAllReduce(3, 7, 20); }
TEST(CommunicatorTest, MoreRanksThanElements) { RunAllReduce(4, 3, 10); }
TEST(CommunicatorTest, OneRankIsTheIdentity) { RunAllReduce(1, 17, 2); }

TEST(RankBarrierTest, MeetsAgainAndAgainAndAbortFreesAWaiter) {
  RankBarrier barrier(3);
  std::vector<std::thread> threads;
  std::vector<int> met(3, 0);
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      for (int i = 0; i < 100; ++i) met[static_cast<size_t>(r)] += barrier.Wait() ? 1 : 0;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(met, (std::vector<int>{100, 100, 100}));

  bool waited = true;
  std::thread alone([&] { waited = barrier.Wait(); });  // the other two never come
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  barrier.Abort();
  alone.join();
  EXPECT_FALSE(waited);
  EXPECT_FALSE(barrier.Wait());  // and every later call
}

TEST(CommunicatorTest, SoloLeavesDataAlone) {
  SoloCommunicator solo;
  std::vector<float> x{1.5f, -2.0f};
  solo.AllReduceSum(x.data(), x.size());
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(solo.size(), 1);
}

}  // namespace
}  // namespace tandem
