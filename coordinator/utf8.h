#pragma once
// UTF-8 helpers for text that comes from outside: invalid input is repaired the
// way the WHATWG decoder (and therefore the reference tokenizers) does it,
// replacing each maximal invalid subpart with U+FFFD.
#include <cstddef>
#include <string>
#include <string_view>

namespace tandem {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Returns `bytes` with every maximal ill-formed subsequence replaced by U+FFFD
// (an incomplete sequence at the end counts as one). Valid input comes back
// unchanged.
std::string SanitizeUtf8(std::string_view bytes);

// True when `bytes` is well-formed UTF-8 (no surrogates, no overlongs).
bool IsValidUtf8(std::string_view bytes);

// Length of the longest prefix of `bytes` whose lossy decoding can no longer
// change when more bytes are appended: everything except a trailing sequence
// that is still a valid, unfinished UTF-8 character.
size_t FinishedUtf8Prefix(std::string_view bytes);

// Decodes the code point starting at `*pos` of valid UTF-8 and advances `*pos`.
char32_t NextCodePoint(std::string_view valid_utf8, size_t* pos);

// Appends the UTF-8 encoding of `cp` to `out`.
void AppendUtf8(char32_t cp, std::string* out);

// Whitespace as JavaScript's String.prototype.trim() sees it.
bool IsJsWhitespace(char32_t cp);
std::string_view TrimJsWhitespaceStart(std::string_view valid_utf8);
std::string_view TrimJsWhitespaceEnd(std::string_view valid_utf8);
inline std::string_view TrimJsWhitespace(std::string_view valid_utf8) {
  return TrimJsWhitespaceEnd(TrimJsWhitespaceStart(valid_utf8));
}

}  // namespace tandem
