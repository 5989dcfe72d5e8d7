#pragma once
// An owning device allocation (cudaMalloc / cudaFree), movable, never
// copied. Allocation failure throws CudaError naming the bytes asked for, so
// a node can refuse an assignment with the amount it lacked.
#include <cstddef>
#include <span>
#include <utility>

namespace tandem::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* As() const { return static_cast<T*>(data_); }
  size_t bytes() const { return bytes_; }

  // Synchronous copies of the whole buffer (tests, loading).
  void CopyFromHost(const void* src, size_t bytes);
  void CopyToHost(void* dst, size_t bytes) const;

  template <typename T>
  static DeviceBuffer FromHost(std::span<const T> values) {
    DeviceBuffer b(values.size_bytes());
    b.CopyFromHost(values.data(), values.size_bytes());
    return b;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaHostAlloc / cudaFreeHost), so copies to and
// from the device run asynchronously on a stream; portable: pinned for every
// device, so the ranks of a multi-GPU stage share one input buffer.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* As() const { return static_cast<T*>(data_); }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace tandem::cuda
