#pragma once
// The coordinator's end of the pipeline: one long-lived Node.Forward stream to
// stage 0. Micro-batches go down as ForwardBegin frames (token ids, no
// tensor); step results come back up the same stream, in any order, and are
// handed to a callback from a reader thread.
//
// Send() is called from one thread (the engine's); the callbacks run on the
// reader thread and must not block.
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/status.h"
#include "grpcpp/grpcpp.h"
#include "tandem/v1/node.grpc.pb.h"

namespace tandem {

class PipelineClient {
 public:
  struct Callbacks {
    // The peer's hello passed CheckHello; frames flow.
    std::function<void()> on_connected;
    std::function<void(v1::StepResult result)> on_result;
    // The stream ended or the peer's hello was refused; called once, and never
    // after the destructor started.
    std::function<void(Status status)> on_broken;
  };

  // Opens the stream to `address` ("host:port") and sends `mine` as hello. The
  // peer's hello is read and checked by the reader thread.
  static StatusOr<std::unique_ptr<PipelineClient>> Connect(const std::string& address,
                                                           const v1::Hello& mine,
                                                           Callbacks callbacks);
  // Cancels the stream and joins the reader thread.
  ~PipelineClient();
  PipelineClient(const PipelineClient&) = delete;
  PipelineClient& operator=(const PipelineClient&) = delete;

  // Sends one micro-batch. An error means the stream is gone.
  Status Send(const v1::ForwardBegin& begin);

  const std::string& address() const { return address_; }

 private:
  PipelineClient(std::string address, v1::Hello mine, Callbacks callbacks);
  void ReadLoop();

  std::string address_;
  v1::Hello mine_;
  Callbacks callbacks_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Node::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ForwardRequest, v1::ForwardResponse>> stream_;
  std::mutex mu_;
  bool closing_ = false;  // guarded by mu_
  std::thread reader_;
};

}  // namespace tandem
