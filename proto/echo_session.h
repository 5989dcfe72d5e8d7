#pragma once
// Server side of one Echo stream, independent of the transport (gRPC or raw
// TCP): checks the hello, then receives frames (EchoBegin + chunks) and
// answers per the frame's mode. Not thread-safe: one per stream.
#include <chrono>
#include <functional>
#include <optional>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "proto/tensor_codec.h"
#include "tandem/v1/node.pb.h"

namespace tandem {

class EchoSession {
 public:
  using Reply = std::function<void(v1::EchoMessage&& message)>;
  EchoSession(v1::Hello mine, DecodeLimits limits) : mine_(std::move(mine)), limits_(limits) {}

  // Handles one incoming message, emitting replies through `reply` in order.
  // A non-OK status ends the stream (bad hello, protocol violation); problems
  // with a frame's content are reported in its EchoAck instead.
  Status Handle(v1::EchoMessage&& in, const Reply& reply);
  // The same for a chunk message viewed where it arrived. `echo` is called,
  // before any reply that follows, when the chunk must go back unchanged
  // (the transport sends the message as received).
  Status HandleChunk(const ChunkView& chunk, const std::function<void()>& echo,
                     const Reply& reply);

 private:
  void FinishFrame(const Reply& reply);

  v1::Hello mine_;
  DecodeLimits limits_;
  bool greeted_ = false;
  // The frame in progress.
  bool in_frame_ = false;
  v1::EchoMode mode_ = v1::ECHO_MODE_ACK;
  uint32_t expected_chunks_ = 0;
  uint32_t received_chunks_ = 0;
  uint64_t wire_bytes_ = 0;
  double decode_s_ = 0;
  std::string error_;
  std::vector<uint8_t> buffer_;  // [raw_bytes], decode mode only
  std::optional<TensorDecoder> decoder_;
};

}  // namespace tandem
