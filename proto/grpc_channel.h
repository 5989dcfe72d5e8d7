#pragma once
// gRPC settings shared by every tandem channel and server: message size
// limits that fit the largest chunk, TCP settings for latency, and on
// channels a retry of calls that find no connection (grpc_channel.cc).
#include <memory>
#include <string>

#include "grpcpp/channel.h"
#include "grpcpp/server_builder.h"

namespace tandem {

// Largest single gRPC message tandem sends or accepts (a chunk plus header).
inline constexpr int kMaxGrpcMessageBytes = 80 << 20;

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);
void ConfigureServerBuilder(grpc::ServerBuilder& builder);

// Keeps the memory of freed large buffers in the process. With glibc's
// defaults every buffer of a megabyte or more (chunk payloads, gRPC's read
// buffers) is mapped afresh or its arena trimmed after use, so each frame
// faults its pages in again, which costs more than copying them. Retained
// memory is bounded by the peak in flight. Process-wide: call once at start.
void RetainLargeBufferMemory();

}  // namespace tandem
