#include "proto/echo_client.h"

#include <chrono>
#include <optional>
#include <thread>

#include "proto/chunk_wire.h"
#include "proto/frame_stream.h"
#include "proto/grpc_channel.h"
#include "proto/hello.h"
#include "proto/raw_stream.h"

namespace tandem {
namespace {

Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(static_cast<int>(s.error_code())),
                      absl::StrCat(what, ": ", s.error_message()));
}

// The stream carries byte buffers (chunk_wire.h): chunk payloads go to gRPC
// as slices of their own buffers instead of being serialized into new ones.
class GrpcEchoConnection final : public EchoConnection {
 public:
  explicit GrpcEchoConnection(std::string target)
      : target_(std::move(target)),
        channel_(MakeChannel(target_)),
        stream_(OpenNodeStream(*channel_, NodeStreamMethod::kEcho, &context_)) {}
  ~GrpcEchoConnection() override {
    if (!closed_) {
      context_.TryCancel();
      (void)stream_->Finish();
    }
  }

  Status Write(const v1::EchoMessage& m) override {
    ASSIGN_OR_RETURN(grpc::ByteBuffer buffer, MessageBuffer(m));
    return WriteBuffer(buffer);
  }
  Status WriteHead(const v1::EchoMessage& m) override {
    ASSIGN_OR_RETURN(grpc::ByteBuffer buffer, MessageBuffer(m));
    if (!stream_->Write(buffer, grpc::WriteOptions().set_buffer_hint())) return ClosedError("write");
    return absl::OkStatus();
  }
  Status WriteChunk(v1::TensorChunk&& chunk) override {
    grpc::ByteBuffer buffer = ChunkMessageBuffer(v1::EchoMessage::kChunkFieldNumber, std::move(chunk));
    return WriteBuffer(buffer);
  }
  Status WriteBorrowedChunk(const v1::TensorChunk& chunk) override {
    grpc::ByteBuffer buffer = BorrowedChunkMessageBuffer(v1::EchoMessage::kChunkFieldNumber, chunk);
    return WriteBuffer(buffer);
  }
  Status Read(v1::EchoMessage* m) override {
    grpc::ByteBuffer buffer;
    if (!stream_->Read(&buffer)) return ClosedError("read");
    return ParseMessageBuffer(buffer, m);
  }
  Status Close() override {
    closed_ = true;
    stream_->WritesDone();
    return FromGrpc(stream_->Finish(), absl::StrCat("echo stream to ", target_));
  }
  void Cancel() override { context_.TryCancel(); }
  void set_peer(const v1::Hello& h) { peer_ = h; }

 private:
  Status WriteBuffer(const grpc::ByteBuffer& buffer) {
    if (!stream_->Write(buffer)) return ClosedError("write");
    return absl::OkStatus();
  }
  // The stream broke: its final status says why.
  Status ClosedError(const std::string& op) {
    closed_ = true;
    grpc::Status s = stream_->Finish();
    if (s.ok()) {
      return absl::UnavailableError(absl::StrCat("echo stream to ", target_, " closed during ", op));
    }
    return FromGrpc(s, absl::StrCat("echo stream to ", target_));
  }

  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  grpc::ClientContext context_;
  std::unique_ptr<RawClientStream> stream_;
  bool closed_ = false;
};

// Reads replies until the frame's ack; decodes echoed chunks when asked.
StatusOr<EchoFrameResult> AwaitAck(EchoConnection& conn, v1::EchoMode mode, std::span<uint8_t> echo_dest) {
  std::optional<TensorDecoder> decoder;
  EchoFrameResult result;
  v1::EchoMessage in;
  while (true) {
    RETURN_IF_ERROR(conn.Read(&in));
    switch (in.kind_case()) {
      case v1::EchoMessage::kAck:
        if (!in.ack().error().empty()) {
          return absl::DataLossError(absl::StrCat("echo server refused the frame: ", in.ack().error()));
        }
        if (decoder.has_value()) RETURN_IF_ERROR(decoder->Finish());
        result.ack = in.ack();
        result.wire_bytes = in.ack().wire_bytes();
        return result;
      case v1::EchoMessage::kBegin:
        if (mode == v1::ECHO_MODE_ECHO && !echo_dest.empty()) {
          ASSIGN_OR_RETURN(TensorDecoder d, TensorDecoder::Create(in.begin().tensor(), echo_dest));
          decoder.emplace(std::move(d));
        }
        break;
      case v1::EchoMessage::kChunk:
        if (decoder.has_value()) RETURN_IF_ERROR(decoder->DecodeChunk(in.chunk()));
        break;
      default:
        return absl::DataLossError("echo: unexpected reply while waiting for an ack");
    }
  }
}

v1::EchoMessage BeginMessage(const v1::TensorHeader& header, v1::EchoMode mode) {
  v1::EchoMessage m;
  m.mutable_begin()->set_mode(mode);
  *m.mutable_begin()->mutable_tensor() = header;
  return m;
}

// The begin, then the chunks as they are encoded; the begin waits to go out
// with the first chunk.
Status SendFrame(EchoConnection& conn, const TensorEncoder& encoder, v1::EchoMode mode) {
  v1::EchoMessage begin = BeginMessage(encoder.header(), mode);
  if (encoder.num_chunks() == 0) return conn.Write(begin);
  RETURN_IF_ERROR(conn.WriteHead(begin));
  return StreamChunks(encoder,
                      [&](v1::TensorChunk& chunk) { return conn.WriteChunk(std::move(chunk)); });
}

}  // namespace

Status EchoConnection::WriteChunk(v1::TensorChunk&& chunk) {
  v1::EchoMessage m;
  m.mutable_chunk()->Swap(&chunk);  // no payload copy
  return Write(m);
}

Status EchoConnection::WriteBorrowedChunk(const v1::TensorChunk& chunk) {
  v1::EchoMessage m;
  *m.mutable_chunk() = chunk;
  return Write(m);
}

StatusOr<std::unique_ptr<EchoConnection>> ConnectGrpcEcho(const std::string& target,
                                                          const v1::Hello& mine) {
  auto conn = std::make_unique<GrpcEchoConnection>(target);
  v1::EchoMessage hello;
  *hello.mutable_hello() = mine;
  RETURN_IF_ERROR(conn->Write(hello));
  v1::EchoMessage reply;
  RETURN_IF_ERROR(conn->Read(&reply));
  if (reply.kind_case() != v1::EchoMessage::kHello) {
    return absl::DataLossError(absl::StrCat("echo server at ", target, " did not answer with a hello"));
  }
  RETURN_IF_ERROR(CheckHello(mine, reply.hello()));
  conn->set_peer(reply.hello());
  return std::unique_ptr<EchoConnection>(std::move(conn));
}

StatusOr<EchoFrameResult> EchoFrame(EchoConnection& conn, const TensorEncoder& encoder,
                                    v1::EchoMode mode, std::span<uint8_t> echo_dest) {
  // In echo mode the replies flow while we still write: read them on a
  // second thread so that neither side's flow control stalls the other.
  std::optional<StatusOr<EchoFrameResult>> echoed;
  std::thread reader;
  if (mode == v1::ECHO_MODE_ECHO) {
    reader = std::thread([&] { echoed.emplace(AwaitAck(conn, mode, echo_dest)); });
  }
  Status sent = SendFrame(conn, encoder, mode);
  if (reader.joinable()) {
    if (!sent.ok()) conn.Cancel();  // unblocks the reader
    reader.join();
    RETURN_IF_ERROR(sent);
    return std::move(*echoed);
  }
  RETURN_IF_ERROR(sent);
  return AwaitAck(conn, mode, echo_dest);
}

StatusOr<std::vector<v1::EchoMessage>> EncodeChunkMessages(const TensorEncoder& encoder) {
  std::vector<v1::EchoMessage> out(encoder.num_chunks());
  for (uint32_t i = 0; i < encoder.num_chunks(); ++i) {
    RETURN_IF_ERROR(encoder.EncodeChunk(i, out[i].mutable_chunk()));
  }
  return out;
}

StatusOr<EchoFrameResult> EchoEncoded(EchoConnection& conn, const v1::TensorHeader& header,
                                      const std::vector<v1::EchoMessage>& messages,
                                      v1::EchoMode mode) {
  v1::EchoMessage begin = BeginMessage(header, mode);
  if (messages.empty()) {
    RETURN_IF_ERROR(conn.Write(begin));
    return AwaitAck(conn, mode, {});
  }
  RETURN_IF_ERROR(conn.WriteHead(begin));
  for (const v1::EchoMessage& m : messages) {
    if (m.kind_case() == v1::EchoMessage::kChunk) {
      RETURN_IF_ERROR(conn.WriteBorrowedChunk(m.chunk()));  // `messages` outlives the ack
    } else {
      RETURN_IF_ERROR(conn.Write(m));
    }
  }
  return AwaitAck(conn, mode, {});
}

StatusOr<double> EchoPing(EchoConnection& conn) {
  v1::EchoMessage m;
  m.set_ping(42);
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(conn.Write(m));
  RETURN_IF_ERROR(conn.Read(&m));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (m.kind_case() != v1::EchoMessage::kPing || m.ping() != 42) {
    return absl::DataLossError("echo: ping answered with something else");
  }
  return s;
}

}  // namespace tandem
