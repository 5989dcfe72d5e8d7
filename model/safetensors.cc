#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "nlohmann/json.hpp"

namespace tandem {

namespace {

using Json = nlohmann::json;

// Reads a non-negative integer that fits in size_t; false otherwise.
bool ReadSize(const Json& j, size_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<size_t>(v);
    return true;
  }
  return false;
}

}  // namespace

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(std::move(mapped)));
  RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

Status SafetensorsFile::ParseHeader() {
  const std::string where = path().string();
  std::span<const uint8_t> bytes = file_->bytes();
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": truncated safetensors file (",
                                                   bytes.size(), " bytes, need at least 8)"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": safetensors header length ",
                                                   header_len, " exceeds the limit of ",
                                                   kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (header_len > bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": safetensors header length ",
                                                   header_len, " runs past the end of the file (",
                                                   bytes.size(), " bytes): truncated file?"));
  }
  if (header_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": safetensors header of ", header_len, " bytes is too short"));
  }
  data_offset_ = 8 + header_len;
  const size_t data_size = bytes.size() - data_offset_;
  const char* header = reinterpret_cast<const char*>(bytes.data() + 8);

  Json root;
  try {
    root = Json::parse(header, header + header_len);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": safetensors header is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": safetensors header is not a JSON object"));
  }

  tensors_.reserve(root.size());
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": __metadata__ is not a JSON object"));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": __metadata__ entry '", key, "' is not a string"));
        }
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    auto bad = [&](std::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensor '", name, "': ", std::string(what)));
    };
    if (!entry.is_object()) return bad("header entry is not a JSON object");
    for (const auto& [key, unused] : entry.items()) {
      (void)unused;
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        return bad(absl::StrCat("unknown header field '", key, "'"));
      }
    }
    TensorInfo info;
    info.name = name;

    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string())
      return bad("missing or non-string dtype");
    const std::string dtype_name = dtype_it->get<std::string>();
    std::optional<DType> dtype = DTypeFromSafetensors(dtype_name);
    if (!dtype) return bad(absl::StrCat("unknown dtype '", dtype_name, "'"));
    info.dtype = *dtype;

    auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array()) return bad("missing or non-array shape");
    if (shape_it->size() > static_cast<size_t>(kMaxRank)) {
      return bad(absl::StrCat("rank ", shape_it->size(), " exceeds the supported ", kMaxRank));
    }
    std::vector<int64_t> dims;
    size_t elements = 1;
    bool overflow = false;
    for (const Json& d : *shape_it) {
      size_t dim = 0;
      if (!ReadSize(d, &dim) || dim > static_cast<size_t>(std::numeric_limits<int64_t>::max())) {
        return bad("shape holds a value that is not a non-negative integer");
      }
      overflow |= __builtin_mul_overflow(elements, dim, &elements);
      dims.push_back(static_cast<int64_t>(dim));
    }
    if (overflow || elements > std::numeric_limits<size_t>::max() / 8) {
      return bad("shape has too many elements");
    }
    info.shape = Shape(std::span<const int64_t>(dims));

    auto off_it = entry.find("data_offsets");
    if (off_it == entry.end() || !off_it->is_array() || off_it->size() != 2 ||
        !ReadSize((*off_it)[0], &info.begin) || !ReadSize((*off_it)[1], &info.end)) {
      return bad("data_offsets must be two non-negative integers");
    }
    if (info.begin > info.end) {
      return bad(absl::StrCat("data_offsets [", info.begin, ", ", info.end, ") are reversed"));
    }
    if (info.end > data_size) {
      return bad(absl::StrCat("data_offsets [", info.begin, ", ", info.end,
                              ") run past the data section of ", data_size,
                              " bytes: truncated or corrupt file"));
    }
    const size_t expected = DTypeBytes(info.dtype, elements);
    if (expected != info.end - info.begin) {
      return bad(absl::StrCat("dtype ", dtype_name, " x shape ", info.shape.ToString(), " is ",
                              expected, " bytes but data_offsets [", info.begin, ", ", info.end,
                              ") hold ", info.end - info.begin));
    }
    tensors_.push_back(std::move(info));
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Non-overlapping: each non-empty range starts at or after the previous end.
  size_t prev_end = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : tensors_) {
    if (t.begin == t.end) continue;
    if (prev != nullptr && t.begin < prev_end) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensors '", prev->name, "' [", prev->begin, ", ", prev->end,
                       ") and '", t.name, "' [", t.begin, ", ", t.end, ") overlap"));
    }
    prev_end = t.end;
    prev = &t;
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

TensorView SafetensorsFile::View(const TensorInfo& info) const {
  CHECK_LE(info.end, file_->size() - data_offset_);
  const uint8_t* p = file_->bytes().data() + data_offset_ + info.begin;
  return TensorView::Contiguous(const_cast<uint8_t*>(p), info.dtype, info.shape);
}

}  // namespace tandem
