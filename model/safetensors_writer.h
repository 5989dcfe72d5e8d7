#pragma once
// Writes a safetensors file: the header pads the data section to 8 bytes and
// tensors follow in the order given, packed. Used by tests and tools that need
// small checkpoints; large models come from tools/make-test-model.
#include <filesystem>
#include <map>
#include <span>
#include <string>

#include "core/status.h"
#include "core/tensor.h"

namespace tandem {

struct NamedTensor {
  std::string name;
  TensorView view;  // must be contiguous; dtype must have a safetensors name
};

Status WriteSafetensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace tandem
