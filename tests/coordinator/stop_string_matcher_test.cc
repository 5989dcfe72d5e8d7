#include "coordinator/stop_string_matcher.h"

#include "gtest/gtest.h"

namespace tandem {
namespace {

// Feeds `pieces` and returns everything emitted (with Finish when no stop).
std::string Feed(StopStringMatcher& m, const std::vector<std::string>& pieces, bool* stopped) {
  std::string out;
  *stopped = false;
  for (const std::string& p : pieces) {
    StopStringMatcher::Output o = m.Push(p);
    out += o.text;
    if (o.stopped) {
      *stopped = true;
      return out;
    }
  }
  return out + m.Finish();
}

TEST(StopStringMatcherTest, PassesTextThroughWithoutStops) {
  StopStringMatcher m({});
  bool stopped = false;
  EXPECT_EQ(Feed(m, {"Hello", ", ", "world"}, &stopped), "Hello, world");
  EXPECT_FALSE(stopped);
}

TEST(StopStringMatcherTest, HoldsBackAPossibleStartOfAStopString) {
  StopStringMatcher m({"\n\nUser:"});
  StopStringMatcher::Output o = m.Push("Sure.\n");
  EXPECT_EQ(o.text, "Sure.");  // "\n" may start the stop string
  EXPECT_FALSE(o.stopped);
  o = m.Push("\nUs");
  EXPECT_EQ(o.text, "");
  o = m.Push("ually");  // not the stop string after all
  EXPECT_EQ(o.text, "\n\nUsually");
  EXPECT_FALSE(o.stopped);
}

TEST(StopStringMatcherTest, StopsBeforeAStopStringSplitAcrossPieces) {
  StopStringMatcher m({"STOP"});
  bool stopped = false;
  EXPECT_EQ(Feed(m, {"one two S", "TO", "P three"}, &stopped), "one two ");
  EXPECT_TRUE(stopped);
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.Push("more").text, "");
  EXPECT_EQ(m.Finish(), "");
}

TEST(StopStringMatcherTest, TheEarliestOfSeveralStopsWins) {
  StopStringMatcher m({"world", "lo"});
  bool stopped = false;
  EXPECT_EQ(Feed(m, {"Hello world"}, &stopped), "Hel");
  EXPECT_TRUE(stopped);
}

TEST(StopStringMatcherTest, ReleasesHeldTextAtTheEnd) {
  StopStringMatcher m({"</answer>"});
  bool stopped = false;
  EXPECT_EQ(Feed(m, {"x </ans"}, &stopped), "x </ans");
  EXPECT_FALSE(stopped);
}

TEST(StopStringMatcherTest, KeepsMultiByteCharactersWhole) {
  StopStringMatcher m({"é!"});  // "é" is two bytes
  StopStringMatcher::Output o = m.Push("café");
  EXPECT_EQ(o.text, "caf");
  o = m.Push("!");
  EXPECT_EQ(o.text, "");
  EXPECT_TRUE(o.stopped);
}

TEST(StopStringMatcherTest, IgnoresEmptyStopStrings) {
  StopStringMatcher m({"", "x"});
  bool stopped = false;
  EXPECT_EQ(Feed(m, {"abc"}, &stopped), "abc");
  EXPECT_FALSE(stopped);
}

}  // namespace
}  // namespace tandem
