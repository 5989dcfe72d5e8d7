#include "coordinator/coordinator_service.h"

#include <memory>

#include "coordinator/stream_writer.h"
#include "proto/hello.h"
#include "spdlog/spdlog.h"

namespace tandem {

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

// One node's Control stream.
class ControlReactor final
    : public grpc::ServerBidiReactor<v1::NodeToCoordinator, v1::CoordinatorToNode> {
 public:
  using Writer = StreamWriter<ControlReactor, v1::CoordinatorToNode>;

  class Channel final : public ControlChannel {
   public:
    explicit Channel(std::shared_ptr<Writer> writer) : writer_(std::move(writer)) {}
    void Send(v1::CoordinatorToNode message) override { writer_->Write(std::move(message)); }
    void Close(const Status& status) override { writer_->Finish(ToGrpcStatus(status)); }

   private:
    std::shared_ptr<Writer> writer_;
  };

  explicit ControlReactor(Cluster* cluster)
      : cluster_(cluster),
        writer_(std::make_shared<Writer>(this)),
        channel_(std::make_shared<Channel>(writer_)) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Closed();
      writer_->Finish(grpc::Status::OK);
      return;
    }
    if (name_.empty()) {
      if (!in_.has_hello()) {
        writer_->Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                     "the first Control message must be a hello"));
        return;
      }
      StatusOr<std::string> name = cluster_->OpenControl(in_.hello(), channel_);
      if (!name.ok()) {
        spdlog::warn("refused a control stream from {}: {}", DescribePeer(in_.hello()),
                     std::string(name.status().message()));
        writer_->Finish(ToGrpcStatus(name.status()));
        return;
      }
      name_ = *name;
    } else {
      cluster_->OnControlMessage(name_, channel_.get(), in_);
    }
    StartRead(&in_);
  }
  void OnWriteDone(bool ok) override { writer_->OnWriteDone(ok); }
  void OnCancel() override {
    Closed();
    writer_->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }
  void OnDone() override {
    Closed();
    writer_->Detach();
    delete this;
  }

 private:
  void Closed() {
    if (!name_.empty() && !closed_) {
      closed_ = true;
      cluster_->OnControlClosed(name_, channel_.get());
    }
  }

  Cluster* cluster_;
  std::shared_ptr<Writer> writer_;
  std::shared_ptr<Channel> channel_;
  v1::NodeToCoordinator in_;
  std::string name_;  // set once the hello is accepted
  bool closed_ = false;  // OnReadDone, OnCancel and OnDone are serialised for one stream
};

// One client's Generate stream.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  using Writer = StreamWriter<GenerateReactor, v1::GenerateResponse>;

  class Sink final : public GenerationSink {
   public:
    explicit Sink(std::shared_ptr<Writer> writer) : writer_(std::move(writer)) {}
    void Send(v1::GenerateResponse response) override {
      const bool last = !response.finish_reason().empty();
      writer_->Write(std::move(response));
      if (last) writer_->Finish(grpc::Status::OK);
    }

   private:
    std::shared_ptr<Writer> writer_;
  };

  // Refuses the request with `status`.
  explicit GenerateReactor(const grpc::Status& status) : writer_(std::make_shared<Writer>(this)) {
    writer_->Finish(status);
  }
  // Submits `request` to `engine`.
  GenerateReactor(Engine* engine, GenerationRequest request)
      : engine_(engine), writer_(std::make_shared<Writer>(this)) {
    id_ = engine_->Submit(std::move(request), std::make_shared<Sink>(writer_));
  }

  void OnWriteDone(bool ok) override { writer_->OnWriteDone(ok); }
  void OnCancel() override {
    if (engine_ != nullptr) engine_->Cancel(id_);
    writer_->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
  }
  void OnDone() override {
    writer_->Detach();
    delete this;
  }

 private:
  Engine* engine_ = nullptr;
  std::shared_ptr<Writer> writer_;
  uint64_t id_ = 0;
};

}  // namespace

grpc::ServerUnaryReactor* CoordinatorService::RegisterNode(grpc::CallbackServerContext* context,
                                                           const v1::RegisterNodeRequest* request,
                                                           v1::RegisterNodeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  StatusOr<v1::RegisterNodeResponse> result = cluster_->Register(*request);
  if (!result.ok()) {
    spdlog::warn("refused registration of {} from {}: {}", DescribePeer(request->hello()),
                 context->peer(), std::string(result.status().message()));
    reactor->Finish(ToGrpcStatus(result.status()));
    return reactor;
  }
  *response = std::move(result).value();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerBidiReactor<v1::NodeToCoordinator, v1::CoordinatorToNode>* CoordinatorService::Control(
    grpc::CallbackServerContext* /*context*/) {
  return new ControlReactor(cluster_);
}

grpc::ServerWriteReactor<v1::GenerateResponse>* CoordinatorService::Generate(
    grpc::CallbackServerContext* /*context*/, const v1::GenerateRequest* request) {
  if (request->has_hello() && request->hello().protocol_version() != kProtocolVersion) {
    return new GenerateReactor(grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("protocol version mismatch: this coordinator speaks ", kProtocolVersion,
                     ", the client speaks ", request->hello().protocol_version())));
  }
  StatusOr<GenerationRequest> prepared = PrepareGeneration(*request, tools_);
  if (!prepared.ok()) return new GenerateReactor(ToGrpcStatus(prepared.status()));
  return new GenerateReactor(engine_, std::move(prepared).value());
}

grpc::ServerUnaryReactor* CoordinatorService::ClusterStatus(
    grpc::CallbackServerContext* context, const v1::ClusterStatusRequest* /*request*/,
    v1::ClusterStatusResponse* response) {
  *response = cluster_->Status();
  response->set_requests_waiting(static_cast<uint32_t>(engine_->waiting()));
  response->set_requests_running(static_cast<uint32_t>(engine_->running()));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tandem
