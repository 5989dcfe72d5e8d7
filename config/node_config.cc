#include "config/node_config.h"

#include <set>

#include "config/value_parsers.h"

namespace tandem {

namespace {

using Field = ConfigField<NodeConfig>;

constexpr int kMaxThreads = 4096;
const std::vector<std::string_view> kLogLevels = {"trace", "debug", "info", "warn", "error", "off"};

Status CheckName(std::string_view name) {
  if (name.size() > 64) return absl::InvalidArgumentError("at most 64 characters");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", std::string(name), "' may hold only letters, digits, '-', '_' and '.'"));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> SplitDevices(std::string_view text) {
  // "cuda:0,1" is one item; "cpu" another. Items are separated by spaces or ';'.
  std::vector<std::string> items;
  std::string cur;
  for (char c : text) {
    if (c == ' ' || c == ';') {
      if (!cur.empty()) items.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) items.push_back(cur);
  return items;
}

Status DevicesFromYaml(const std::string& file, const YAML::Node& value, NodeConfig* config) {
  std::vector<std::string> items;
  if (value.IsSequence()) {
    for (size_t i = 0; i < value.size(); ++i) {
      ASSIGN_OR_RETURN(std::string item,
                       YamlScalar(file, value[i], absl::StrCat("devices[", i, "]")));
      items.push_back(item);
    }
  } else {
    ASSIGN_OR_RETURN(std::string text, YamlScalar(file, value, "devices"));
    items = SplitDevices(text);
  }
  auto devices = ParseDevices(items);
  if (!devices.ok()) return YamlError(file, value, "devices", devices.status());
  config->devices = std::move(*devices);
  return absl::OkStatus();
}

std::vector<Field> MakeFields() {
  std::vector<Field> f;
  f.push_back(ScalarField<NodeConfig>("name", "node name (default: the host name)",
                                      [](std::string_view t, NodeConfig* c) -> Status {
                                        RETURN_IF_ERROR(CheckName(t));
                                        c->name = std::string(t);
                                        return absl::OkStatus();
                                      }));
  f.push_back(ScalarField<NodeConfig>(
      "listen", "gRPC listen address host:port (port 0: a free one, advertised as bound)",
      [](std::string_view t, NodeConfig* c) {
        return SetHostPort(t, AddressUse::kListen, &c->listen);
      }));
  f.push_back(ScalarField<NodeConfig>("advertise", "address other machines dial (host:port)",
                                      [](std::string_view t, NodeConfig* c) {
                                        return SetHostPort(t, AddressUse::kDial, &c->advertise,
                                                           /*optional=*/true);
                                      }));
  f.push_back(ScalarField<NodeConfig>("coordinator", "coordinator address host:port",
                                      [](std::string_view t, NodeConfig* c) {
                                        return SetHostPort(t, AddressUse::kDial, &c->coordinator);
                                      }));
  Field devices;
  devices.key = "devices";
  devices.help =
      "cpu, or GPUs such as cuda:0 or cuda:0,1 (a build with the CUDA backend; several GPUs: "
      "tensor parallelism across them over NCCL)";
  devices.from_yaml = &DevicesFromYaml;
  devices.from_text = [](std::string_view t, NodeConfig* c) -> Status {
    ASSIGN_OR_RETURN(c->devices, ParseDevices(SplitDevices(t)));
    return absl::OkStatus();
  };
  f.push_back(std::move(devices));
  f.push_back(ScalarField<NodeConfig>("memory_budget",
                                      "bytes for weights, KV cache and buffers (8GiB; 0: auto)",
                                      [](std::string_view t, NodeConfig* c) -> Status {
                                        ASSIGN_OR_RETURN(c->memory_budget, ParseByteSize(t));
                                        return absl::OkStatus();
                                      }));
  f.push_back(ScalarField<NodeConfig>("kv_budget", "bytes for the KV cache (0: a quarter of the memory budget, at most 512MiB)",
                                      [](std::string_view t, NodeConfig* c) -> Status {
                                        ASSIGN_OR_RETURN(c->kv_budget, ParseByteSize(t));
                                        return absl::OkStatus();
                                      }));
  f.push_back(ScalarField<NodeConfig>("threads", "CPU compute threads (0: all cores)",
                                      [](std::string_view t, NodeConfig* c) -> Status {
                                        ASSIGN_OR_RETURN(int64_t v,
                                                         ParseInteger(t, 0, kMaxThreads));
                                        c->threads = static_cast<int>(v);
                                        return absl::OkStatus();
                                      }));
  f.push_back(ScalarField<NodeConfig>("model", "Hugging Face model folder",
                                      [](std::string_view t, NodeConfig* c) {
                                        c->model = std::string(t);
                                        return absl::OkStatus();
                                      }));
  f.push_back(ScalarField<NodeConfig>("cluster_token", "shared secret of the cluster",
                                      [](std::string_view t, NodeConfig* c) {
                                        c->cluster_token = std::string(t);
                                        return absl::OkStatus();
                                      }));
  f.push_back(ScalarField<NodeConfig>("quantize", "quantize weights on load: none, int8, int4",
                                      [](std::string_view t, NodeConfig* c) -> Status {
                                        RETURN_IF_ERROR(CheckChoice(t, {"none", "int8", "int4"}));
                                        c->quantize = t == "int8"   ? Quantize::kInt8
                                                      : t == "int4" ? Quantize::kInt4
                                                                    : Quantize::kNone;
                                        return absl::OkStatus();
                                      }));
  f.push_back(ScalarField<NodeConfig>("log_level", "trace, debug, info, warn, error or off",
                                      [](std::string_view t, NodeConfig* c) -> Status {
                                        RETURN_IF_ERROR(CheckChoice(t, kLogLevels));
                                        c->log_level = std::string(t);
                                        return absl::OkStatus();
                                      }));
  return f;
}

}  // namespace

StatusOr<std::vector<DeviceId>> ParseDevices(const std::vector<std::string>& items) {
  std::vector<DeviceId> devices;
  std::set<int> seen;
  bool cpu = false;
  for (const std::string& item : items) {
    if (item == "cpu") {
      if (cpu) return absl::InvalidArgumentError("'cpu' is listed twice");
      cpu = true;
      devices.push_back(DeviceId{});
      continue;
    }
    if (item.rfind("cuda:", 0) != 0 || item.size() == 5) {
      return absl::InvalidArgumentError(
          absl::StrCat("expected 'cpu' or CUDA devices such as 'cuda:0,1', got '", item, "'"));
    }
    std::string_view rest(item);
    rest.remove_prefix(5);
    while (true) {
      size_t comma = rest.find(',');
      std::string_view num = rest.substr(0, comma);
      auto ordinal = ParseInteger(num, 0, 1023);
      if (!ordinal.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad CUDA device in '", item, "': ", ordinal.status().message()));
      }
      if (!seen.insert(static_cast<int>(*ordinal)).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("CUDA device ", *ordinal, " is listed twice"));
      }
      devices.push_back(DeviceId{DeviceKind::kCuda, static_cast<int>(*ordinal)});
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  if (devices.empty()) return absl::InvalidArgumentError("no device given");
  if (cpu && devices.size() > 1) {
    return absl::InvalidArgumentError("'cpu' cannot be combined with CUDA devices");
  }
  return devices;
}

std::string DevicesToString(const std::vector<DeviceId>& devices) {
  if (devices.size() == 1 && devices[0].kind == DeviceKind::kCpu) return "cpu";
  std::string s = "cuda:";
  for (size_t i = 0; i < devices.size(); ++i) {
    absl::StrAppend(&s, i ? "," : "", devices[i].ordinal);
  }
  return s;
}

std::vector<int> CudaOrdinals(const std::vector<DeviceId>& devices) {
  std::vector<int> ordinals;
  for (const DeviceId& d : devices) {
    if (d.kind == DeviceKind::kCuda) ordinals.push_back(d.ordinal);
  }
  return ordinals;
}

std::string_view QuantizeName(Quantize q) {
  switch (q) {
    case Quantize::kNone:
      return "none";
    case Quantize::kInt8:
      return "int8";
    case Quantize::kInt4:
      return "int4";
  }
  return "none";
}

const std::vector<ConfigField<NodeConfig>>& NodeConfigFields() {
  static const std::vector<Field> fields = MakeFields();
  return fields;
}

Status ValidateNodeConfig(const NodeConfig& config) {
  if (config.memory_budget != 0 && config.kv_budget > config.memory_budget) {
    return absl::InvalidArgumentError(absl::StrCat("kv_budget (", FormatByteSize(config.kv_budget),
                                                   ") exceeds memory_budget (",
                                                   FormatByteSize(config.memory_budget), ")"));
  }
  return absl::OkStatus();
}

StatusOr<NodeConfig> ParseNodeConfig(std::string_view yaml, const std::string& file) {
  NodeConfig config;
  RETURN_IF_ERROR(ApplyYaml(yaml, file, NodeConfigFields(), &config));
  Status s = ValidateNodeConfig(config);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(file, ": ", s.message()));
  return config;
}

StatusOr<NodeConfig> LoadNodeConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path));
  return ParseNodeConfig(text, path);
}

}  // namespace tandem
