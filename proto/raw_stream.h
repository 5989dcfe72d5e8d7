#pragma once
// Client streams of the Node service carrying byte buffers instead of
// messages, so that chunk payloads go out as slices of their own buffers
// (chunk_wire.h). What the generated stub opens, with buffers in place of
// messages: the bytes on the wire are the same.
#include <memory>

#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/sync_stream.h"

namespace tandem {

using RawClientStream = grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;

// The Node service's bidi-streaming methods.
enum class NodeStreamMethod { kForward, kEcho };

// Starts the call; `context` must outlive the stream.
std::unique_ptr<RawClientStream> OpenNodeStream(grpc::Channel& channel, NodeStreamMethod method,
                                                grpc::ClientContext* context);

}  // namespace tandem
