#pragma once
// Test helper for gRPC byte buffers.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "grpcpp/support/byte_buffer.h"

namespace tandem::testing {

// The bytes of a buffer, however it is sliced.
inline std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

}  // namespace tandem::testing
