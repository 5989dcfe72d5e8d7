#include "node/daemon/node_service.h"

#include <deque>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "proto/chunk_wire.h"
#include "proto/echo_service.h"
#include "proto/hello.h"

namespace tandem {

namespace {

grpc::Status ToGrpc(const Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// One Forward stream from the previous stage (or the coordinator). Messages
// arrive as byte buffers: a chunk is decoded where it arrived (chunk_wire.h),
// anything else parsed as a ForwardRequest.
class ForwardReactor final : public RawStreamReactor {
 public:
  explicit ForwardReactor(NodeService* service)
      : service_(service), outbox_(std::make_shared<Outbox>()) {
    outbox_->reactor = this;
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      outbox_->Close(grpc::Status::OK);
      return;
    }
    Status s = Handle();
    if (!s.ok()) {
      outbox_->Close(ToGrpc(s));
      return;
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override { outbox_->WriteDone(ok); }
  void OnCancel() override { outbox_->Close(grpc::Status::CANCELLED); }
  void OnDone() override {
    outbox_->Detach();
    delete this;
  }

 private:
  // Responses go out one write at a time; step replies arrive from other
  // threads and may outlive the reactor, so they hold the outbox, not it.
  struct Outbox {
    std::mutex mutex;
    ForwardReactor* reactor = nullptr;  // null after OnDone
    std::deque<grpc::ByteBuffer> queue;
    bool writing = false;
    bool closing = false;
    bool finished = false;
    int pending_steps = 0;
    grpc::Status status;

    void Push(const v1::ForwardResponse& response) {
      grpc::ByteBuffer buffer = Serialize(response);
      std::unique_lock lock(mutex);
      if (!reactor || finished) return;
      queue.push_back(std::move(buffer));
      StartNext(lock);
    }
    void StepAnswered(const v1::ForwardResponse& response) {
      grpc::ByteBuffer buffer = Serialize(response);
      std::unique_lock lock(mutex);
      --pending_steps;
      if (!reactor || finished) return;
      queue.push_back(std::move(buffer));
      StartNext(lock);
    }
    static grpc::ByteBuffer Serialize(const v1::ForwardResponse& response) {
      StatusOr<grpc::ByteBuffer> buffer = MessageBuffer(response);
      CHECK(buffer.ok());  // serializing a message we built cannot fail
      return std::move(buffer).value();
    }
    void WriteDone(bool ok) {
      std::unique_lock lock(mutex);
      writing = false;
      if (!queue.empty()) queue.pop_front();
      if (!ok) {
        queue.clear();
        closing = true;
        pending_steps = 0;  // nobody is listening any more
      }
      StartNext(lock);
    }
    void Close(grpc::Status s) {
      std::unique_lock lock(mutex);
      if (!closing) {
        closing = true;
        status = std::move(s);
      }
      StartNext(lock);
    }
    void Detach() {
      std::lock_guard lock(mutex);
      reactor = nullptr;
    }
    // Starts the next write, or finishes the call once closing with nothing
    // left to send and no step still computing.
    void StartNext(std::unique_lock<std::mutex>& lock) {
      if (!reactor || finished || writing) return;
      if (!queue.empty()) {
        writing = true;
        ForwardReactor* r = reactor;
        const grpc::ByteBuffer* msg = &queue.front();
        lock.unlock();
        r->StartWrite(msg);
        return;
      }
      if (closing && (pending_steps == 0 || !status.ok())) {
        finished = true;
        ForwardReactor* r = reactor;
        grpc::Status s = status;
        lock.unlock();
        r->Finish(s);
      }
    }
  };

  // A frame being received: its metadata and the decoder of its chunks.
  struct Incoming {
    v1::ForwardBegin begin;
    std::vector<float> hidden;
    std::optional<TensorDecoder> decoder;
    uint32_t chunks_seen = 0;
    Status error;
  };

  // Handles the message in `in_`; its slices are released before returning.
  Status Handle() {
    RETURN_IF_ERROR(received_.Reset(in_));
    ChunkView chunk;
    StatusOr<bool> is_chunk = received_.AsChunk(v1::ForwardRequest::kChunkFieldNumber, &chunk);
    Status s;
    if (!is_chunk.ok()) {
      s = is_chunk.status();
    } else if (*is_chunk) {
      s = incoming_ ? Chunk(chunk) : absl::InvalidArgumentError("a tensor chunk outside a frame");
    } else {
      v1::ForwardRequest request;
      s = received_.Parse(&request);
      if (s.ok()) s = Handle(request);
    }
    received_.Release();
    return s;
  }

  Status Handle(v1::ForwardRequest& request) {
    switch (request.kind_case()) {
      case v1::ForwardRequest::kHello: {
        if (got_hello_) return absl::InvalidArgumentError("hello sent twice");
        RETURN_IF_ERROR(CheckHello(service_->hello(), request.hello()));
        got_hello_ = true;
        v1::ForwardResponse r;
        *r.mutable_hello() = service_->hello();
        outbox_->Push(r);
        return absl::OkStatus();
      }
      case v1::ForwardRequest::kBegin:
        if (!got_hello_) return absl::FailedPreconditionError("a frame before the hello");
        if (incoming_) return absl::InvalidArgumentError("a frame began before the last ended");
        return Begin(std::move(*request.mutable_begin()));
      case v1::ForwardRequest::kChunk:
        // A chunk that AsChunk passed over (other fields beside it).
        if (!incoming_) return absl::InvalidArgumentError("a tensor chunk outside a frame");
        return Chunk(request.chunk());
      default:
        return absl::InvalidArgumentError("an empty Forward message");
    }
  }

  Status Begin(v1::ForwardBegin begin) {
    incoming_.emplace();
    incoming_->begin = std::move(begin);
    const v1::ForwardBegin& b = incoming_->begin;
    auto runtime = service_->runtime();
    if (!b.has_tensor() || b.tensor().num_chunks() == 0) {
      if (b.has_tensor() && b.tensor().raw_bytes() != 0) {
        incoming_->error = absl::InvalidArgumentError("a tensor header without chunks");
      }
      Submit();
      return absl::OkStatus();
    }
    if (!runtime) {
      incoming_->error = absl::FailedPreconditionError("this node has no shard loaded");
      return absl::OkStatus();
    }
    const StageOptions& opts = runtime->executor().options();
    const int64_t hidden = runtime->executor().spec().hidden_size;
    DecodeLimits limits;
    limits.max_raw_bytes = static_cast<uint64_t>(opts.max_batch_tokens) * hidden * sizeof(float);
    const v1::TensorHeader& h = b.tensor();
    Status s = ValidateHeader(h, limits);
    if (s.ok() && (h.dtype() != v1::DTYPE_F32 || h.shape_size() != 2 || h.shape(1) != hidden)) {
      s = absl::InvalidArgumentError(absl::StrCat("hidden states must be f32 [tokens, ", hidden,
                                                  "]"));
    }
    if (s.ok()) {
      incoming_->hidden.resize(h.raw_bytes() / sizeof(float));
      auto decoder = TensorDecoder::Create(
          h,
          std::span<uint8_t>(reinterpret_cast<uint8_t*>(incoming_->hidden.data()), h.raw_bytes()),
          limits);
      if (decoder.ok()) {
        incoming_->decoder.emplace(std::move(*decoder));
      } else {
        s = decoder.status();
      }
    }
    if (!s.ok()) {
      // Without a valid header the chunks cannot be counted: end the stream.
      return s;
    }
    return absl::OkStatus();
  }

  // `chunk`: a v1::TensorChunk or a ChunkView.
  template <typename ChunkT>
  Status Chunk(const ChunkT& chunk) {
    Incoming& in = *incoming_;
    ++in.chunks_seen;
    if (in.error.ok() && in.decoder) in.error = in.decoder->DecodeChunk(chunk);
    if (in.chunks_seen == in.begin.tensor().num_chunks()) {
      if (in.error.ok() && in.decoder) in.error = in.decoder->Finish();
      Submit();
    }
    return absl::OkStatus();
  }

  void Submit() {
    Incoming in = std::move(*incoming_);
    incoming_.reset();
    auto runtime = service_->runtime();
    if (in.error.ok() && !runtime) {
      in.error = absl::FailedPreconditionError("this node has no shard loaded");
    }
    {
      std::lock_guard lock(outbox_->mutex);
      ++outbox_->pending_steps;
    }
    std::shared_ptr<Outbox> outbox = outbox_;
    StepReply reply = [outbox](const v1::StepResult& result) {
      v1::ForwardResponse r;
      *r.mutable_result() = result;
      outbox->StepAnswered(r);
    };
    if (!in.error.ok()) {
      reply(StepError(in.begin, std::string(in.error.message())));
      return;
    }
    runtime->Submit(StepInput{std::move(in.begin), std::move(in.hidden), std::move(reply)});
  }

  NodeService* service_;
  std::shared_ptr<Outbox> outbox_;
  grpc::ByteBuffer in_;
  ReceivedMessage received_;
  bool got_hello_ = false;
  std::optional<Incoming> incoming_;
};

}  // namespace

NodeService::NodeService(v1::Hello hello, Loader loader)
    : hello_(std::move(hello)), loader_(std::move(loader)) {}

std::shared_ptr<StageRuntime> NodeService::runtime() const {
  std::lock_guard lock(mutex_);
  return runtime_;
}

void NodeService::set_runtime(std::shared_ptr<StageRuntime> runtime) {
  std::shared_ptr<StageRuntime> old;
  {
    std::lock_guard lock(mutex_);
    old = std::move(runtime_);
    runtime_ = std::move(runtime);
  }
  old.reset();  // outside the lock: stopping a runtime joins its threads
}

RawStreamReactor* NodeService::NewForward() { return new ForwardReactor(this); }

void NodeService::HandleReleaseSequences(const v1::ReleaseSequencesRequest& request,
                                         v1::ReleaseSequencesResponse* response, Done done) {
  Status hello = CheckHello(hello_, request.hello());
  if (!hello.ok()) {
    done(ToGrpc(hello));
    return;
  }
  if (auto runtime = this->runtime()) {
    runtime->Release({request.sequence_ids().begin(), request.sequence_ids().end()});
  }
  response->set_released(static_cast<uint32_t>(request.sequence_ids_size()));
  done(grpc::Status::OK);
}

void NodeService::HandleLoadShard(const v1::LoadShardRequest& request,
                                  v1::LoadShardResponse* response, Done done) {
  Status hello = CheckHello(hello_, request.hello());
  if (!hello.ok()) {
    done(ToGrpc(hello));
    return;
  }
  // Loading takes long; run it off the serving thread. The call keeps
  // `request` and `response` until `done`.
  std::thread([this, &request, response, done = std::move(done)] {
    *response = loader_(request.assignment());
    done(grpc::Status::OK);
  }).detach();
}

RawStreamReactor* NodeService::NewEcho() { return NewEchoReactor(hello_, DecodeLimits{}); }

}  // namespace tandem
