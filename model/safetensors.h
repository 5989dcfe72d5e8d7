#pragma once
// Reader for the safetensors format: an 8-byte little-endian header length N,
// N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, ...,
// "__metadata__": {str: str}}, then the data section.
//
// Open() maps the file read-only and validates the whole header before any
// tensor is handed out: the length is bounded (kMaxSafetensorsHeaderBytes and
// the file size), the JSON is well-formed, every dtype is known, every
// dtype x shape equals its byte range, and every range lies inside the data
// section without overlapping another. Nothing read from the file is trusted
// before these checks. Tensor data is never copied: View() points into the
// mapping and pages are read from disk only when touched.
#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "model/mapped_file.h"

namespace tandem {

// Headers larger than this are refused before anything is allocated for them.
inline constexpr size_t kMaxSafetensorsHeaderBytes = 100u << 20;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  size_t begin = 0;  // byte range [begin, end) within the data section
  size_t end = 0;
  size_t NumBytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  // nullptr when the file holds no tensor of that name.
  const TensorInfo* Find(std::string_view name) const;
  // All tensors, ordered by their position in the data section.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Offset of the data section from the start of the file (8 + header length).
  size_t data_offset() const { return data_offset_; }

  // A contiguous view into the read-only mapping; valid while this object
  // lives. The memory must not be written. `info` must come from this file.
  // The pointer is only as aligned as the file makes it (the usual writers
  // align the data section to 8 bytes).
  TensorView View(const TensorInfo& info) const;

 private:
  explicit SafetensorsFile(std::unique_ptr<MappedFile> file) : file_(std::move(file)) {}
  Status ParseHeader();

  std::unique_ptr<MappedFile> file_;
  size_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

}  // namespace tandem
