#include "proto/raw_stream.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "tandem/v1/node.grpc.pb.h"

namespace tandem {
namespace {

// "/tandem.v1.Node/<method>". gRPC keeps the pointer for the channel's
// registered-method table, so the strings live as long as the process.
const char* MethodPath(NodeStreamMethod method) {
  static const std::string* const forward =
      new std::string(absl::StrCat("/", v1::Node::service_full_name(), "/Forward"));
  static const std::string* const echo =
      new std::string(absl::StrCat("/", v1::Node::service_full_name(), "/Echo"));
  switch (method) {
    case NodeStreamMethod::kForward:
      return forward->c_str();
    case NodeStreamMethod::kEcho:
      return echo->c_str();
  }
  return nullptr;  // unreachable: every enumerator is handled above
}

}  // namespace

std::unique_ptr<RawClientStream> OpenNodeStream(grpc::Channel& channel, NodeStreamMethod method,
                                                grpc::ClientContext* context) {
  const grpc::internal::RpcMethod rpc(MethodPath(method),
                                      grpc::internal::RpcMethod::BIDI_STREAMING);
  return std::unique_ptr<RawClientStream>(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          &channel, rpc, context));
}

}  // namespace tandem
