#include "core/tensor.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(TensorTest, BufferIsAlignedAndMovable) {
  AlignedBuffer a(1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % kBufferAlignment, 0u);
  void* p = a.data();
  AlignedBuffer b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.size(), 1000u);
}

TEST(TensorTest, ContiguousViewAndSlice) {
  Tensor t(DType::kF32, Shape{3, 4});
  EXPECT_EQ(t.NumBytes(), 48u);
  for (int i = 0; i < 12; ++i) t.As<float>()[i] = static_cast<float>(i);
  EXPECT_TRUE(t.view().IsContiguous());
  EXPECT_EQ(t.view().strides[0], 4);
  TensorView rows = t.view().SliceRows(1, 3);
  EXPECT_EQ(rows.shape, (Shape{2, 4}));
  EXPECT_EQ(rows.As<float>()[0], 4.0f);
  EXPECT_EQ(t.shape().ToString(), "[3, 4]");
}

TEST(TensorTest, Int4ViewCountsHalfBytes) {
  Tensor t(DType::kI4, Shape{4, 6});
  EXPECT_EQ(t.NumBytes(), 12u);
  TensorView rows = t.view().SliceRows(2, 4);
  EXPECT_EQ(static_cast<char*>(rows.data) - static_cast<char*>(t.data()), 6);
}

}  // namespace
}  // namespace tandem
