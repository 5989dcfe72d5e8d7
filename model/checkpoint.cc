#include "model/checkpoint.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "nlohmann/json.hpp"

namespace tandem {

namespace {
// The index lists one line per tensor; even a 1000-layer model stays far below.
constexpr uintmax_t kMaxIndexBytes = 100u << 20;
}  // namespace

struct Checkpoint::State {
  struct Shard {
    std::string file_name;
    std::vector<std::string> claimed;       // tensors the index places here
    std::unique_ptr<SafetensorsFile> file;  // null until first use
    Status open_status;                     // sticky failure of the first open
  };

  std::filesystem::path dir;
  bool sharded = false;
  std::vector<Shard> shards;
  std::unordered_map<std::string, int> shard_of;  // tensor name -> index into shards
  mutable std::mutex mu;                          // guards Shard::file and Shard::open_status

  // Maps shard `i` if needed and returns it; the caller holds `mu`.
  StatusOr<const SafetensorsFile*> OpenShardLocked(int i) {
    Shard& s = shards[i];
    if (s.file != nullptr) return s.file.get();
    if (!s.open_status.ok()) return s.open_status;
    auto opened = SafetensorsFile::Open(dir / s.file_name);
    if (!opened.ok()) {
      s.open_status = opened.status();
      return s.open_status;
    }
    for (const std::string& name : s.claimed) {
      if ((*opened)->Find(name) == nullptr) {
        s.open_status = absl::NotFoundError(absl::StrCat((dir / kSafetensorsIndexFile).string(),
                                                         " places tensor '", name, "' in ",
                                                         s.file_name, ", which does not hold it"));
        return s.open_status;
      }
    }
    s.file = std::move(*opened);
    return s.file.get();
  }

  StatusOr<std::pair<const SafetensorsFile*, const TensorInfo*>> Lookup(std::string_view name) {
    auto it = shard_of.find(std::string(name));
    if (it == shard_of.end()) {
      return absl::NotFoundError(absl::StrCat("tensor '", std::string(name),
                                              "' is not in the checkpoint in ", dir.string()));
    }
    std::lock_guard<std::mutex> lock(mu);
    auto file = OpenShardLocked(it->second);
    if (!file.ok()) {
      return absl::Status(file.status().code(), absl::StrCat("tensor '", std::string(name),
                                                             "': ", file.status().message()));
    }
    const TensorInfo* info = (*file)->Find(name);
    CHECK(info != nullptr);  // OpenShardLocked checked every claim
    return std::make_pair(*file, info);
  }
};

Checkpoint::Checkpoint(std::unique_ptr<State> state) : state_(std::move(state)) {}
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

StatusOr<Checkpoint> Checkpoint::Open(const std::filesystem::path& model_dir) {
  auto state = std::make_unique<State>();
  state->dir = model_dir;
  std::error_code ec;
  const std::filesystem::path single = model_dir / kSafetensorsSingleFile;
  const std::filesystem::path index = model_dir / kSafetensorsIndexFile;

  if (std::filesystem::is_regular_file(single, ec)) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single));
    State::Shard shard;
    shard.file_name = std::string(kSafetensorsSingleFile);
    for (const TensorInfo& t : file->tensors()) {
      shard.claimed.push_back(t.name);
      state->shard_of.emplace(t.name, 0);
    }
    shard.file = std::move(file);
    state->shards.push_back(std::move(shard));
    return Checkpoint(std::move(state));
  }
  if (!std::filesystem::is_regular_file(index, ec)) {
    return absl::NotFoundError(absl::StrCat("no ", std::string(kSafetensorsSingleFile), " or ",
                                            std::string(kSafetensorsIndexFile), " in ",
                                            model_dir.string()));
  }

  state->sharded = true;
  const std::string where = index.string();
  uintmax_t size = std::filesystem::file_size(index, ec);
  if (ec || size > kMaxIndexBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unreadable or larger than ", kMaxIndexBytes, " bytes"));
  }
  std::ifstream in(index, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return absl::InternalError(absl::StrCat("cannot read ", where));
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON: ", e.what()));
  }
  if (!root.is_object() || !root.contains("weight_map") || !root["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing object 'weight_map'"));
  }
  std::map<std::string, int> shard_ids;
  for (const auto& [tensor, file_json] : root["weight_map"].items()) {
    if (!file_json.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": weight_map entry for '", tensor, "' is not a string"));
    }
    std::string file_name = file_json.get<std::string>();
    if (file_name.empty() || file_name == "." || file_name == ".." ||
        file_name.find('/') != std::string::npos || file_name.find('\\') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": weight_map entry for '", tensor,
                                                     "' names '", file_name,
                                                     "', which is not a plain file name"));
    }
    auto [it, inserted] = shard_ids.emplace(file_name, static_cast<int>(state->shards.size()));
    if (inserted) {
      if (!std::filesystem::is_regular_file(model_dir / file_name, ec)) {
        return absl::NotFoundError(absl::StrCat(where, ": shard ", file_name, " (holding '", tensor,
                                                "') does not exist in ", model_dir.string()));
      }
      State::Shard shard;
      shard.file_name = file_name;
      state->shards.push_back(std::move(shard));
    }
    state->shards[it->second].claimed.push_back(tensor);
    state->shard_of.emplace(tensor, it->second);
  }
  if (state->shards.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": weight_map is empty"));
  }
  return Checkpoint(std::move(state));
}

StatusOr<TensorView> Checkpoint::Get(std::string_view name) const {
  ASSIGN_OR_RETURN(auto found, state_->Lookup(name));
  return found.first->View(*found.second);
}

StatusOr<TensorInfo> Checkpoint::Info(std::string_view name) const {
  ASSIGN_OR_RETURN(auto found, state_->Lookup(name));
  return *found.second;
}

bool Checkpoint::Has(std::string_view name) const {
  return state_->shard_of.contains(std::string(name));
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(state_->shard_of.size());
  for (const auto& [name, shard] : state_->shard_of) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

const std::filesystem::path& Checkpoint::dir() const { return state_->dir; }
bool Checkpoint::sharded() const { return state_->sharded; }
int Checkpoint::num_shards() const { return static_cast<int>(state_->shards.size()); }

int Checkpoint::num_open_shards() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  int n = 0;
  for (const auto& s : state_->shards) n += s.file != nullptr;
  return n;
}

Status Checkpoint::ValidateAll() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  for (int i = 0; i < num_shards(); ++i) {
    RETURN_IF_ERROR(state_->OpenShardLocked(i).status());
  }
  return absl::OkStatus();
}

}  // namespace tandem
