#pragma once
// Ordered, non-blocking writes to a gRPC callback server stream from any
// thread. gRPC allows one write in flight per stream and no write after
// Finish; a StreamWriter queues messages, starts the next write when the
// previous one is done, and finishes the stream once the queue drains.
//
// Shared (std::shared_ptr) between the reactor and the producers, so that a
// producer may hold it after the stream is gone: calls then do nothing. The
// reactor calls OnWriteDone from its OnWriteDone and Detach from its OnDone.
#include <deque>
#include <mutex>
#include <utility>

#include "grpcpp/grpcpp.h"

namespace tandem {

template <typename Reactor, typename Message>
class StreamWriter {
 public:
  explicit StreamWriter(Reactor* reactor) : reactor_(reactor) {}

  // Queues `message`; returns false when the stream is finishing or gone.
  bool Write(Message message) {
    Reactor* start = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (reactor_ == nullptr || finishing_) return false;
      queue_.push_back(std::move(message));
      if (!writing_) start = StartNextLocked();
    }
    if (start != nullptr) start->StartWrite(&current_);
    return true;
  }

  // Finishes the stream with `status` after the queued messages (at most once).
  void Finish(const grpc::Status& status) {
    Reactor* finish = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (reactor_ == nullptr || finishing_) return;
      finishing_ = true;
      status_ = status;
      if (!writing_) finish = reactor_;
    }
    if (finish != nullptr) finish->Finish(status);
  }

  // From the reactor's OnWriteDone.
  void OnWriteDone(bool ok) {
    Reactor* start = nullptr;
    Reactor* finish = nullptr;
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) {
        // The stream is broken: drop what is queued and finish it.
        queue_.clear();
        if (!finishing_) {
          finishing_ = true;
          status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke");
        }
      }
      if (!queue_.empty()) {
        start = StartNextLocked();
      } else if (finishing_) {
        finish = reactor_;
        status = status_;
      }
    }
    if (start != nullptr) start->StartWrite(&current_);
    if (finish != nullptr) finish->Finish(status);
  }

  // From the reactor's OnDone: later calls do nothing.
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    reactor_ = nullptr;
    queue_.clear();
  }

 private:
  Reactor* StartNextLocked() {
    current_ = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    return reactor_;
  }

  std::mutex mu_;
  Reactor* reactor_;
  std::deque<Message> queue_;
  Message current_;  // the write in flight
  bool writing_ = false;
  bool finishing_ = false;
  grpc::Status status_;
};

}  // namespace tandem
