#pragma once
// The weights of a Hugging Face model folder: either one `model.safetensors`
// or shards listed by `model.safetensors.index.json` ({"weight_map":
// {tensor: shard file}}). When both exist the single file wins, as in
// Hugging Face transformers.
//
// Reading is lazy: Open() reads only the index (or the single file's header);
// a shard is mapped and its header validated when one of its tensors is first
// asked for, and at that moment every tensor the index places in that shard
// must be present with a valid range. Tensor data is never copied, so a node
// that asks only for layers 8..15 maps their shards and touches only their
// pages.
//
// All methods are const and thread-safe. Views stay valid while the
// Checkpoint lives (moving it keeps them valid). Move-only.
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "model/safetensors.h"

namespace tandem {

inline constexpr std::string_view kSafetensorsSingleFile = "model.safetensors";
inline constexpr std::string_view kSafetensorsIndexFile = "model.safetensors.index.json";

class Checkpoint {
 public:
  static StatusOr<Checkpoint> Open(const std::filesystem::path& model_dir);

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  // A view into the mapped shard (read-only memory). The error names the
  // tensor and the folder.
  StatusOr<TensorView> Get(std::string_view name) const;
  // Dtype, shape and byte range of a tensor; maps its shard but touches no data.
  StatusOr<TensorInfo> Info(std::string_view name) const;
  bool Has(std::string_view name) const;
  // Every tensor name the checkpoint claims, sorted.
  std::vector<std::string> Names() const;

  const std::filesystem::path& dir() const;
  bool sharded() const;
  int num_shards() const;
  // How many shard files have been mapped so far (for tests and tools).
  int num_open_shards() const;
  // Maps every shard and checks every claim of the index, for tools that
  // want all errors up front.
  Status ValidateAll() const;

 private:
  struct State;
  explicit Checkpoint(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace tandem
