#include "coordinator/detokenizer.h"

#include "coordinator/utf8.h"

namespace tandem {
namespace {

// Characters that occur in the clean-up patterns after their leading space.
bool InCleanUpPattern(char c) {
  switch (c) {
    case '.': case '?': case '!': case ',': case '\'': case 'n': case 't': case 'm':
    case 's': case 'v': case 'e': case 'r':
      return true;
    default:
      return false;
  }
}

}  // namespace

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer),
      skip_special_(skip_special),
      strip_left_(tokenizer.strip_leading_count()) {}

std::string StreamingDetokenizer::Push(int32_t id) {
  if (tokenizer_.Skips(id, skip_special_)) return "";
  tokenizer_.AppendTokenBytes(id, index_++, &bytes_);
  const size_t finished = FinishedUtf8Prefix(bytes_);
  if (finished > 0) {
    text_ += SanitizeUtf8(std::string_view(bytes_).substr(0, finished));
    bytes_.erase(0, finished);
  }
  return TakeSettled(/*final=*/false);
}

std::string StreamingDetokenizer::Finish() {
  text_ += SanitizeUtf8(bytes_);
  bytes_.clear();
  std::string out = TakeSettled(/*final=*/true);
  index_ = 0;
  strip_left_ = tokenizer_.strip_leading_count();
  return out;
}

std::string StreamingDetokenizer::TakeSettled(bool final) {
  while (strip_left_ > 0 && !text_.empty()) {
    if (text_[0] != tokenizer_.strip_leading_char()) {
      strip_left_ = 0;
      break;
    }
    text_.erase(0, 1);
    --strip_left_;
  }
  if (strip_left_ > 0 && !final) return "";
  if (!tokenizer_.cleans_up_spaces()) {
    std::string out;
    out.swap(text_);
    return out;
  }
  if (final) {
    std::string out = Tokenizer::CleanUpSpaces(text_);
    text_.clear();
    return out;
  }
  // Clean-up only removes spaces, and every pattern is a space followed by
  // pattern characters. A cut between two non-space characters of which one
  // occurs in no pattern can never lie inside a match, so the text before the
  // latest such cut cleans up the same alone as in the full text.
  for (size_t p = text_.size(); p-- > 1;) {
    const char a = text_[p - 1], b = text_[p];
    if ((static_cast<unsigned char>(b) & 0xC0) == 0x80) continue;  // inside a character
    if (a == ' ' || b == ' ') continue;
    if (InCleanUpPattern(a) && InCleanUpPattern(b)) continue;
    std::string out = Tokenizer::CleanUpSpaces(std::string_view(text_).substr(0, p));
    text_.erase(0, p);
    return out;
  }
  return "";
}

}  // namespace tandem
