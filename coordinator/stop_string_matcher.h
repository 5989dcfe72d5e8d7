#pragma once
// Stop strings over streamed text. Text that could be the start of a stop
// string is held back until it is known not to be, so a client never sees
// part of a stop string; when one appears the text before it is the last.
#include <string>
#include <string_view>
#include <vector>

namespace tandem {

class StopStringMatcher {
 public:
  // Empty strings in `stops` are ignored.
  explicit StopStringMatcher(std::vector<std::string> stops);

  struct Output {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string was found; `text` ends just before it
  };
  // Appends final text (e.g. from StreamingDetokenizer::Push). After a stop,
  // further calls return nothing.
  Output Push(std::string_view text);
  // Ends the stream: returns what was held back (unless stopped).
  std::string Finish();

  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // held back: a suffix that may start a stop string
  bool stopped_ = false;
};

}  // namespace tandem
