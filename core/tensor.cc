#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace tandem {

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::span(dims.begin(), dims.size())) {}

Shape::Shape(std::span<const int64_t> dims) {
  CHECK_LE(dims.size(), static_cast<size_t>(kMaxRank));
  rank_ = static_cast<int>(dims.size());
  for (int i = 0; i < rank_; ++i) {
    CHECK_GE(dims[i], 0);
    dims_[i] = dims[i];
  }
}

int64_t Shape::NumElements() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= dims_[i];
  return n;
}

std::string Shape::ToString() const {
  std::string s = "[";
  for (int i = 0; i < rank_; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims_[i]);
  }
  return s + "]";
}

bool Shape::operator==(const Shape& o) const {
  if (rank_ != o.rank_) return false;
  for (int i = 0; i < rank_; ++i)
    if (dims_[i] != o.dims_[i]) return false;
  return true;
}

TensorView TensorView::Contiguous(void* data, DType dtype, Shape shape) {
  TensorView v;
  v.dtype = dtype;
  v.shape = shape;
  v.data = data;
  int64_t stride = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    v.strides[i] = stride;
    stride *= shape[i];
  }
  return v;
}

bool TensorView::IsContiguous() const {
  int64_t stride = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[i] != stride) return false;
    stride *= shape[i];
  }
  return true;
}

TensorView TensorView::SliceRows(int64_t begin, int64_t end) const {
  CHECK(IsContiguous());
  CHECK(shape.rank() >= 1 && begin >= 0 && begin <= end && end <= shape[0]);
  CHECK_MSG(dtype != DType::kI4 || (strides[0] % 2 == 0), "int4 rows must be whole bytes");
  TensorView v = *this;
  v.shape[0] = end - begin;
  v.data = static_cast<char*>(data) + DTypeBytes(dtype, static_cast<size_t>(begin * strides[0]));
  return v;
}

AlignedBuffer::AlignedBuffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  size_t rounded = (bytes + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
  data_ = std::aligned_alloc(kBufferAlignment, rounded);
  if (data_ == nullptr) throw std::bad_alloc();
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    std::free(data_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void AlignedBuffer::Zero() {
  if (data_) std::memset(data_, 0, size_);
}

Tensor::Tensor(DType dtype, Shape shape)
    : buffer_(DTypeBytes(dtype, static_cast<size_t>(shape.NumElements()))),
      view_(TensorView::Contiguous(buffer_.data(), dtype, shape)) {}

}  // namespace tandem
