#pragma once
// A whole file mapped read-only into memory. Pages are read from disk only
// when touched, so mapping a 16 GB checkpoint costs address space, not RAM.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>

#include "core/status.h"

namespace tandem {

class MappedFile {
 public:
  // Maps `path` read-only (private mapping). An empty file maps to an empty span.
  static StatusOr<std::unique_ptr<MappedFile>> Open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  MappedFile(std::filesystem::path path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Drops this process's hold on the pages wholly inside [data, data + n) of a
// MappedFile's mapping: they stop counting in its resident memory, and a
// later read brings them back from the file (usually still in the page
// cache). For memory copied out of the mapping that nothing reads there again.
void ReleaseMappedPages(const void* data, size_t n);

}  // namespace tandem
