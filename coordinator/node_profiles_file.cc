#include "coordinator/node_profiles_file.h"

#include <cctype>
#include <cmath>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "config/config_loader.h"
#include "config/value_parsers.h"

namespace tandem {

StatusOr<double> ParseLinkRate(std::string_view text) {
  const std::string t(absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size())));
  size_t end = 0;
  while (end < t.size() && (std::isdigit(static_cast<unsigned char>(t[end])) || t[end] == '.')) {
    ++end;
  }
  double value = 0;
  if (end == 0 || !absl::SimpleAtod(t.substr(0, end), &value) || !std::isfinite(value) ||
      value <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", t, "' is not a link rate (e.g. 1Gbit/s, 100Mbit/s, 125MB/s, or bytes per second)"));
  }
  const std::string unit(absl::StripAsciiWhitespace(t.substr(end)));
  struct Unit {
    const char* name;
    double bytes_per_s;
  };
  static const Unit kUnits[] = {
      {"", 1},          {"B/s", 1},          {"bit/s", 1.0 / 8}, {"kbit/s", 1e3 / 8},
      {"Kbit/s", 1e3 / 8}, {"Mbit/s", 1e6 / 8}, {"Gbit/s", 1e9 / 8}, {"Tbit/s", 1e12 / 8},
      {"KB/s", 1e3},    {"kB/s", 1e3},       {"MB/s", 1e6},      {"GB/s", 1e9},
      {"KiB/s", 1024.0}, {"MiB/s", 1048576.0}, {"GiB/s", 1073741824.0},
  };
  for (const Unit& u : kUnits) {
    if (unit == u.name) return value * u.bytes_per_s;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown rate unit '", unit,
      "' (use bit/s, kbit/s, Mbit/s, Gbit/s, B/s, KB/s, MB/s, GB/s, KiB/s, MiB/s or GiB/s)"));
}

namespace {

StatusOr<double> ReadNumber(const std::string& file, const YAML::Node& v, const std::string& key,
                            double min) {
  ASSIGN_OR_RETURN(std::string text, YamlScalar(file, v, key));
  double d = 0;
  if (!absl::SimpleAtod(text, &d) || !std::isfinite(d)) {
    return YamlError(file, v, key, absl::StrCat("'", text, "' is not a number"));
  }
  if (d < min) return YamlError(file, v, key, absl::StrCat("must be at least ", min, ", got ", d));
  return d;
}

}  // namespace

StatusOr<std::vector<NodeProfile>> ParseNodeProfiles(std::string_view yaml,
                                                     const std::string& file) {
  ASSIGN_OR_RETURN(YAML::Node root, ParseYaml(yaml, file));
  if (!root.IsMap() || !root["nodes"]) {
    return YamlError(file, root, "nodes", "expected a mapping with a 'nodes' list");
  }
  for (auto it = root.begin(); it != root.end(); ++it) {
    ASSIGN_OR_RETURN(std::string key, YamlScalar(file, it->first, "(key)"));
    if (key != "nodes") return YamlError(file, it->first, key, "unknown key (known: nodes)");
  }
  const YAML::Node list = root["nodes"];
  if (!list.IsSequence() || list.size() == 0) {
    return YamlError(file, list, "nodes", "expected a non-empty list of nodes");
  }
  std::vector<NodeProfile> out;
  std::set<std::string> names;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    const std::string path = absl::StrCat("nodes[", i, "]");
    if (!item.IsMap()) return YamlError(file, item, path, "expected a mapping");
    NodeProfile p;
    bool has_memory = false, has_decode = false;
    for (auto it = item.begin(); it != item.end(); ++it) {
      ASSIGN_OR_RETURN(std::string key, YamlScalar(file, it->first, path));
      const std::string full = absl::StrCat(path, ".", key);
      const YAML::Node v = it->second;
      if (key == "name") {
        ASSIGN_OR_RETURN(p.name, YamlScalar(file, v, full));
        if (p.name.empty()) return YamlError(file, v, full, "empty name");
        if (!names.insert(p.name).second) {
          return YamlError(file, v, full, absl::StrCat("node '", p.name, "' is listed twice"));
        }
      } else if (key == "memory") {
        ASSIGN_OR_RETURN(std::string text, YamlScalar(file, v, full));
        StatusOr<uint64_t> bytes = ParseByteSize(text);
        if (!bytes.ok()) return YamlError(file, v, full, bytes.status());
        p.memory_bytes = *bytes;
        has_memory = true;
      } else if (key == "decode_layer_ms") {
        ASSIGN_OR_RETURN(p.decode_layer_ms, ReadNumber(file, v, full, 0));
        if (p.decode_layer_ms <= 0) return YamlError(file, v, full, "must be > 0");
        has_decode = true;
      } else if (key == "head_ms") {
        ASSIGN_OR_RETURN(p.head_ms, ReadNumber(file, v, full, 0));
      } else if (key == "link") {
        ASSIGN_OR_RETURN(std::string text, YamlScalar(file, v, full));
        StatusOr<double> rate = ParseLinkRate(text);
        if (!rate.ok()) return YamlError(file, v, full, rate.status());
        p.link_bytes_per_s = *rate;
      } else if (key == "latency_ms") {
        ASSIGN_OR_RETURN(p.link_latency_ms, ReadNumber(file, v, full, 0));
      } else {
        return YamlError(
            file, it->first, full,
            "unknown key (known: name, memory, decode_layer_ms, head_ms, link, latency_ms)");
      }
    }
    if (p.name.empty()) return YamlError(file, item, absl::StrCat(path, ".name"), "missing");
    if (!has_memory) return YamlError(file, item, absl::StrCat(path, ".memory"), "missing");
    if (!has_decode) {
      return YamlError(file, item, absl::StrCat(path, ".decode_layer_ms"), "missing");
    }
    out.push_back(std::move(p));
  }
  return out;
}

StatusOr<std::vector<NodeProfile>> LoadNodeProfiles(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path));
  return ParseNodeProfiles(text, path);
}

}  // namespace tandem
