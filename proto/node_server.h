#pragma once
// The Node service (tandem/v1/node.proto) served by gRPC's async API from
// one thread of our own that polls the service's completion queue. With the
// callback API a message hops between gRPC's internal threads before its
// handler runs and again before a reply leaves (about ten context switches
// per round trip); here the thread that reads the socket runs the handler
// and starts the reply, which cuts a small message's round trip on
// loopback from about 50 to 25-35 us. Handlers must therefore never block:
// long work goes to other threads, which may start writes and finish calls
// themselves.
//
// The streams, Forward and Echo, carry byte buffers (chunk_wire.h) and are
// handled by a RawStreamReactor per call, with the callback reactor's
// contract. Every method is served from the same queue: with a callback
// method in the same server, gRPC's callback threads poll some connections
// and the hops come back (measured: no gain at all).
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/byte_buffer.h"
#include "tandem/v1/node.grpc.pb.h"

namespace tandem {

class StreamCall;

// One bidi stream of byte buffers. At most one read and one write may be in
// flight at once; StartRead, StartWrite and Finish may be called from any
// thread. The On* methods run on the serving thread, one at a time. Finish
// must be called exactly once (also after OnCancel); OnDone comes last, once
// the call has ended and no operation is in flight, and may delete `this`.
class RawStreamReactor {
 public:
  virtual ~RawStreamReactor() = default;

  void StartRead(grpc::ByteBuffer* message);
  void StartWrite(const grpc::ByteBuffer* message);
  void Finish(grpc::Status status);

  virtual void OnReadDone(bool ok) = 0;
  virtual void OnWriteDone(bool /*ok*/) {}
  // The peer cancelled the call, or the server is shutting down.
  virtual void OnCancel() {}
  virtual void OnDone() = 0;

 private:
  friend class StreamCall;
  StreamCall* call_ = nullptr;
  // Asked for before the call was bound (from the constructor).
  grpc::ByteBuffer* early_read_ = nullptr;
  std::optional<grpc::Status> early_finish_;
};

using AsyncNodeService = v1::Node::WithRawMethod_Forward<v1::Node::WithAsyncMethod_ReleaseSequences<
    v1::Node::WithAsyncMethod_LoadShard<v1::Node::WithRawMethod_Echo<v1::Node::Service>>>>;

// A Node service: override the handlers it implements (the others answer
// UNIMPLEMENTED). Lifecycle: AddTo(builder), builder.BuildAndStart(),
// StartServing(); at the end StopServing(server), and only then may the
// server be destroyed: the accepts still pending on the queue come back
// after the shutdown and gRPC reads the server as it hands them over. A
// derived class calls StopServing() in its destructor, so that no handler
// runs once its members are gone.
class NodeServiceBase : public AsyncNodeService {
 public:
  using Done = std::function<void(grpc::Status)>;

  NodeServiceBase() = default;
  ~NodeServiceBase() override;
  NodeServiceBase(const NodeServiceBase&) = delete;
  NodeServiceBase& operator=(const NodeServiceBase&) = delete;

  // A reactor for a new stream (null: UNIMPLEMENTED).
  virtual RawStreamReactor* NewForward() { return nullptr; }
  virtual RawStreamReactor* NewEcho() { return nullptr; }
  // Unary calls: fill `response` and call `done` once, from any thread.
  virtual void HandleReleaseSequences(const v1::ReleaseSequencesRequest& request,
                                      v1::ReleaseSequencesResponse* response, Done done);
  virtual void HandleLoadShard(const v1::LoadShardRequest& request, v1::LoadShardResponse* response,
                               Done done);

  // Registers the service and its completion queue with `builder`.
  void AddTo(grpc::ServerBuilder& builder);
  // Starts taking calls; after the server has been built and started.
  void StartServing();
  // After the server's Shutdown: waits until every call has ended (a
  // reactor must finish its call, which the shutdown has cancelled), then
  // drains the queue and joins the thread.
  void StopServing();
  // Shuts `server` down (calls still open are cancelled at `deadline`; none:
  // they may take as long as they need), then StopServing().
  void StopServing(grpc::Server& server,
                   std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt);

 private:
  friend class StreamCall;
  template <typename Request, typename Response>
  friend class UnaryCall;
  // Calls accepted or awaited, counted until their objects are deleted.
  void CallCreated();
  void CallDeleted();
  void AcceptForward();
  void AcceptEcho();
  void AcceptReleaseSequences();
  void AcceptLoadShard();

  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::thread thread_;
  std::mutex calls_mutex_;
  std::condition_variable calls_cv_;
  int live_calls_ = 0;
};

}  // namespace tandem
