#include "proto/echo_service.h"

#include <deque>
#include <mutex>

#include "grpcpp/server_builder.h"
#include "proto/chunk_wire.h"
#include "proto/echo_session.h"
#include "proto/grpc_channel.h"

namespace tandem {
namespace {

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  return static_cast<grpc::StatusCode>(static_cast<int>(code));
}

// One read and one write may be in flight at once; replies queue up in
// order. Reading pauses while too many replies wait (echo mode), so a peer
// that does not read cannot make the queue grow without bound.
class EchoStreamReactor final : public EchoReactor {
 public:
  EchoStreamReactor(const v1::Hello& mine, const DecodeLimits& limits) : session_(mine, limits) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    std::lock_guard lock(mu_);
    if (!ok) {
      reading_done_ = true;
      MaybeFinish(grpc::Status::OK);
      return;
    }
    Status st = Handle();
    if (!st.ok()) {
      reading_done_ = true;
      MaybeFinish(grpc::Status(ToGrpcCode(st.code()), std::string(st.message())));
      return;
    }
    StartNextWrite();
    if (out_.size() < kMaxQueued) {
      StartRead(&in_);
    } else {
      read_paused_ = true;
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    writing_ = false;
    out_.pop_front();
    if (!ok) {
      out_.clear();
      if (read_paused_) {
        read_paused_ = false;
        reading_done_ = true;
      }
      MaybeFinish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "echo: write failed"));
      return;
    }
    StartNextWrite();
    if (read_paused_ && out_.size() < kMaxQueued) {
      read_paused_ = false;
      StartRead(&in_);
    }
    if (finish_pending_) MaybeFinish(final_status_);
  }

  void OnDone() override { delete this; }

 private:
  static constexpr size_t kMaxQueued = 8;

  // Passes the message in `in_` to the session; chunks stay in their slices.
  Status Handle() {
    const auto reply = [this](v1::EchoMessage&& m) {
      StatusOr<grpc::ByteBuffer> buffer = MessageBuffer(m);
      CHECK(buffer.ok());  // serializing a message we built cannot fail
      out_.push_back(std::move(buffer).value());
    };
    RETURN_IF_ERROR(received_.Reset(in_));
    ChunkView chunk;
    ASSIGN_OR_RETURN(bool is_chunk, received_.AsChunk(v1::EchoMessage::kChunkFieldNumber, &chunk));
    Status st;
    if (is_chunk) {
      st = session_.HandleChunk(chunk, [&] { out_.push_back(received_.Buffer()); }, reply);
    } else {
      v1::EchoMessage message;
      st = received_.Parse(&message);
      if (st.ok()) st = session_.Handle(std::move(message), reply);
    }
    received_.Release();
    return st;
  }

  void StartNextWrite() {
    if (writing_ || out_.empty() || finished_) return;
    writing_ = true;
    StartWrite(&out_.front());
  }
  // Finishes once no write is in flight and reading has stopped.
  void MaybeFinish(grpc::Status status) {
    if (finished_) return;
    if (!finish_pending_) final_status_ = std::move(status);
    finish_pending_ = true;
    if (writing_ || !reading_done_) return;
    finished_ = true;
    Finish(final_status_);
  }

  std::mutex mu_;
  EchoSession session_;
  grpc::ByteBuffer in_;
  ReceivedMessage received_;
  std::deque<grpc::ByteBuffer> out_;
  bool writing_ = false;
  bool read_paused_ = false;
  bool reading_done_ = false;
  bool finish_pending_ = false;
  bool finished_ = false;
  grpc::Status final_status_;
};

}  // namespace

EchoReactor* NewEchoReactor(const v1::Hello& mine, const DecodeLimits& limits) {
  return new EchoStreamReactor(mine, limits);
}

RawStreamReactor* EchoService::NewEcho() { return NewEchoReactor(mine_, limits_); }

void GrpcEchoServer::Stop() {
  if (server != nullptr) service->StopServing(*server);
  server.reset();
  service.reset();
}

StatusOr<GrpcEchoServer> StartGrpcEchoServer(const std::string& address, const v1::Hello& mine) {
  GrpcEchoServer s;
  s.service = std::make_unique<EchoService>(mine);
  grpc::ServerBuilder builder;
  ConfigureServerBuilder(builder);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &s.port);
  s.service->AddTo(builder);
  s.server = builder.BuildAndStart();
  if (s.server == nullptr || s.port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", address));
  }
  s.service->StartServing();
  return s;
}

}  // namespace tandem
