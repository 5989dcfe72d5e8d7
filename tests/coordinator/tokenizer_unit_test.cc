// UTF-8 repair, NFC and the streaming detokenizer's hold-back rules, on
// their own.
#include <string>

#include "coordinator/tokenizer.h"
#include "coordinator/unicode_nfc.h"
#include "coordinator/utf8.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(Utf8Test, ReplacesMaximalInvalidSubparts) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(SanitizeUtf8("abc"), "abc");
  EXPECT_EQ(SanitizeUtf8("a\x80" "b"), "a" + r + "b");
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), r + r);                  // overlong
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), r + r + r);          // surrogate
  EXPECT_EQ(SanitizeUtf8("\xE4\xBD"), r);                      // truncated
  EXPECT_EQ(SanitizeUtf8("\xE4\xBD" "a"), r + "a");
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98\x80\xF0\x9F"), "\xF0\x9F\x98\x80" + r);
  EXPECT_EQ(SanitizeUtf8("\xF4\x90\x80\x80"), r + r + r + r);  // past U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xFE"));
  EXPECT_TRUE(IsValidUtf8("\xE4\xBD\xA0"));
}

TEST(Utf8Test, FinishedPrefixHoldsBackOnlyOpenCharacters) {
  EXPECT_EQ(FinishedUtf8Prefix("ab\xE4\xBD"), 2u);
  EXPECT_EQ(FinishedUtf8Prefix("ab\xE4\xBD\xA0"), 5u);
  EXPECT_EQ(FinishedUtf8Prefix("ab\x80"), 3u);      // already invalid: final
  EXPECT_EQ(FinishedUtf8Prefix("ab\xED\xA0"), 4u);  // can never complete
  EXPECT_EQ(FinishedUtf8Prefix("\xF0\x9F\x98"), 0u);
}

TEST(NfcTest, ComposesAndReorders) {
  EXPECT_EQ(NormalizeNfc("e\xCC\x81"), "\xC3\xA9");                      // e + acute
  EXPECT_EQ(NormalizeNfc("\xE2\x84\xAB"), "\xC3\x85");                   // Angstrom sign
  EXPECT_EQ(NormalizeNfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // jamo
  // q + dot above + dot below -> q + dot below + dot above (reordered).
  EXPECT_EQ(NormalizeNfc("q\xCC\x87\xCC\xA3"), "q\xCC\xA3\xCC\x87");
  EXPECT_EQ(NormalizeNfc("plain ascii"), "plain ascii");
}

TEST(CleanUpTest, FollowsTheReferenceOrder) {
  EXPECT_EQ(Tokenizer::CleanUpSpaces("a , b . c ' d n't 's"), "a, b. c'dn't's");
  EXPECT_EQ(Tokenizer::CleanUpSpaces("x  ."), "x .");
}

}  // namespace
}  // namespace tandem
