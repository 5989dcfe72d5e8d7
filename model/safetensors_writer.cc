#include "model/safetensors_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "nlohmann/json.hpp"

namespace tandem {

Status WriteSafetensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors,
                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const NamedTensor& t : tensors) {
    if (!t.view.IsContiguous()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' is not contiguous"));
    }
    if (DTypeSafetensorsName(t.view.dtype).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': dtype ",
                                                     std::string(DTypeName(t.view.dtype)),
                                                     " has no safetensors name"));
    }
    nlohmann::ordered_json entry;
    entry["dtype"] = std::string(DTypeSafetensorsName(t.view.dtype));
    entry["shape"] = std::vector<int64_t>(t.view.shape.dims().begin(), t.view.shape.dims().end());
    entry["data_offsets"] = {offset, offset + t.view.NumBytes()};
    header[t.name] = std::move(entry);
    offset += t.view.NumBytes();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot create ", path.string(), ": ", std::strerror(errno)));
  }
  uint8_t len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  bool ok =
      std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const NamedTensor& t : tensors) {
    size_t bytes = t.view.NumBytes();
    if (ok && bytes > 0) ok = std::fwrite(t.view.data, 1, bytes, f) == bytes;
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

}  // namespace tandem
