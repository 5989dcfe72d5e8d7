#pragma once
// The link from this stage to the next one: a long-lived Node.Forward stream.
// Steps are queued and sent by a writer thread (encoding chunk k+1 while
// chunk k goes out), so compute never waits for the network. Chunk payloads
// go to gRPC as slices of their own buffers (proto/chunk_wire.h), and a
// step's begin waits to leave with its first chunk. A reader thread
// routes the StepResults coming back to the reply of the step they answer.
// If the stream fails, every pending step is answered with the error, and the
// next step opens a new stream.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "node/daemon/step_reply.h"
#include "proto/tensor_codec.h"
#include "grpcpp/channel.h"
#include "tandem/v1/node.pb.h"

namespace tandem {

class NextStageLink {
 public:
  // Connects lazily, on the first step.
  NextStageLink(std::string address, v1::Hello hello, CodecOptions codec);
  ~NextStageLink();
  NextStageLink(const NextStageLink&) = delete;
  NextStageLink& operator=(const NextStageLink&) = delete;

  // Queues a step: `begin` (its tensor header is filled in here) and the
  // hidden states [T, hidden] (f32). `reply` receives the step's result.
  void Send(v1::ForwardBegin begin, std::vector<float> hidden, int64_t hidden_size,
            StepReply reply);

  const std::string& address() const { return address_; }
  std::string codec_name() const { return std::string(CodecName(codec_.codec)); }
  uint64_t raw_bytes() const { return raw_bytes_.load(); }
  uint64_t wire_bytes() const { return wire_bytes_.load(); }

 private:
  struct Item {
    v1::ForwardBegin begin;
    std::vector<float> hidden;
    int64_t hidden_size = 0;
  };
  struct Stream;

  void WriterLoop();
  Status Connect();
  Status WriteStep(Item& item);
  void ReaderLoop(std::shared_ptr<Stream> stream);
  void FailPending(const std::string& message);

  const std::string address_;
  const v1::Hello hello_;
  const CodecOptions codec_;
  std::shared_ptr<grpc::Channel> channel_;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::unordered_map<uint64_t, std::pair<v1::ForwardBegin, StepReply>> pending_;  // by step id
  bool stopping_ = false;
  std::shared_ptr<Stream> stream_;  // writer thread only
  std::thread reader_;
  std::thread writer_;
  std::atomic<uint64_t> raw_bytes_{0};
  std::atomic<uint64_t> wire_bytes_{0};
};

}  // namespace tandem
