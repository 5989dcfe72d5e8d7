// Machine-limit probes: the bandwidth probe's buffer is sized past the
// last-level cache within the memory the machine can spare, and a pass over
// it reports a finite positive bandwidth.
#include "kernels/cpu/roofline.h"

#include <unistd.h>

#include <cmath>

#include "gtest/gtest.h"

namespace tandem::cpu {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kGiB = size_t{1} << 30;

TEST(ProbeBytesForTest, FourTimesTheLastLevelCache) {
  // A server part with 480 MiB of L3 on a 24 GiB machine.
  EXPECT_EQ(ProbeBytesFor(480 * kMiB, 24 * kGiB), 1920 * kMiB);
  EXPECT_EQ(ProbeBytesFor(100 * kMiB, 0), 400 * kMiB);  // memory size unknown
}

TEST(ProbeBytesForTest, AtLeast256MiB) {
  EXPECT_EQ(ProbeBytesFor(32 * kMiB, 16 * kGiB), 256 * kMiB);
  EXPECT_EQ(ProbeBytesFor(0, 16 * kGiB), 256 * kMiB);  // no cache reported
}

TEST(ProbeBytesForTest, AtMostAnEighthOfMemoryInWholeMiB) {
  EXPECT_EQ(ProbeBytesFor(480 * kMiB, 8 * kGiB), kGiB);
  EXPECT_EQ(ProbeBytesFor(32 * kMiB, kGiB + 12345), 128 * kMiB);
  EXPECT_EQ(ProbeBytesFor(32 * kMiB, 4 * kMiB), kMiB);  // never empty
}

TEST(LastLevelCacheBytesTest, NotSmallerThanTheMachinesReport) {
  // Every Linux machine these tests run on reports its caches, through sysfs
  // or sysconf; the probe takes the largest.
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 > 0) {
    EXPECT_GE(LastLevelCacheBytes(), static_cast<size_t>(l2));
  }
  EXPECT_GT(PhysicalMemoryBytes(), 64 * kMiB);
}

TEST(BandwidthProbeTest, RoundsToWholeMiBAndMeasures) {
  ThreadPool pool(2);
  BandwidthProbe probe(pool, 3 * kMiB + 1);
  EXPECT_EQ(probe.bytes(), 4 * kMiB);
  const double gbps = probe.Measure(2);
  EXPECT_TRUE(std::isfinite(gbps));
  EXPECT_GT(gbps, 0.1);
  const double median_gbps = probe.ChooseStreaming(3);
  EXPECT_TRUE(std::isfinite(median_gbps));
  EXPECT_GT(median_gbps, 0.1);
  const double seconds = probe.TimeRead();
  EXPECT_GT(seconds, 0.0);
  EXPECT_LT(seconds, 10.0);
}

}  // namespace
}  // namespace tandem::cpu
