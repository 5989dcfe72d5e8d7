#include "proto/node_server.h"

#include <optional>
#include <utility>

#include "core/check.h"

namespace tandem {

// What the serving thread takes off the queue.
class LoopTag {
 public:
  virtual void Proceed(bool ok) = 0;

 protected:
  ~LoopTag() = default;
};

namespace {

// Answers a method the service does not implement.
class UnimplementedReactor final : public RawStreamReactor {
 public:
  UnimplementedReactor() { Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "")); }
  void OnReadDone(bool /*ok*/) override {}
  void OnDone() override { delete this; }
};

}  // namespace

// One accepted stream: the async call, its reactor and its operations in
// flight. Deletes itself after OnDone.
class StreamCall {
 public:
  using Factory = RawStreamReactor* (NodeServiceBase::*)();
  using Request = void (NodeServiceBase::*)();

  StreamCall(NodeServiceBase* service, Factory factory, Request accept_next)
      : service_(service), factory_(factory), accept_next_(accept_next) {
    service_->CallCreated();
    context_.AsyncNotifyWhenDone(&done_tag_);
  }
  ~StreamCall() { service_->CallDeleted(); }
  StreamCall(const StreamCall&) = delete;
  StreamCall& operator=(const StreamCall&) = delete;
  grpc::ServerContext* context() { return &context_; }
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream() { return &stream_; }
  void* accept_tag() { return &accept_tag_; }

  void Read(grpc::ByteBuffer* message) {
    {
      std::lock_guard lock(mutex_);
      CHECK(!reading_);
      reading_ = true;
    }
    stream_.Read(message, &read_tag_);
  }
  void Write(const grpc::ByteBuffer* message) {
    {
      std::lock_guard lock(mutex_);
      CHECK(!writing_);
      writing_ = true;
    }
    stream_.Write(*message, &write_tag_);
  }
  void Finish(grpc::Status status) {
    {
      std::lock_guard lock(mutex_);
      CHECK(!finish_started_);
      finish_started_ = true;
    }
    stream_.Finish(status, &finish_tag_);
  }

 private:
  enum Kind { kAccept, kRead, kWrite, kFinish, kDone };
  class Tag final : public LoopTag {
   public:
    Tag(StreamCall* call, Kind kind) : call_(call), kind_(kind) {}
    void Proceed(bool ok) override { call_->Proceed(kind_, ok); }

   private:
    StreamCall* call_;
    Kind kind_;
  };

  void Proceed(Kind kind, bool ok) {
    switch (kind) {
      case kAccept:
        if (!ok) {  // the server is shutting down: no call came
          delete this;
          return;
        }
        (service_->*accept_next_)();
        Bind();
        break;
      case kRead:
        Clear(&reading_);
        reactor_->OnReadDone(ok);
        break;
      case kWrite:
        Clear(&writing_);
        reactor_->OnWriteDone(ok);
        break;
      case kFinish:
        Clear(&finish_done_, true);
        break;
      case kDone:
        Clear(&done_, true);
        if (context_.IsCancelled()) reactor_->OnCancel();
        break;
    }
    MaybeEnd();
  }

  // Hands the call to a new reactor, starting what its constructor asked for.
  void Bind() {
    reactor_ = (service_->*factory_)();
    if (reactor_ == nullptr) reactor_ = new UnimplementedReactor();
    reactor_->call_ = this;
    grpc::ByteBuffer* read = std::exchange(reactor_->early_read_, nullptr);
    std::optional<grpc::Status> finish = std::exchange(reactor_->early_finish_, std::nullopt);
    if (read != nullptr) Read(read);
    if (finish.has_value()) Finish(std::move(*finish));
  }

  void Clear(bool* flag, bool value = false) {
    std::lock_guard lock(mutex_);
    *flag = value;
  }

  void MaybeEnd() {
    {
      std::lock_guard lock(mutex_);
      if (ended_ || !done_ || !finish_done_ || reading_ || writing_) return;
      ended_ = true;
    }
    reactor_->OnDone();
    delete this;
  }

  NodeServiceBase* service_;
  Factory factory_;
  Request accept_next_;
  grpc::ServerContext context_;
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer> stream_{&context_};
  RawStreamReactor* reactor_ = nullptr;
  Tag accept_tag_{this, kAccept};
  Tag read_tag_{this, kRead};
  Tag write_tag_{this, kWrite};
  Tag finish_tag_{this, kFinish};
  Tag done_tag_{this, kDone};

  std::mutex mutex_;
  bool reading_ = false;
  bool writing_ = false;
  bool finish_started_ = false;
  bool finish_done_ = false;
  bool done_ = false;
  bool ended_ = false;
};

// One unary call: accepted, handled, answered; deletes itself once the
// answer has gone.
template <typename Request, typename Response>
class UnaryCall final : public LoopTag {
 public:
  using Handler = std::function<void(UnaryCall*)>;
  UnaryCall(NodeServiceBase* service, Handler on_accept)
      : service_(service), on_accept_(std::move(on_accept)) {
    service_->CallCreated();
  }
  ~UnaryCall() { service_->CallDeleted(); }
  UnaryCall(const UnaryCall&) = delete;
  UnaryCall& operator=(const UnaryCall&) = delete;

  void Proceed(bool ok) override {
    if (!accepted_ && ok) {
      accepted_ = true;
      on_accept_(this);
      return;
    }
    delete this;  // answered, or no call came (shutdown)
  }
  NodeServiceBase::Done Answer() {
    return [this](grpc::Status status) { responder.Finish(response, status, this); };
  }

  grpc::ServerContext context;
  Request request;
  Response response;
  grpc::ServerAsyncResponseWriter<Response> responder{&context};

 private:
  NodeServiceBase* service_;
  Handler on_accept_;
  bool accepted_ = false;
};

void RawStreamReactor::StartRead(grpc::ByteBuffer* message) {
  if (call_ == nullptr) {
    CHECK(early_read_ == nullptr);
    early_read_ = message;
    return;
  }
  call_->Read(message);
}

void RawStreamReactor::StartWrite(const grpc::ByteBuffer* message) {
  CHECK(call_ != nullptr);  // not from the constructor
  call_->Write(message);
}

void RawStreamReactor::Finish(grpc::Status status) {
  if (call_ == nullptr) {
    CHECK(!early_finish_.has_value());
    early_finish_ = std::move(status);
    return;
  }
  call_->Finish(std::move(status));
}

NodeServiceBase::~NodeServiceBase() { StopServing(); }

void NodeServiceBase::HandleReleaseSequences(const v1::ReleaseSequencesRequest& /*request*/,
                                             v1::ReleaseSequencesResponse* /*response*/,
                                             Done done) {
  done(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, ""));
}

void NodeServiceBase::HandleLoadShard(const v1::LoadShardRequest& /*request*/,
                                      v1::LoadShardResponse* /*response*/, Done done) {
  done(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, ""));
}

void NodeServiceBase::AddTo(grpc::ServerBuilder& builder) {
  CHECK(cq_ == nullptr);
  builder.RegisterService(this);
  cq_ = builder.AddCompletionQueue();
}

void NodeServiceBase::StartServing() {
  CHECK(cq_ != nullptr && !thread_.joinable());
  AcceptForward();
  AcceptEcho();
  AcceptReleaseSequences();
  AcceptLoadShard();
  thread_ = std::thread([cq = cq_.get()] {
    void* tag = nullptr;
    bool ok = false;
    while (cq->Next(&tag, &ok)) static_cast<LoopTag*>(tag)->Proceed(ok);
  });
}

void NodeServiceBase::StopServing() {
  if (cq_ == nullptr) return;
  {
    // No operation may start on the queue once it is shut down.
    std::unique_lock lock(calls_mutex_);
    calls_cv_.wait(lock, [&] { return live_calls_ == 0 || !thread_.joinable(); });
  }
  cq_->Shutdown();
  if (thread_.joinable()) {
    thread_.join();
  } else {
    void* tag = nullptr;
    bool ok = false;
    while (cq_->Next(&tag, &ok)) static_cast<LoopTag*>(tag)->Proceed(ok);
  }
  cq_.reset();
}

void NodeServiceBase::StopServing(grpc::Server& server,
                                  std::optional<std::chrono::system_clock::time_point> deadline) {
  if (deadline.has_value()) {
    server.Shutdown(*deadline);
  } else {
    server.Shutdown();
  }
  StopServing();
}

void NodeServiceBase::CallCreated() {
  std::lock_guard lock(calls_mutex_);
  ++live_calls_;
}

void NodeServiceBase::CallDeleted() {
  std::lock_guard lock(calls_mutex_);
  if (--live_calls_ == 0) calls_cv_.notify_all();
}

void NodeServiceBase::AcceptForward() {
  auto* call = new StreamCall(this, &NodeServiceBase::NewForward, &NodeServiceBase::AcceptForward);
  RequestForward(call->context(), call->stream(), cq_.get(), cq_.get(), call->accept_tag());
}

void NodeServiceBase::AcceptEcho() {
  auto* call = new StreamCall(this, &NodeServiceBase::NewEcho, &NodeServiceBase::AcceptEcho);
  RequestEcho(call->context(), call->stream(), cq_.get(), cq_.get(), call->accept_tag());
}

void NodeServiceBase::AcceptReleaseSequences() {
  using Call = UnaryCall<v1::ReleaseSequencesRequest, v1::ReleaseSequencesResponse>;
  auto* call = new Call(this, [this](Call* c) {
    AcceptReleaseSequences();
    HandleReleaseSequences(c->request, &c->response, c->Answer());
  });
  RequestReleaseSequences(&call->context, &call->request, &call->responder, cq_.get(), cq_.get(),
                          call);
}

void NodeServiceBase::AcceptLoadShard() {
  using Call = UnaryCall<v1::LoadShardRequest, v1::LoadShardResponse>;
  auto* call = new Call(this, [this](Call* c) {
    AcceptLoadShard();
    HandleLoadShard(c->request, &c->response, c->Answer());
  });
  RequestLoadShard(&call->context, &call->request, &call->responder, cq_.get(), cq_.get(), call);
}

}  // namespace tandem
