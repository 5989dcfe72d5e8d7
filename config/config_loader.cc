#include "config/config_loader.h"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace tandem {

namespace {
constexpr uintmax_t kMaxConfigFileBytes = 4u << 20;
}  // namespace

Status YamlError(const std::string& file, const YAML::Node& at, std::string_view key,
                 std::string_view what) {
  const YAML::Mark mark = at.Mark();
  std::string where = file;
  if (mark.line >= 0) absl::StrAppend(&where, ":", mark.line + 1, ":", mark.column + 1);
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": ", std::string(key), ": ", std::string(what)));
}

Status YamlError(const std::string& file, const YAML::Node& at, std::string_view key,
                 const Status& cause) {
  return YamlError(file, at, key, std::string_view(cause.message().data(), cause.message().size()));
}

StatusOr<std::string> YamlScalar(const std::string& file, const YAML::Node& value,
                                 std::string_view key) {
  if (value.IsScalar()) return value.Scalar();
  if (value.IsNull()) return std::string();
  return YamlError(file, value, key,
                   value.IsSequence() ? "expected a single value, got a list"
                                      : "expected a single value, got a mapping");
}

StatusOr<YAML::Node> ParseYaml(std::string_view text, const std::string& file) {
  try {
    return YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(file, ":", e.mark.line + 1, ":",
                                                   e.mark.column + 1, ": invalid YAML: ", e.msg));
  }
}

StatusOr<std::string> ReadConfigFile(const std::string& path) {
  std::error_code ec;
  uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", ec.message()));
  if (size > kMaxConfigFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": larger than ", kMaxConfigFileBytes, " bytes"));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return absl::InternalError(absl::StrCat("cannot read ", path));
  return text.str();
}

std::string FlagName(std::string_view key) {
  std::string name = "--";
  for (char c : key) name.push_back(c == '_' ? '-' : c);
  return name;
}

}  // namespace tandem
