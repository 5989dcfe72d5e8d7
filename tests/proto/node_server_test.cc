// The async Node server (proto/node_server.h) on loopback: streams whose
// writes start on another thread, unary calls answered from another thread,
// unimplemented methods, cancellation and shutdown with streams open.
#include "proto/node_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "grpcpp/server.h"
#include "proto/chunk_wire.h"
#include "proto/grpc_channel.h"
#include "proto/raw_stream.h"
#include "tests/proto/byte_buffer_bytes.h"

namespace tandem {
namespace {

using testing::Flatten;

struct Counters {
  std::atomic<int> cancelled{0};
  std::atomic<int> done{0};
};

// Sends every message back, reversed, from a writer thread of its own (as a
// node answers steps from its compute thread); finishes once the client has
// half-closed and every answer has gone.
class ReversingReactor final : public RawStreamReactor {
 public:
  explicit ReversingReactor(Counters* counters) : counters_(counters) {
    writer_ = std::thread([this] { WriteLoop(); });
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      std::lock_guard lock(mutex_);
      reads_done_ = true;
      cv_.notify_all();
      return;
    }
    std::string bytes = Flatten(in_);
    {
      std::lock_guard lock(mutex_);
      queue_.emplace_back(bytes.rbegin(), bytes.rend());
      cv_.notify_all();
    }
    StartRead(&in_);
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mutex_);
    writing_ = false;
    if (!ok) failed_ = true;
    cv_.notify_all();
  }
  void OnCancel() override { ++counters_->cancelled; }
  void OnDone() override {
    writer_.join();
    ++counters_->done;
    delete this;
  }

 private:

  void WriteLoop() {
    std::unique_lock lock(mutex_);
    while (true) {
      cv_.wait(lock, [&] { return !writing_ && (!queue_.empty() || reads_done_ || failed_); });
      if (failed_ || queue_.empty()) break;
      grpc::Slice slice(queue_.front());
      queue_.pop_front();
      out_ = grpc::ByteBuffer(&slice, 1);
      writing_ = true;
      lock.unlock();
      StartWrite(&out_);
      lock.lock();
    }
    lock.unlock();
    Finish(failed_ ? grpc::Status::CANCELLED : grpc::Status::OK);
  }

  Counters* counters_;
  grpc::ByteBuffer in_;
  grpc::ByteBuffer out_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  bool writing_ = false;
  bool reads_done_ = false;
  bool failed_ = false;
  std::thread writer_;
};

// Forward reverses messages; ReleaseSequences answers from another thread;
// Echo and LoadShard are left unimplemented.
class TestService final : public NodeServiceBase {
 public:
  ~TestService() override { StopServing(); }
  RawStreamReactor* NewForward() override { return new ReversingReactor(&counters); }
  void HandleReleaseSequences(const v1::ReleaseSequencesRequest& request,
                              v1::ReleaseSequencesResponse* response, Done done) override {
    std::thread([&request, response, done = std::move(done)] {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      response->set_released(static_cast<uint32_t>(request.sequence_ids_size()));
      done(grpc::Status::OK);
    }).detach();
  }
  Counters counters;
};

class NodeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    ConfigureServerBuilder(builder);
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    service_.AddTo(builder);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr && port_ != 0);
    service_.StartServing();
    channel_ = MakeChannel(absl::StrCat("127.0.0.1:", port_));
  }
  void TearDown() override {
    if (server_) {
      service_.StopServing(*server_, std::chrono::system_clock::now() + std::chrono::seconds(5));
    }
  }
  // Waits (up to 10 s) for `counter` to reach `want`.
  static bool Reaches(const std::atomic<int>& counter, int want) {
    for (int i = 0; i < 1000 && counter.load() < want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return counter.load() == want;
  }
  static grpc::ByteBuffer Buffer(const std::string& bytes) {
    grpc::Slice slice(bytes);
    return grpc::ByteBuffer(&slice, 1);
  }

  TestService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(NodeServerTest, StreamAnswersEveryMessageInOrderAndEndsCleanly) {
  std::mt19937_64 rng(std::random_device{}());
  grpc::ClientContext context;
  auto stream = OpenNodeStream(*channel_, NodeStreamMethod::kForward, &context);
  const int n = 3 + static_cast<int>(rng() % 20);
  std::vector<std::string> sent;
  for (int i = 0; i < n; ++i) {
    // Sizes from a byte to a few MiB (several HTTP/2 frames).
    const size_t size = 1 + rng() % (i % 4 == 0 ? (3u << 20) : 4096u);
    std::string bytes(size, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    sent.push_back(bytes);
  }
  // Write them all from one thread while this one reads.
  std::thread writer([&] {
    for (const std::string& s : sent) ASSERT_TRUE(stream->Write(Buffer(s)));
    stream->WritesDone();
  });
  for (const std::string& s : sent) {
    grpc::ByteBuffer reply;
    ASSERT_TRUE(stream->Read(&reply));
    EXPECT_EQ(Flatten(reply), std::string(s.rbegin(), s.rend()));
  }
  writer.join();
  grpc::ByteBuffer extra;
  EXPECT_FALSE(stream->Read(&extra));
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(Reaches(service_.counters.done, 1));
  EXPECT_EQ(service_.counters.cancelled.load(), 0);
}

TEST_F(NodeServerTest, ManyStreamsAtOnce) {
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  const int streams = 8;
  for (int c = 0; c < streams; ++c) {
    clients.emplace_back([&, c] {
      grpc::ClientContext context;
      auto stream = OpenNodeStream(*channel_, NodeStreamMethod::kForward, &context);
      const std::string msg = "stream " + std::to_string(c);
      if (!stream->Write(Buffer(msg))) return;
      grpc::ByteBuffer reply;
      if (!stream->Read(&reply) || Flatten(reply) != std::string(msg.rbegin(), msg.rend())) return;
      stream->WritesDone();
      if (stream->Finish().ok()) ++ok;
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(ok.load(), streams);
  EXPECT_TRUE(Reaches(service_.counters.done, streams));
}

TEST_F(NodeServerTest, UnaryCallIsAnsweredFromAnotherThread) {
  std::mt19937_64 rng(std::random_device{}());
  auto stub = v1::Node::NewStub(channel_);
  v1::ReleaseSequencesRequest request;
  const int n = static_cast<int>(rng() % 50);
  for (int i = 0; i < n; ++i) request.add_sequence_ids(rng());
  v1::ReleaseSequencesResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub->ReleaseSequences(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.released(), static_cast<uint32_t>(n));
}

TEST_F(NodeServerTest, MethodsNotImplementedAnswerUnimplemented) {
  auto stub = v1::Node::NewStub(channel_);
  v1::LoadShardResponse response;
  grpc::ClientContext unary_context;
  EXPECT_EQ(stub->LoadShard(&unary_context, v1::LoadShardRequest(), &response).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  grpc::ClientContext context;
  auto stream = OpenNodeStream(*channel_, NodeStreamMethod::kEcho, &context);
  grpc::ByteBuffer reply;
  stream->Write(Buffer("hello?"));
  EXPECT_FALSE(stream->Read(&reply));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(NodeServerTest, ClientCancelReachesTheReactor) {
  grpc::ClientContext context;
  auto stream = OpenNodeStream(*channel_, NodeStreamMethod::kForward, &context);
  ASSERT_TRUE(stream->Write(Buffer("abc")));
  grpc::ByteBuffer reply;
  ASSERT_TRUE(stream->Read(&reply));
  EXPECT_EQ(Flatten(reply), "cba");
  context.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Reaches(service_.counters.cancelled, 1));
  EXPECT_TRUE(Reaches(service_.counters.done, 1));
}

TEST_F(NodeServerTest, ShutdownEndsOpenStreams) {
  grpc::ClientContext context;
  auto stream = OpenNodeStream(*channel_, NodeStreamMethod::kForward, &context);
  ASSERT_TRUE(stream->Write(Buffer("xy")));
  grpc::ByteBuffer reply;
  ASSERT_TRUE(stream->Read(&reply));
  // The stream stays open: shutdown cancels it once the deadline passes.
  // Returns once the reactor is done.
  service_.StopServing(*server_, std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  EXPECT_EQ(service_.counters.cancelled.load(), 1);
  EXPECT_EQ(service_.counters.done.load(), 1);
  EXPECT_FALSE(stream->Read(&reply));
  EXPECT_FALSE(stream->Finish().ok());
}

}  // namespace
}  // namespace tandem
