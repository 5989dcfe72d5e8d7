#include "coordinator/pipeline_client.h"

#include "proto/grpc_channel.h"
#include "proto/hello.h"

namespace tandem {

PipelineClient::PipelineClient(std::string address, v1::Hello mine, Callbacks callbacks)
    : address_(std::move(address)), mine_(std::move(mine)), callbacks_(std::move(callbacks)) {}

StatusOr<std::unique_ptr<PipelineClient>> PipelineClient::Connect(const std::string& address,
                                                                  const v1::Hello& mine,
                                                                  Callbacks callbacks) {
  std::unique_ptr<PipelineClient> client(new PipelineClient(address, mine, std::move(callbacks)));
  client->channel_ = MakeChannel(address);
  client->stub_ = v1::Node::NewStub(client->channel_);
  client->stream_ = client->stub_->Forward(&client->context_);
  v1::ForwardRequest hello;
  *hello.mutable_hello() = mine;
  if (!client->stream_->Write(hello)) {
    grpc::Status s = client->stream_->Finish();
    return absl::UnavailableError(absl::StrCat("cannot open the pipeline at stage 0 (", address,
                                               "): ", s.error_message()));
  }
  client->reader_ = std::thread([c = client.get()] { c->ReadLoop(); });
  return client;
}

PipelineClient::~PipelineClient() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  context_.TryCancel();
  if (reader_.joinable()) reader_.join();
}

Status PipelineClient::Send(const v1::ForwardBegin& begin) {
  v1::ForwardRequest request;
  *request.mutable_begin() = begin;
  if (!stream_->Write(request)) {
    return absl::UnavailableError(
        absl::StrCat("the pipeline stream to stage 0 (", address_, ") is closed"));
  }
  return absl::OkStatus();
}

void PipelineClient::ReadLoop() {
  Status broken;
  v1::ForwardResponse response;
  if (!stream_->Read(&response)) {
    grpc::Status s = stream_->Finish();
    broken = absl::UnavailableError(absl::StrCat("stage 0 (", address_,
                                                 ") closed the pipeline stream: ",
                                                 s.error_message()));
  } else {
    if (!response.has_hello()) {
      broken = absl::FailedPreconditionError(
          absl::StrCat("stage 0 (", address_, ") did not answer with a hello"));
    } else {
      broken = CheckHello(mine_, response.hello());
    }
    if (broken.ok()) {
      if (callbacks_.on_connected) callbacks_.on_connected();
      while (stream_->Read(&response)) {
        if (!response.has_result()) continue;  // only results follow the hello
        callbacks_.on_result(std::move(*response.mutable_result()));
      }
      grpc::Status s = stream_->Finish();
      broken = absl::UnavailableError(absl::StrCat(
          "the pipeline stream to stage 0 (", address_, ") broke: ",
          s.ok() ? std::string("closed by the node") : s.error_message()));
    } else {
      // A refused peer: end the stream.
      context_.TryCancel();
      while (stream_->Read(&response)) {
      }
      stream_->Finish();
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!closing_) callbacks_.on_broken(broken);
}

}  // namespace tandem
