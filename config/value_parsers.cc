#include "config/value_parsers.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace tandem {

namespace {
std::string Quote(std::string_view s) { return absl::StrCat("'", std::string(s), "'"); }
}  // namespace

StatusOr<uint64_t> ParseByteSize(std::string_view text) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a byte size such as 8GiB, 512MiB or 4096, got ", Quote(text)));
  };
  size_t i = 0;
  while (i < text.size() && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.')) ++i;
  std::string_view number = text.substr(0, i);
  std::string_view suffix = text.substr(i);
  while (!suffix.empty() && suffix.front() == ' ') suffix.remove_prefix(1);
  if (number.empty() || number.front() == '.' || number.back() == '.') return bad();
  double value = 0;
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (ec != std::errc() || end != number.data() + number.size()) return bad();
  struct Unit {
    std::string_view name;
    double scale;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},
      {"B", 1},
      {"K", 1024.0},
      {"KiB", 1024.0},
      {"KB", 1e3},
      {"M", 1024.0 * 1024},
      {"MiB", 1024.0 * 1024},
      {"MB", 1e6},
      {"G", 1024.0 * 1024 * 1024},
      {"GiB", 1024.0 * 1024 * 1024},
      {"GB", 1e9},
      {"T", 1024.0 * 1024 * 1024 * 1024},
      {"TiB", 1024.0 * 1024 * 1024 * 1024},
      {"TB", 1e12},
  };
  for (const Unit& u : kUnits) {
    if (suffix != u.name) continue;
    double bytes = value * u.scale;
    if (!(bytes < 1.8e19)) return bad();
    if (u.scale == 1 && number.find('.') != std::string_view::npos) return bad();
    return static_cast<uint64_t>(std::llround(bytes));
  }
  return bad();
}

std::string FormatByteSize(uint64_t bytes) {
  static constexpr const char* kNames[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024.0 && unit < 4) {
    v /= 1024.0;
    ++unit;
  }
  char buf[48];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.2f %s", v, kNames[unit]);
  }
  return buf;
}

StatusOr<int64_t> ParseInteger(std::string_view text, int64_t min, int64_t max) {
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected an integer in [", min, ", ", max, "], got ", Quote(text)));
  }
  if (value < min || value > max) {
    return absl::OutOfRangeError(
        absl::StrCat("value ", value, " is out of range [", min, ", ", max, "]"));
  }
  return value;
}

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

StatusOr<HostPort> ParseHostPort(std::string_view text, AddressUse use) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected host:port, got ", Quote(text), " (", std::string(why), ")"));
  };
  HostPort hp;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad("an IPv6 address goes in brackets: [::1]:7100");
    }
    hp.host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("no port");
    hp.host = std::string(text.substr(0, colon));
    if (hp.host.find(':') != std::string::npos) return bad("an IPv6 address goes in brackets");
    port_text = text.substr(colon + 1);
  }
  if (hp.host.empty()) return bad("empty host");
  for (char c : hp.host) {
    if (c == ' ' || c == '/' || c == '\t') return bad("the host holds a space or a slash");
  }
  const int64_t min_port = use == AddressUse::kListen ? 0 : 1;
  auto port = ParseInteger(port_text, min_port, 65535);
  if (!port.ok()) {
    return bad(absl::StrCat("the port must be an integer in [", min_port, ", 65535]"));
  }
  hp.port = static_cast<int>(*port);
  return hp;
}

Status SetHostPort(std::string_view text, AddressUse use, std::string* out, bool optional) {
  if (optional && text.empty()) {
    out->clear();
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(ParseHostPort(text, use).status());
  *out = std::string(text);
  return absl::OkStatus();
}

Status CheckChoice(std::string_view text, const std::vector<std::string_view>& choices) {
  std::string list;
  for (std::string_view c : choices) {
    if (c == text) return absl::OkStatus();
    absl::StrAppend(&list, list.empty() ? "" : ", ", std::string(c));
  }
  return absl::InvalidArgumentError(absl::StrCat("expected one of ", list, "; got ", Quote(text)));
}

}  // namespace tandem
