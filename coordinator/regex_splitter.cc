#include "coordinator/regex_splitter.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_replace.h"

namespace tandem {

struct RegexSplitter::Code {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Code() {
    if (code != nullptr) pcre2_code_free(code);
  }
};

namespace {
// JavaScript's \s (WhiteSpace and LineTerminator), as class members.
constexpr std::string_view kJsSpaceMembers =
    "\\t\\n\\x0b\\f\\r \\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}\\x{feff}";
}  // namespace

std::string RegexSplitter::TranslatePattern(std::string_view pattern) {
  std::string p = absl::StrReplaceAll(
      absl::string_view(pattern.data(), pattern.size()), {{"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
                 "(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))"}});
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      ++i;
      if (e == 's') {
        if (in_class) {
          out += kJsSpaceMembers;
        } else {
          out += "[";
          out += kJsSpaceMembers;
          out += "]";
        }
      } else if (e == 'S' && !in_class) {
        out += "[^";
        out += kJsSpaceMembers;
        out += "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // literal ] first
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Compile(std::string_view pattern) {
  const std::string translated = TranslatePattern(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                   translated.size(), PCRE2_UTF | PCRE2_UCP, &error, &offset,
                                   nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(
        absl::StrCat("pre-tokenizer regex does not compile at offset ", offset, ": ",
                     reinterpret_cast<const char*>(message), " (pattern: ", absl::string_view(pattern.data(), pattern.size()), ")"));
  }
  std::unique_ptr<RegexSplitter> splitter(new RegexSplitter);
  splitter->code_ = std::make_unique<Code>();
  splitter->code_->code = code;
  splitter->code_->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return splitter;
}

RegexSplitter::~RegexSplitter() = default;

void RegexSplitter::FindAll(std::string_view text, std::vector<Span>* out) const {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    const int rc = code_->jit
                       ? pcre2_jit_match(code_->code, subject, text.size(), pos, 0, md, nullptr)
                       : pcre2_match(code_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK,
                                     md, nullptr);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t begin = ov[0], end = ov[1];
    if (end > begin) {
      out->push_back({begin, end});
      pos = end;
    } else {
      // Empty match: step over one character, as JavaScript's matchAll does.
      pos = end + 1;
      while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  pcre2_match_data_free(md);
}

}  // namespace tandem
