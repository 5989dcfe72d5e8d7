#pragma once
// Incremental detokenization for streamed answers: fed one token at a time, it
// returns only text that can no longer change (complete UTF-8, the decoder's
// leading strip applied, clean-up of spaces settled), so that the pieces of a
// stream concatenated with Finish() equal Tokenizer::Decode of all its ids.
#include <cstdint>
#include <string>

#include "coordinator/tokenizer.h"

namespace tandem {

class StreamingDetokenizer {
 public:
  // `tokenizer` must outlive this object.
  StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special);

  // Adds one token (a valid id, see Tokenizer::IsValidId) and returns the text
  // that became final; often empty while a character or a clean-up pattern is
  // still open.
  std::string Push(int32_t id);
  // Ends the stream and returns what was held back (an unfinished character
  // becomes U+FFFD, as in Decode). Push may start a new stream afterwards.
  std::string Finish();

 private:
  std::string TakeSettled(bool final);

  const Tokenizer& tokenizer_;
  bool skip_special_;
  int64_t index_ = 0;        // tokens decoded so far (skipped ones excluded)
  int strip_left_;           // leading strip characters still to remove
  std::string bytes_;        // raw bytes not yet turned into text
  std::string text_;         // text not yet emitted
};

}  // namespace tandem
