#include "coordinator/utf8.h"

#include <cstdint>

namespace tandem {
namespace {

// Expected length of a sequence starting with `lead`, or 0 for a byte that
// cannot start one.
int SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Valid range of the byte following `lead` (WHATWG: rules out overlongs,
// surrogates and code points past U+10FFFF).
bool SecondByteOk(uint8_t lead, uint8_t b) {
  switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
  }
}

// Scans one sequence at `pos`. Returns the number of bytes that form a valid
// character (> 0), or the negated length of the maximal invalid subpart; sets
// *truncated when the subpart is a valid but unfinished character at the end.
int Scan(std::string_view s, size_t pos, bool* truncated) {
  *truncated = false;
  const uint8_t lead = static_cast<uint8_t>(s[pos]);
  const int len = SequenceLength(lead);
  if (len == 1) return 1;
  if (len == 0) return -1;
  int have = 1;
  for (; have < len; ++have) {
    if (pos + have >= s.size()) {
      *truncated = true;
      return -have;
    }
    const uint8_t b = static_cast<uint8_t>(s[pos + have]);
    const bool ok = have == 1 ? SecondByteOk(lead, b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return -have;
  }
  return len;
}

}  // namespace

std::string SanitizeUtf8(std::string_view bytes) {
  if (IsValidUtf8(bytes)) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size() + 8);
  size_t pos = 0;
  while (pos < bytes.size()) {
    bool truncated;
    const int n = Scan(bytes, pos, &truncated);
    if (n > 0) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      AppendUtf8(kReplacementChar, &out);
      pos += -n;
    }
  }
  return out;
}

bool IsValidUtf8(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<uint8_t>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    bool truncated;
    const int n = Scan(bytes, pos, &truncated);
    if (n <= 0) return false;
    pos += n;
  }
  return true;
}

size_t FinishedUtf8Prefix(std::string_view bytes) {
  // Only the last (at most 3) bytes can belong to an unfinished character.
  const size_t back = bytes.size() < 3 ? bytes.size() : 3;
  for (size_t start = bytes.size() - back; start < bytes.size(); ++start) {
    const uint8_t b = static_cast<uint8_t>(bytes[start]);
    if (b < 0xC2 || b > 0xF4) continue;
    bool truncated;
    const int n = Scan(bytes, start, &truncated);
    if (n < 0 && truncated) return start;
  }
  return bytes.size();
}

char32_t NextCodePoint(std::string_view s, size_t* pos) {
  const uint8_t b0 = static_cast<uint8_t>(s[*pos]);
  if (b0 < 0x80) {
    *pos += 1;
    return b0;
  }
  if (b0 < 0xE0) {
    const char32_t cp = ((b0 & 0x1F) << 6) | (static_cast<uint8_t>(s[*pos + 1]) & 0x3F);
    *pos += 2;
    return cp;
  }
  if (b0 < 0xF0) {
    const char32_t cp = ((b0 & 0x0F) << 12) | ((static_cast<uint8_t>(s[*pos + 1]) & 0x3F) << 6) |
                        (static_cast<uint8_t>(s[*pos + 2]) & 0x3F);
    *pos += 3;
    return cp;
  }
  const char32_t cp = ((b0 & 0x07) << 18) | ((static_cast<uint8_t>(s[*pos + 1]) & 0x3F) << 12) |
                      ((static_cast<uint8_t>(s[*pos + 2]) & 0x3F) << 6) |
                      (static_cast<uint8_t>(s[*pos + 3]) & 0x3F);
  *pos += 4;
  return cp;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsJsWhitespace(char32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
    case 0xFEFF:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::string_view TrimJsWhitespaceStart(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!IsJsWhitespace(NextCodePoint(s, &next))) break;
    pos = next;
  }
  return s.substr(pos);
}

std::string_view TrimJsWhitespaceEnd(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
    size_t pos = start;
    if (!IsJsWhitespace(NextCodePoint(s, &pos))) break;
    end = start;
  }
  return s.substr(0, end);
}

}  // namespace tandem
