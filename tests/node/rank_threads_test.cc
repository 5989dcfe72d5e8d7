#include "node/rank_threads.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "node/communicator.h"

namespace tandem {
namespace {

// Every rank runs in each Run, all at once: the ranks all-reduce through a
// group that only returns when every rank has joined, so a rank run after
// another would hang the test rather than pass it.
TEST(RankThreadsTest, RunsEveryRankAtOnceStepAfterStep) {
  for (int ranks : {1, 2, 3, 5}) {
    SCOPED_TRACE(ranks);
    RankThreads threads(ranks);
    EXPECT_EQ(threads.size(), ranks);
    InProcessGroup group(ranks);
    std::vector<float> values(static_cast<size_t>(ranks));
    for (int step = 0; step < 50; ++step) {
      threads.Run([&](int r) {
        values[static_cast<size_t>(r)] = static_cast<float>(r + step);
        group.rank_communicator(r)->AllReduceSum(&values[static_cast<size_t>(r)], 1);
      });
      const float sum = static_cast<float>(ranks * step + ranks * (ranks - 1) / 2);
      for (float v : values) ASSERT_EQ(v, sum) << "step " << step;
    }
  }
}

TEST(RankThreadsTest, RankZeroRunsOnTheCallerAndTheOthersOnTheirOwnThreads) {
  RankThreads threads(3);
  std::vector<std::thread::id> first(3), second(3);
  threads.Run([&](int r) { first[static_cast<size_t>(r)] = std::this_thread::get_id(); });
  threads.Run([&](int r) { second[static_cast<size_t>(r)] = std::this_thread::get_id(); });
  EXPECT_EQ(first[0], std::this_thread::get_id());
  EXPECT_NE(first[1], std::this_thread::get_id());
  EXPECT_NE(first[1], first[2]);
  EXPECT_EQ(first, second);  // the same threads, step after step
}

TEST(RankThreadsTest, RunReturnsOnlyWhenEveryRankHasReturned) {
  RankThreads threads(4);
  std::atomic<int> finished{0};
  threads.Run([&](int r) {
    if (r != 0) std::this_thread::sleep_for(std::chrono::milliseconds(20 * r));
    finished.fetch_add(1);
  });
  EXPECT_EQ(finished.load(), 4);
}

}  // namespace
}  // namespace tandem
