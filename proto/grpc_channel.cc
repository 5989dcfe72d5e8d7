#include "proto/grpc_channel.h"

#include <malloc.h>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace tandem {
namespace {
// Activation frames are megabytes: start HTTP/2 flow control with a window
// that holds a whole chunk instead of growing it from 64 KiB, and use large
// HTTP/2 frames. With that fixed window the bandwidth-delay probe has nothing
// to tune, and its pings cost every data read a wakeup (8% of the CPU time
// of a 4 MiB frame on loopback). The write buffer bounds what a write with
// the buffer hint (a frame's begin) may hold back.
template <typename Args>
void ApplyLinkArguments(Args& args) {
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  args.SetInt(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 8 << 20);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
}
struct BuilderArgs {
  grpc::ServerBuilder& builder;
  void SetInt(const char* key, int value) { builder.AddChannelArgument(key, value); }
};

// A call that finds no connection is tried again, for about 1.1 s in
// all, so that one failed connect to a peer that is up does not fail it. Such
// failures are not only a peer's restart: Debian 12's gRPC (1.51) can report
// a connect that is still in progress as failed ("No such file or
// directory"), because it reads errno after calls that may overwrite it.
// gRPC tries a call again only while it has had no answer (the first response
// commits it), so a stream that has started is never replayed. The channel
// connects again 100 ms after a failure rather than gRPC's 1 s, so that the
// new connection comes within that window.
constexpr char kRetryServiceConfig[] = R"({"methodConfig": [{
  "name": [{}],
  "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "0.4s",
                  "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})";
constexpr int kReconnectBackoffMs = 100;
}  // namespace

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(kRetryServiceConfig);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, kReconnectBackoffMs);
  args.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  args.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  // A private channel per connection: streams of different links never share
  // one HTTP/2 connection's flow-control window.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  ApplyLinkArguments(args);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

void ConfigureServerBuilder(grpc::ServerBuilder& builder) {
  builder.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  BuilderArgs args{builder};
  ApplyLinkArguments(args);
  // gRPC sets SO_REUSEPORT by default: a second coordinator or node started on
  // a port another process of the same user listens on would bind too, and the
  // kernel would split the connections between them. Taken must mean refused.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
}

void RetainLargeBufferMemory() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest: bigger ones are still mapped
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

}  // namespace tandem
