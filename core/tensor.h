#pragma once
// A non-owning tensor view and an owning 64-byte aligned buffer.
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>

#include "core/check.h"
#include "core/dtype.h"

namespace tandem {

inline constexpr int kMaxRank = 4;
inline constexpr size_t kBufferAlignment = 64;

// Shape of up to kMaxRank dimensions, outermost first.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(std::span<const int64_t> dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const {
    DCHECK(i >= 0 && i < rank_);
    return dims_[i];
  }
  int64_t& operator[](int i) {
    DCHECK(i >= 0 && i < rank_);
    return dims_[i];
  }
  int64_t NumElements() const;
  std::span<const int64_t> dims() const { return {dims_.data(), static_cast<size_t>(rank_)}; }
  std::string ToString() const;  // "[2, 3]"
  bool operator==(const Shape& o) const;

 private:
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

// Non-owning view: dtype, shape, strides (in elements) and a pointer. The
// memory is owned elsewhere and must outlive the view.
struct TensorView {
  DType dtype = DType::kF32;
  Shape shape;
  std::array<int64_t, kMaxRank> strides{};  // elements; contiguous row-major by default
  void* data = nullptr;

  static TensorView Contiguous(void* data, DType dtype, Shape shape);
  bool IsContiguous() const;
  int64_t NumElements() const { return shape.NumElements(); }
  size_t NumBytes() const { return DTypeBytes(dtype, static_cast<size_t>(NumElements())); }
  template <typename T>
  T* As() const {
    return static_cast<T*>(data);
  }
  // Rows [begin, end) of the outermost dimension (requires a contiguous view).
  TensorView SliceRows(int64_t begin, int64_t end) const;
};

// Owning, 64-byte aligned, uninitialised byte buffer. Move-only.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& o) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <typename T>
  T* As() const {
    return static_cast<T*>(data_);
  }
  void Zero();

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// An owning tensor: an AlignedBuffer with its contiguous view.
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape);
  const TensorView& view() const { return view_; }
  DType dtype() const { return view_.dtype; }
  const Shape& shape() const { return view_.shape; }
  void* data() const { return view_.data; }
  template <typename T>
  T* As() const {
    return static_cast<T*>(view_.data);
  }
  size_t NumBytes() const { return view_.NumBytes(); }

 private:
  AlignedBuffer buffer_;
  TensorView view_;
};

}  // namespace tandem
