#include "config/coordinator_config.h"

#include <set>

#include "config/value_parsers.h"

namespace tandem {

namespace {

using Config = CoordinatorConfig;
using Field = ConfigField<Config>;

constexpr int kMaxNodes = 1024;
const std::vector<std::string_view> kLogLevels = {"trace", "debug", "info", "warn", "error", "off"};
const std::vector<std::string_view> kChatTemplates = {"llama3", "llama2", "chatml", "mistral"};

Status SetInt(std::string_view text, int64_t min, int64_t max, int* out) {
  ASSIGN_OR_RETURN(int64_t v, ParseInteger(text, min, max));
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

// Walks a YAML mapping, refusing keys outside `known`; `path` prefixes keys in errors.
Status CheckKeys(const std::string& file, const YAML::Node& map, const std::string& path,
                 const std::vector<std::string_view>& known) {
  if (!map.IsMap()) return YamlError(file, map, path, "expected a mapping");
  std::set<std::string> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    ASSIGN_OR_RETURN(std::string key, YamlScalar(file, it->first, path));
    const std::string full = absl::StrCat(path, ".", key);
    bool ok = false;
    for (std::string_view k : known) ok |= (k == key);
    if (!ok) {
      std::string list;
      for (std::string_view k : known)
        absl::StrAppend(&list, list.empty() ? "" : ", ", std::string(k));
      return YamlError(file, it->first, full, absl::StrCat("unknown key (known: ", list, ")"));
    }
    if (!seen.insert(key).second) return YamlError(file, it->first, full, "given twice");
  }
  return absl::OkStatus();
}

// Reads a required scalar `key` of mapping `map` through `parse`.
template <typename Parse>
Status ReadKey(const std::string& file, const YAML::Node& map, const std::string& path,
               const std::string& key, Parse parse) {
  const std::string full = absl::StrCat(path, ".", key);
  YAML::Node v = map[key];
  if (!v.IsDefined() || v.IsNull()) return YamlError(file, map, full, "missing");
  ASSIGN_OR_RETURN(std::string text, YamlScalar(file, v, full));
  Status s = parse(text);
  return s.ok() ? s : YamlError(file, v, full, s);
}

Status SetPolicy(std::string_view t, Config* c) {
  RETURN_IF_ERROR(CheckChoice(t, {"balanced", "manual"}));
  c->planner = t == "manual" ? PlannerPolicy::kManual : PlannerPolicy::kBalanced;
  return absl::OkStatus();
}

Status SetCodec(std::string_view t, std::string* out) {
  RETURN_IF_ERROR(CheckChoice(t, kCodecNames));
  *out = std::string(t);
  return absl::OkStatus();
}

// planner: balanced | manual, or {policy: ..., layers: [{node, begin, end}, ...]}.
Status PlannerFromYaml(const std::string& file, const YAML::Node& value, Config* c) {
  if (value.IsScalar()) {
    Status s = SetPolicy(value.Scalar(), c);
    return s.ok() ? s : YamlError(file, value, "planner", s);
  }
  RETURN_IF_ERROR(CheckKeys(file, value, "planner", {"policy", "layers"}));
  if (value["policy"]) {
    RETURN_IF_ERROR(ReadKey(file, value, "planner", "policy",
                            [&](std::string_view t) { return SetPolicy(t, c); }));
  }
  c->manual_layers.clear();
  YAML::Node layers = value["layers"];
  if (!layers || layers.IsNull()) return absl::OkStatus();
  if (!layers.IsSequence()) {
    return YamlError(file, layers, "planner.layers", "expected a list of {node, begin, end}");
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string path = absl::StrCat("planner.layers[", i, "]");
    const YAML::Node item = layers[i];
    RETURN_IF_ERROR(CheckKeys(file, item, path, {"node", "begin", "end"}));
    ManualLayerRange r;
    RETURN_IF_ERROR(ReadKey(file, item, path, "node", [&](std::string_view t) -> Status {
      if (t.empty()) return absl::InvalidArgumentError("empty node name");
      r.node = std::string(t);
      return absl::OkStatus();
    }));
    RETURN_IF_ERROR(ReadKey(file, item, path, "begin",
                            [&](std::string_view t) { return SetInt(t, 0, 1 << 20, &r.begin); }));
    RETURN_IF_ERROR(ReadKey(file, item, path, "end", [&](std::string_view t) -> Status {
      RETURN_IF_ERROR(SetInt(t, 1, 1 << 20, &r.end));
      if (r.end <= r.begin) {
        return absl::InvalidArgumentError(
            absl::StrCat("end ", r.end, " must be greater than begin ", r.begin));
      }
      return absl::OkStatus();
    }));
    c->manual_layers.push_back(std::move(r));
  }
  return absl::OkStatus();
}

// codec: lz4, or {default: auto, links: [{from, to, codec}, ...]}.
Status CodecFromYaml(const std::string& file, const YAML::Node& value, Config* c) {
  if (value.IsScalar()) {
    Status s = SetCodec(value.Scalar(), &c->codec);
    return s.ok() ? s : YamlError(file, value, "codec", s);
  }
  RETURN_IF_ERROR(CheckKeys(file, value, "codec", {"default", "links"}));
  if (value["default"]) {
    RETURN_IF_ERROR(ReadKey(file, value, "codec", "default",
                            [&](std::string_view t) { return SetCodec(t, &c->codec); }));
  }
  c->link_codecs.clear();
  YAML::Node links = value["links"];
  if (!links || links.IsNull()) return absl::OkStatus();
  if (!links.IsSequence()) {
    return YamlError(file, links, "codec.links", "expected a list of {from, to, codec}");
  }
  for (size_t i = 0; i < links.size(); ++i) {
    const std::string path = absl::StrCat("codec.links[", i, "]");
    const YAML::Node item = links[i];
    RETURN_IF_ERROR(CheckKeys(file, item, path, {"from", "to", "codec"}));
    LinkCodec link;
    auto name = [](std::string* out) {
      return [out](std::string_view t) -> Status {
        if (t.empty()) return absl::InvalidArgumentError("empty node name");
        *out = std::string(t);
        return absl::OkStatus();
      };
    };
    RETURN_IF_ERROR(ReadKey(file, item, path, "from", name(&link.from)));
    RETURN_IF_ERROR(ReadKey(file, item, path, "to", name(&link.to)));
    RETURN_IF_ERROR(ReadKey(file, item, path, "codec",
                            [&](std::string_view t) { return SetCodec(t, &link.codec); }));
    c->link_codecs.push_back(std::move(link));
  }
  return absl::OkStatus();
}

std::vector<Field> MakeFields() {
  std::vector<Field> f;
  f.push_back(ScalarField<Config>("listen",
                                  "gRPC listen address host:port (port 0: a free one, logged)",
                                  [](std::string_view t, Config* c) {
                                    return SetHostPort(t, AddressUse::kListen, &c->listen);
                                  }));
  f.push_back(ScalarField<Config>(
      "http",
      "HTTP API and dashboard listen address host:port (empty: off; port 0: a free one, logged)",
      [](std::string_view t, Config* c) {
        return SetHostPort(t, AddressUse::kListen, &c->http, /*optional=*/true);
      }));
  f.push_back(ScalarField<Config>("api_key", "bearer token required by the HTTP API",
                                  [](std::string_view t, Config* c) {
                                    c->api_key = std::string(t);
                                    return absl::OkStatus();
                                  }));
  f.push_back(
      ScalarField<Config>("model", "Hugging Face model folder", [](std::string_view t, Config* c) {
        c->model = std::string(t);
        return absl::OkStatus();
      }));
  f.push_back(ScalarField<Config>(
      "nodes", "nodes to wait for before planning",
      [](std::string_view t, Config* c) { return SetInt(t, 1, kMaxNodes, &c->nodes); }));
  f.push_back(ScalarField<Config>(
      "min_nodes",
      "after losing a node, re-plan and keep serving while this many are live (0: only with "
      "all --nodes)",
      [](std::string_view t, Config* c) { return SetInt(t, 0, kMaxNodes, &c->min_nodes); }));
  Field planner;
  planner.key = "planner";
  planner.help = "layer assignment policy: balanced or manual";
  planner.from_yaml = &PlannerFromYaml;
  planner.from_text = &SetPolicy;
  f.push_back(std::move(planner));
  Field codec;
  codec.key = "codec";
  codec.help = "default link codec: auto, none, lz4, zlib, zstd, shuffle-lz4, ...";
  codec.from_yaml = &CodecFromYaml;
  codec.from_text = [](std::string_view t, Config* c) { return SetCodec(t, &c->codec); };
  f.push_back(std::move(codec));
  f.push_back(ScalarField<Config>("cluster_token", "shared secret of the cluster",
                                  [](std::string_view t, Config* c) {
                                    c->cluster_token = std::string(t);
                                    return absl::OkStatus();
                                  }));
  f.push_back(ScalarField<Config>("chat_template",
                                  "chat template override: llama3, llama2, chatml, mistral",
                                  [](std::string_view t, Config* c) -> Status {
                                    if (!t.empty()) RETURN_IF_ERROR(CheckChoice(t, kChatTemplates));
                                    c->chat_template = std::string(t);
                                    return absl::OkStatus();
                                  }));
  f.push_back(ScalarField<Config>(
      "max_batch_tokens", "tokens per scheduler step",
      [](std::string_view t, Config* c) { return SetInt(t, 1, 1 << 20, &c->max_batch_tokens); }));
  f.push_back(ScalarField<Config>(
      "max_sequences", "sequences in flight",
      [](std::string_view t, Config* c) { return SetInt(t, 1, 1 << 16, &c->max_sequences); }));
  f.push_back(ScalarField<Config>("kv_budget", "KV cache bytes per node to plan with (0: reported)",
                                  [](std::string_view t, Config* c) -> Status {
                                    ASSIGN_OR_RETURN(c->kv_budget, ParseByteSize(t));
                                    return absl::OkStatus();
                                  }));
  f.push_back(ScalarField<Config>("log_level", "trace, debug, info, warn, error or off",
                                  [](std::string_view t, Config* c) -> Status {
                                    RETURN_IF_ERROR(CheckChoice(t, kLogLevels));
                                    c->log_level = std::string(t);
                                    return absl::OkStatus();
                                  }));
  return f;
}

}  // namespace

const std::vector<ConfigField<CoordinatorConfig>>& CoordinatorConfigFields() {
  static const std::vector<Field> fields = MakeFields();
  return fields;
}

Status ValidateCoordinatorConfig(const CoordinatorConfig& c) {
  if (c.min_nodes > c.nodes) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_nodes (", c.min_nodes, ") exceeds nodes (", c.nodes, ")"));
  }
  if (c.planner == PlannerPolicy::kManual) {
    if (c.manual_layers.empty()) {
      return absl::InvalidArgumentError("planner policy manual needs planner.layers");
    }
    std::set<std::string> names;
    int expected_begin = 0;
    for (size_t i = 0; i < c.manual_layers.size(); ++i) {
      const ManualLayerRange& r = c.manual_layers[i];
      if (r.begin != expected_begin) {
        return absl::InvalidArgumentError(absl::StrCat(
            "planner.layers[", i, "] begins at ", r.begin, " but the previous range ends at ",
            expected_begin, " (ranges must be contiguous, in pipeline order, from 0)"));
      }
      if (!names.insert(r.node).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("planner.layers[", i, "]: node '", r.node, "' has two ranges"));
      }
      expected_begin = r.end;
    }
    if (static_cast<int>(c.manual_layers.size()) > c.nodes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "planner.layers names ", c.manual_layers.size(), " nodes but nodes is ", c.nodes));
    }
  } else if (!c.manual_layers.empty()) {
    return absl::InvalidArgumentError("planner.layers is only used with policy manual");
  }
  return absl::OkStatus();
}

StatusOr<CoordinatorConfig> ParseCoordinatorConfig(std::string_view yaml, const std::string& file) {
  CoordinatorConfig config;
  RETURN_IF_ERROR(ApplyYaml(yaml, file, CoordinatorConfigFields(), &config));
  Status s = ValidateCoordinatorConfig(config);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(file, ": ", s.message()));
  return config;
}

StatusOr<CoordinatorConfig> LoadCoordinatorConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path));
  return ParseCoordinatorConfig(text, path);
}

}  // namespace tandem
