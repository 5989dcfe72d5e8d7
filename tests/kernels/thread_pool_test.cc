// ThreadPool: every index is visited exactly once, across many small calls,
// odd sizes, chunk sizes, nesting and pools larger than the machine.
#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace tandem::cpu {
namespace {

class ThreadPoolTest : public testing::SeededTest {};

// Runs ParallelFor and checks each index of [0, n) was visited exactly once,
// in the documented pieces: all of it on a pool of one thread; otherwise
// [k c, min(n, (k + 1) c)) with c = min_chunk, or ceil(n / size) where
// min_chunk <= 0.
void ExpectCoversOnce(ThreadPool& pool, int64_t n, int64_t min_chunk) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  pool.ParallelFor(
      n,
      [&](int64_t b, int64_t e) {
        ASSERT_LE(0, b);
        ASSERT_LT(b, e);
        ASSERT_LE(e, n);
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        std::lock_guard<std::mutex> lock(mu);
        ranges.emplace_back(b, e);
      },
      min_chunk);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "index " << i << " of " << n;
  }
  if (n == 0) {
    EXPECT_TRUE(ranges.empty());
    return;
  }
  std::sort(ranges.begin(), ranges.end());
  if (pool.size() == 1) {
    EXPECT_EQ(ranges, (std::vector<std::pair<int64_t, int64_t>>{{0, n}}));
    return;
  }
  const int64_t chunk = min_chunk > 0 ? min_chunk : (n + pool.size() - 1) / pool.size();
  for (size_t k = 0; k < ranges.size(); ++k) {
    const int64_t b = static_cast<int64_t>(k) * chunk;
    EXPECT_EQ(ranges[k], std::make_pair(b, std::min(n, b + chunk))) << "piece " << k << " of " << n;
  }
  EXPECT_EQ(static_cast<int64_t>(ranges.size()), (n + chunk - 1) / chunk);
}

TEST_F(ThreadPoolTest, SizeIsAtLeastOne) {
  ThreadPool all(0);
  EXPECT_GE(all.size(), 1);
  EXPECT_EQ(all.size(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  ThreadPool three(3);
  EXPECT_EQ(three.size(), 3);
}

TEST_F(ThreadPoolTest, ManySmallCallsCoverEveryIndexOnce) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    for (int call = 0; call < 1000; ++call) {
      const int64_t n = UniformInt(0, 40);
      const int64_t chunk = UniformInt(0, 5);
      ExpectCoversOnce(pool, n, chunk);
      if (HasFatalFailure()) return;
    }
  }
}

// Adds to `ids` the threads that run a call of `pieces` pieces of 1 ms each,
// long enough for every worker to come.
void AddThreadsTakingPart(ThreadPool& pool, int64_t pieces, std::set<std::thread::id>& ids) {
  std::mutex mu;
  pool.ParallelFor(
      pieces,
      [&](int64_t, int64_t) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        std::lock_guard<std::mutex> lock(mu);
        ids.insert(std::this_thread::get_id());
      },
      1);
}

TEST_F(ThreadPoolTest, LargeRangeAndRunsOnSeveralThreads) {
  ThreadPool pool(4);
  ExpectCoversOnce(pool, 1'000'003, 0);
  ExpectCoversOnce(pool, 100'000, 7);
  // With chunks long enough to overlap, more than one thread takes part.
  std::set<std::thread::id> ids;
  for (int attempt = 0; attempt < 50 && ids.size() < 2; ++attempt) {
    AddThreadsTakingPart(pool, 64, ids);
  }
  EXPECT_GE(ids.size(), 2u);
}

// A thread stuck in one piece holds up only the pieces it has claimed, at
// most an eighth of its share: the other threads take over the rest (without
// that, this test would wait 10 s).
TEST_F(ThreadPoolTest, OthersTakeOverTheShareOfAStuckThread) {
  for (int threads : {2, 3, 4}) {
    ThreadPool pool(threads);
    constexpr int64_t kPieces = 160;
    const int64_t stuck = kPieces / threads;  // the first piece of thread 1's share
    const int64_t share = kPieces * 2 / threads - stuck;
    const int64_t held = std::max<int64_t>(1, share / 8);  // the stuck one included
    std::atomic<int64_t> done{0};
    std::atomic<bool> others_finished{false};
    pool.ParallelFor(
        kPieces,
        [&](int64_t b, int64_t) {
          if (b == stuck) {
            const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
            while (done.load() < kPieces - held && std::chrono::steady_clock::now() < give_up) {
              std::this_thread::yield();
            }
            others_finished = done.load() >= kPieces - held;
          }
          done.fetch_add(1);
        },
        1);
    EXPECT_TRUE(others_finished.load()) << threads << " threads";
    EXPECT_EQ(done.load(), kPieces);
  }
}

// With many more workers than cores most of them come to a call after its
// pieces are claimed and sit it out; the calls still cover each index once,
// and the late workers join the calls that follow.
TEST_F(ThreadPoolTest, LateWorkersSitOutAndJoinLaterCalls) {
  ThreadPool pool(32);
  std::set<std::thread::id> ids;
  for (int call = 0; call < 2000; ++call) {
    ExpectCoversOnce(pool, UniformInt(1, 64), 1);
    if (HasFatalFailure()) return;
    if (call % 100 == 0) AddThreadsTakingPart(pool, 64, ids);
  }
  EXPECT_GE(ids.size(), 2u);
}

TEST_F(ThreadPoolTest, StaticRangesArePerThreadAndContiguous) {
  ThreadPool pool(3);
  for (int64_t n : {0, 1, 2, 3, 10, 1001}) {
    std::vector<std::pair<int64_t, int64_t>> ranges(3, {-1, -1});
    std::atomic<int> calls{0};
    pool.ParallelForStatic(n, [&](int t, int64_t b, int64_t e) {
      ranges[static_cast<size_t>(t)] = {b, e};
      calls.fetch_add(1);
    });
    EXPECT_EQ(calls.load(), 3);
    int64_t next = 0;
    for (const auto& [b, e] : ranges) {
      EXPECT_EQ(b, next);
      EXPECT_LE(b, e);
      next = e;
    }
    EXPECT_EQ(next, n);
  }
}

TEST_F(ThreadPoolTest, NestedCallsRunSerially) {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> hits(100);
  pool.ParallelFor(
      10,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          pool.ParallelFor(10, [&](int64_t ib, int64_t ie) {
            for (int64_t j = ib; j < ie; ++j) hits[static_cast<size_t>(i * 10 + j)].fetch_add(1);
          });
        }
      },
      1);
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST_F(ThreadPoolTest, ResultsVisibleToCallerAfterReturn) {
  ThreadPool pool(4);
  std::vector<int64_t> data(5000);
  for (int round = 0; round < 200; ++round) {
    pool.ParallelFor(static_cast<int64_t>(data.size()), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) data[static_cast<size_t>(i)] = i * round;
    });
    for (size_t i = 0; i < data.size(); i += 97) {
      ASSERT_EQ(data[i], static_cast<int64_t>(i) * round);
    }
  }
}

TEST_F(ThreadPoolTest, IdlePoolWakesUpAfterSleeping) {
  ThreadPool pool(2);
  ExpectCoversOnce(pool, 100, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // workers go to sleep
  ExpectCoversOnce(pool, 100, 1);
}

}  // namespace
}  // namespace tandem::cpu
