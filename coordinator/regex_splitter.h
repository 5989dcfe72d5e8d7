#pragma once
// A pre-tokenizer regex compiled with PCRE2 (UTF + UCP, JIT when available)
// that behaves like the reference's JavaScript `u` regexes: `\s` and `\S`
// mean JavaScript's whitespace, and the inline case-insensitive contraction
// group that JavaScript cannot parse is rewritten the same way the reference
// rewrites it.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tandem {

class RegexSplitter {
 public:
  static StatusOr<std::unique_ptr<RegexSplitter>> Compile(std::string_view pattern);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  struct Span {
    size_t begin;
    size_t end;
  };
  // Appends the non-empty matches in `valid_utf8`, left to right, to `out`.
  // Thread-safe.
  void FindAll(std::string_view valid_utf8, std::vector<Span>* out) const;

  // The pattern as handed to PCRE2 after the JavaScript-compatible rewrite.
  static std::string TranslatePattern(std::string_view pattern);

 private:
  RegexSplitter() = default;
  struct Code;
  std::unique_ptr<Code> code_;
};

}  // namespace tandem
