#pragma once
// Chunk messages (EchoMessage.chunk, ForwardRequest.chunk) as gRPC byte
// buffers, without copying payloads. Sending: the payload becomes a slice of
// its own, next to a small slice with the protobuf field headers, so gRPC
// writes it from the encoder's buffer. Receiving: the chunk is parsed in place
// and its payload listed as pieces of the received slices (a ChunkView), so
// the decoder reads it where it arrived. The bytes on the wire are exactly the
// protobuf encoding of the message: peers that use the generated stubs
// interoperate unchanged.
#include <string>
#include <vector>

#include "core/status.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "proto/tensor_codec.h"
#include "tandem/v1/common.pb.h"

namespace tandem {

// A message whose oneof field `field` is a TensorChunk, taking over the
// chunk's payload (no copy; freed when gRPC releases the buffer).
grpc::ByteBuffer ChunkMessageBuffer(int field, v1::TensorChunk&& chunk);
// The same, referring to the payload: the caller keeps `chunk` alive and
// unchanged until the peer has acknowledged the message.
grpc::ByteBuffer BorrowedChunkMessageBuffer(int field, const v1::TensorChunk& chunk);

// Any message, serialized (copied) by gRPC's protobuf serializer.
StatusOr<grpc::ByteBuffer> MessageBuffer(const google::protobuf::MessageLite& message);
// Parses a whole received buffer into `message` (copying).
Status ParseMessageBuffer(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message);

// A received message, split into its slices; the views into it stay valid as
// long as it lives.
class ReceivedMessage {
 public:
  // Takes the slices of `buffer` (references, no copy) and clears it.
  Status Reset(grpc::ByteBuffer& buffer);
  // True when the message consists of one field, `field`, holding a
  // TensorChunk; `*chunk` then views its payload in place. A malformed
  // message is an error; any other message returns false (parse it with
  // Parse).
  StatusOr<bool> AsChunk(int field, ChunkView* chunk) const;
  // Parses the message with protobuf (copying).
  Status Parse(google::protobuf::MessageLite* message) const;
  // The message as a buffer again, sharing the slices (to send it on).
  grpc::ByteBuffer Buffer() const;
  // Drops the slices; views into them become invalid.
  void Release();

 private:
  std::vector<grpc::Slice> slices_;
  size_t bytes_ = 0;
};

}  // namespace tandem
