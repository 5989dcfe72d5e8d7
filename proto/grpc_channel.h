#pragma once
// gRPC settings shared by every tandem channel and server: message size
// limits that fit the largest chunk, and TCP settings for latency.
#include <memory>
#include <string>

#include "grpcpp/channel.h"
#include "grpcpp/server_builder.h"

namespace tandem {

// Largest single gRPC message tandem sends or accepts (a chunk plus header).
inline constexpr int kMaxGrpcMessageBytes = 80 << 20;

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);
void ConfigureServerBuilder(grpc::ServerBuilder& builder);

}  // namespace tandem
