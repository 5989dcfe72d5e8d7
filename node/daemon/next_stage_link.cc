#include "node/daemon/next_stage_link.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "proto/chunk_wire.h"
#include "proto/frame_stream.h"
#include "proto/grpc_channel.h"
#include "proto/hello.h"
#include "proto/raw_stream.h"

namespace tandem {

v1::StepResult StepError(const v1::ForwardBegin& begin, const std::string& message) {
  v1::StepResult r;
  r.set_step_id(begin.step_id());
  r.set_micro_batch_id(begin.micro_batch_id());
  r.set_error(message);
  return r;
}

// Node.Forward carrying byte buffers: requests are serialized here (chunks
// without copying their payloads), responses parsed here.
struct NextStageLink::Stream {
  grpc::ClientContext context;
  std::unique_ptr<RawClientStream> rw;
  std::atomic<bool> broken{false};

  bool Write(const v1::ForwardRequest& request, grpc::WriteOptions options = {}) {
    StatusOr<grpc::ByteBuffer> buffer = MessageBuffer(request);
    CHECK(buffer.ok());  // serializing a message we built cannot fail
    return rw->Write(*buffer, options);
  }
  bool WriteChunk(v1::TensorChunk&& chunk) {
    grpc::ByteBuffer buffer =
        ChunkMessageBuffer(v1::ForwardRequest::kChunkFieldNumber, std::move(chunk));
    return rw->Write(buffer);
  }
  // False when the stream has ended or sent something unparsable.
  bool Read(v1::ForwardResponse* response) {
    grpc::ByteBuffer buffer;
    if (!rw->Read(&buffer)) return false;
    Status s = ParseMessageBuffer(buffer, response);
    if (!s.ok()) {
      spdlog::warn("next stage: {}", std::string(s.message()));
      context.TryCancel();
      return false;
    }
    return true;
  }
};

NextStageLink::NextStageLink(std::string address, v1::Hello hello, CodecOptions codec)
    : address_(std::move(address)),
      hello_(std::move(hello)),
      codec_(codec),
      channel_(MakeChannel(address_)) {
  writer_ = std::thread([this] { WriterLoop(); });
}

NextStageLink::~NextStageLink() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  writer_.join();
  if (stream_) stream_->context.TryCancel();
  if (reader_.joinable()) reader_.join();
  FailPending("the stage is shutting down");
}

void NextStageLink::Send(v1::ForwardBegin begin, std::vector<float> hidden, int64_t hidden_size,
                         StepReply reply) {
  {
    std::lock_guard lock(mutex_);
    pending_[begin.step_id()] = {begin, std::move(reply)};
    queue_.push_back(Item{std::move(begin), std::move(hidden), hidden_size});
  }
  cv_.notify_all();
}

Status NextStageLink::Connect() {
  auto stream = std::make_shared<Stream>();
  stream->context.set_wait_for_ready(false);
  stream->rw = OpenNodeStream(*channel_, NodeStreamMethod::kForward, &stream->context);
  v1::ForwardRequest hello;
  *hello.mutable_hello() = hello_;
  v1::ForwardResponse answer;
  if (!stream->Write(hello) || !stream->Read(&answer) || !answer.has_hello()) {
    grpc::Status s = stream->rw->Finish();
    return absl::UnavailableError(absl::StrCat("cannot open a stream to the next stage at ",
                                               address_, ": ", s.error_message()));
  }
  RETURN_IF_ERROR(CheckHello(hello_, answer.hello()));
  if (reader_.joinable()) reader_.join();  // the previous stream's reader has ended
  stream_ = stream;
  reader_ = std::thread([this, stream] { ReaderLoop(stream); });
  return absl::OkStatus();
}

Status NextStageLink::WriteStep(Item& item) {
  const int64_t tokens = item.hidden_size ? static_cast<int64_t>(item.hidden.size()) / item.hidden_size : 0;
  TensorView view = TensorView::Contiguous(item.hidden.data(), DType::kF32,
                                           Shape{tokens, item.hidden_size});
  ASSIGN_OR_RETURN(TensorEncoder encoder, TensorEncoder::Create(view, codec_));
  *item.begin.mutable_tensor() = encoder.header();
  v1::ForwardRequest request;
  *request.mutable_begin() = std::move(item.begin);
  // With chunks to follow, the begin may wait in gRPC's buffer to go out
  // with the first one.
  grpc::WriteOptions options;
  if (encoder.num_chunks() > 0) options.set_buffer_hint();
  if (!stream_->Write(request, options)) return absl::UnavailableError("the stream closed");
  uint64_t wire = 0;
  Status s = StreamChunks(encoder, [&](v1::TensorChunk& chunk) -> Status {
    wire += chunk.payload().size();
    if (!stream_->WriteChunk(std::move(chunk))) {
      return absl::UnavailableError("the stream closed");
    }
    return absl::OkStatus();
  });
  raw_bytes_ += view.NumBytes();
  wire_bytes_ += wire;
  return s;
}

void NextStageLink::WriterLoop() {
  while (true) {
    Item item;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    const uint64_t step = item.begin.step_id();
    Status s = absl::OkStatus();
    if (!stream_ || stream_->broken) s = Connect();
    if (s.ok()) s = WriteStep(item);
    if (!s.ok()) {
      spdlog::warn("next stage {}: {}", address_, std::string(s.message()));
      if (stream_) {
        stream_->broken = true;
        stream_->context.TryCancel();
      }
      std::pair<v1::ForwardBegin, StepReply> entry;
      {
        std::lock_guard lock(mutex_);
        auto it = pending_.find(step);
        if (it == pending_.end()) continue;  // already failed by the reader
        entry = std::move(it->second);
        pending_.erase(it);
      }
      entry.second(StepError(entry.first, absl::StrCat("next stage ", address_, ": ",
                                                       s.message())));
    }
  }
}

void NextStageLink::ReaderLoop(std::shared_ptr<Stream> stream) {
  v1::ForwardResponse response;
  while (stream->Read(&response)) {
    if (!response.has_result()) continue;
    const v1::StepResult& result = response.result();
    StepReply reply;
    {
      std::lock_guard lock(mutex_);
      auto it = pending_.find(result.step_id());
      if (it == pending_.end()) continue;  // unknown or already failed: opaque ids, ignore
      reply = std::move(it->second.second);
      pending_.erase(it);
    }
    reply(result);
  }
  stream->broken = true;
  grpc::Status status = stream->rw->Finish();
  FailPending(absl::StrCat("next stage ", address_, " failed: ",
                           status.ok() ? "stream closed" : status.error_message()));
}

void NextStageLink::FailPending(const std::string& message) {
  std::unordered_map<uint64_t, std::pair<v1::ForwardBegin, StepReply>> failed;
  {
    std::lock_guard lock(mutex_);
    failed.swap(pending_);
    queue_.clear();
  }
  for (auto& [step, entry] : failed) entry.second(StepError(entry.first, message));
}

}  // namespace tandem
