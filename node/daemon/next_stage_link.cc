#include "node/daemon/next_stage_link.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "proto/frame_stream.h"
#include "proto/grpc_channel.h"
#include "proto/hello.h"

namespace tandem {

v1::StepResult StepError(const v1::ForwardBegin& begin, const std::string& message) {
  v1::StepResult r;
  r.set_step_id(begin.step_id());
  r.set_micro_batch_id(begin.micro_batch_id());
  r.set_error(message);
  return r;
}

struct NextStageLink::Stream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ForwardRequest, v1::ForwardResponse>> rw;
  std::atomic<bool> broken{false};
};

NextStageLink::NextStageLink(std::string address, v1::Hello hello, CodecOptions codec)
    : address_(std::move(address)),
      hello_(std::move(hello)),
      codec_(codec),
      stub_(v1::Node::NewStub(MakeChannel(address_))) {
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
  stream->rw = stub_->Forward(&stream->context);
  v1::ForwardRequest hello;
  *hello.mutable_hello() = hello_;
  v1::ForwardResponse answer;
  if (!stream->rw->Write(hello) || !stream->rw->Read(&answer) || !answer.has_hello()) {
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
  if (!stream_->rw->Write(request)) return absl::UnavailableError("the stream closed");
  uint64_t wire = 0;
  Status s = StreamChunks(encoder, [&](v1::TensorChunk& chunk) -> Status {
    wire += chunk.payload().size();
    v1::ForwardRequest msg;
    msg.mutable_chunk()->Swap(&chunk);
    if (!stream_->rw->Write(msg)) return absl::UnavailableError("the stream closed");
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
  while (stream->rw->Read(&response)) {
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
