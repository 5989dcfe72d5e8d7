#pragma once
// Table-driven loading of a settings struct from YAML and from command-line
// flags, shared by NodeConfig and CoordinatorConfig.
//
// Each setting is a ConfigField: its YAML key, a help line, how to read it
// from a YAML value and (for most) how to read it from a flag's text. The
// same text parsers serve both, so "8GiB" means the same in a file and on the
// command line. Loading refuses unknown keys, keys given twice, values of the
// wrong type and out-of-range values, naming the file, the line and the key:
//
//   node.yaml:7:14: threads: value 100000 is out of range [0, 4096]
//
// Command-line flags override file values (ConfigFlags):
//
//   NodeConfigFlags flags;            // = ConfigFlags<NodeConfig>
//   flags.Register(app);              // --config FILE, plus --threads, --memory-budget, ...
//   ... app.parse(argc, argv) ...
//   StatusOr<NodeConfig> config = flags.Resolve();
//
// Resolve() starts from the struct's defaults, loads --config when given,
// then applies only the flags that appeared on the command line (their
// CLI::Option::count() > 0; nothing is bound to a variable, so a flag's
// default never overwrites a file value), then runs the cross-field checks.
// A flag that already exists on the app (e.g. the common --log-level of
// core/cli.h) is reused rather than added twice.
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "CLI/CLI.hpp"
#include "core/status.h"
#include "yaml-cpp/yaml.h"

namespace tandem {

// "<file>:<line>:<column>: <key>: <what>", from the mark of `at`.
Status YamlError(const std::string& file, const YAML::Node& at, std::string_view key,
                 std::string_view what);
// The same, with the message of `cause`.
Status YamlError(const std::string& file, const YAML::Node& at, std::string_view key,
                 const Status& cause);
// The text of a scalar value; an error naming `key` for a sequence or a map.
StatusOr<std::string> YamlScalar(const std::string& file, const YAML::Node& value,
                                 std::string_view key);
// Parses YAML text; syntax errors carry the file and line. An empty document
// yields a null node.
StatusOr<YAML::Node> ParseYaml(std::string_view text, const std::string& file);
// Reads a whole (small) file.
StatusOr<std::string> ReadConfigFile(const std::string& path);
// "memory_budget" -> "--memory-budget".
std::string FlagName(std::string_view key);

template <typename Config>
struct ConfigField {
  std::string key;
  std::string help;
  // Reads the field from a YAML value; errors carry the location (YamlError).
  std::function<Status(const std::string& file, const YAML::Node& value, Config*)> from_yaml;
  // Reads the field from a flag's text; null when the setting has no flag.
  std::function<Status(std::string_view text, Config*)> from_text;
};

// A field whose YAML value is a scalar read by the same parser as its flag.
template <typename Config>
ConfigField<Config> ScalarField(std::string key, std::string help,
                                std::function<Status(std::string_view, Config*)> set) {
  ConfigField<Config> f;
  f.key = key;
  f.help = std::move(help);
  f.from_yaml = [key, set](const std::string& file, const YAML::Node& value,
                           Config* config) -> Status {
    ASSIGN_OR_RETURN(std::string text, YamlScalar(file, value, key));
    Status s = set(text, config);
    return s.ok() ? s : YamlError(file, value, key, s);
  };
  f.from_text = std::move(set);
  return f;
}

// Fills `config` from the YAML mapping in `text`; fields absent from the
// file keep their current values.
template <typename Config>
Status ApplyYaml(std::string_view text, const std::string& file,
                 const std::vector<ConfigField<Config>>& fields, Config* config) {
  ASSIGN_OR_RETURN(YAML::Node root, ParseYaml(text, file));
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) {
    return YamlError(file, root, "(top level)", "expected a mapping of settings");
  }
  std::set<std::string> seen;
  for (auto it = root.begin(); it != root.end(); ++it) {
    ASSIGN_OR_RETURN(std::string key, YamlScalar(file, it->first, "(key)"));
    const ConfigField<Config>* field = nullptr;
    for (const auto& f : fields) {
      if (f.key == key) field = &f;
    }
    if (field == nullptr) {
      std::string known;
      for (const auto& f : fields) absl::StrAppend(&known, known.empty() ? "" : ", ", f.key);
      return YamlError(file, it->first, key, absl::StrCat("unknown key (known: ", known, ")"));
    }
    if (!seen.insert(key).second) return YamlError(file, it->first, key, "given twice");
    if (it->second.IsNull()) continue;  // "key:" with no value keeps the default
    RETURN_IF_ERROR(field->from_yaml(file, it->second, config));
  }
  return absl::OkStatus();
}

template <typename Config>
class ConfigFlags {
 public:
  using Validator = std::function<Status(const Config&)>;
  ConfigFlags(std::vector<ConfigField<Config>> fields, Validator validate)
      : fields_(std::move(fields)), validate_(std::move(validate)) {}

  // Adds --config and one flag per field with a text parser to `app`.
  void Register(CLI::App& app) {
    config_option_ = app.add_option("--config", config_path_, "YAML settings file");
    for (const auto& f : fields_) {
      if (!f.from_text) continue;
      const std::string name = FlagName(f.key);
      CLI::Option* opt = app.get_option_no_throw(name);
      if (opt == nullptr) opt = app.add_option(name)->description(f.help + " (overrides the file)");
      options_.emplace_back(&f, opt);
    }
  }

  // The file (if any), then the flags given, then the cross-field checks.
  StatusOr<Config> Resolve() const {
    Config config;
    if (!config_path_.empty()) {
      ASSIGN_OR_RETURN(std::string text, ReadConfigFile(config_path_));
      RETURN_IF_ERROR(ApplyYaml(text, config_path_, fields_, &config));
    }
    for (const auto& [field, opt] : options_) {
      if (opt->count() == 0) continue;
      const std::string text = opt->template as<std::string>();
      Status s = field->from_text(text, &config);
      if (!s.ok()) {
        return absl::Status(s.code(), absl::StrCat(FlagName(field->key), ": ", s.message()));
      }
    }
    if (validate_) {
      Status s = validate_(config);
      if (!s.ok()) {
        return absl::Status(s.code(), absl::StrCat(config_path_.empty() ? "settings" : config_path_,
                                                   ": ", s.message()));
      }
    }
    return config;
  }

  const std::string& config_path() const { return config_path_; }

 private:
  std::vector<ConfigField<Config>> fields_;
  Validator validate_;
  std::string config_path_;
  CLI::Option* config_option_ = nullptr;
  std::vector<std::pair<const ConfigField<Config>*, CLI::Option*>> options_;
};

}  // namespace tandem
