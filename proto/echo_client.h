#pragma once
// Client side of the Echo stream over either transport: an EchoConnection
// moves EchoMessages; the functions below run one frame or one ping over it.
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "proto/tensor_codec.h"
#include "tandem/v1/node.pb.h"

namespace tandem {

// One open Echo stream whose hello exchange has succeeded. Not thread-safe,
// except that one thread may Write while another Reads.
class EchoConnection {
 public:
  virtual ~EchoConnection() = default;
  virtual Status Write(const v1::EchoMessage& message) = 0;
  // Sends a message that another write follows at once (a frame's begin):
  // the transport may hold it back to send both together.
  virtual Status WriteHead(const v1::EchoMessage& message) { return Write(message); }
  // Sends a chunk message, taking over the chunk's payload (gRPC sends it
  // from that buffer, without a copy).
  virtual Status WriteChunk(v1::TensorChunk&& chunk);
  // Sends a chunk message whose payload the caller keeps alive and
  // unchanged until the frame's ack has been read.
  virtual Status WriteBorrowedChunk(const v1::TensorChunk& chunk);
  virtual Status Read(v1::EchoMessage* message) = 0;
  // Half-closes and waits for the server's final status.
  virtual Status Close() = 0;
  // Aborts the stream; a blocked Read or Write returns an error.
  virtual void Cancel() = 0;
  // The server's hello.
  const v1::Hello& peer() const { return peer_; }

 protected:
  v1::Hello peer_;
};

// Opens Node.Echo on `target` ("host:port") and exchanges hellos.
StatusOr<std::unique_ptr<EchoConnection>> ConnectGrpcEcho(const std::string& target,
                                                          const v1::Hello& mine);

struct EchoFrameResult {
  v1::EchoAck ack;
  uint64_t wire_bytes = 0;
};

// Sends `encoder`'s frame with `mode`, encoding chunk k+1 while chunk k is
// written, and waits for the ack. In ECHO_MODE_ECHO the returned chunks are
// decoded into `echo_dest` ([raw_bytes]). A frame the server refused comes
// back as an error.
StatusOr<EchoFrameResult> EchoFrame(EchoConnection& conn, const TensorEncoder& encoder,
                                    v1::EchoMode mode, std::span<uint8_t> echo_dest = {});

// Sends a frame encoded in advance: `messages` holds one EchoMessage per
// chunk (kind chunk), e.g. from EncodeChunkMessages.
StatusOr<EchoFrameResult> EchoEncoded(EchoConnection& conn, const v1::TensorHeader& header,
                                      const std::vector<v1::EchoMessage>& messages,
                                      v1::EchoMode mode);
StatusOr<std::vector<v1::EchoMessage>> EncodeChunkMessages(const TensorEncoder& encoder);

// Round trip of a tiny message, in seconds.
StatusOr<double> EchoPing(EchoConnection& conn);

}  // namespace tandem
