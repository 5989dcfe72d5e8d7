#pragma once
// A node daemon stand-in for coordinator tests: registers, keeps a Control
// stream (hello, heartbeats, answers assignments with a loaded shard), and
// serves Node.Forward. The last stage "samples" (last input token of the
// sequence + 1) mod vocab, and every stage checks that each sequence's rows
// arrive at the positions that follow the ones it has seen.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "proto/grpc_channel.h"
#include "proto/hello.h"
#include "tandem/v1/coordinator.grpc.pb.h"
#include "tandem/v1/node.grpc.pb.h"

namespace tandem::testing {

struct FakeNodeOptions {
  std::string name{};
  std::string fingerprint{};
  std::string cluster_token{};
  uint32_t protocol_version = kProtocolVersion;
  int vocab = 1000;
  uint64_t kv_capacity_tokens = 1 << 16;
  int step_delay_ms = 0;  // time each step takes on this stage
  double decode_layer_ms = 1.0;
};

class FakeNode final : public v1::Node::Service {
 public:
  explicit FakeNode(FakeNodeOptions options) : options_(std::move(options)) {
    grpc::ServerBuilder builder;
    ConfigureServerBuilder(builder);
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeNode() override { Kill(); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  v1::Hello MyHello() const {
    v1::Hello h = MakeHello({.role = v1::ROLE_NODE,
                             .node_id = options_.name,
                             .model_fingerprint = options_.fingerprint,
                             .cluster_token = options_.cluster_token});
    h.set_protocol_version(options_.protocol_version);
    return h;
  }

  grpc::Status Register(const std::string& coordinator, v1::RegisterNodeResponse* response) {
    auto stub = v1::Coordinator::NewStub(MakeChannel(coordinator));
    v1::RegisterNodeRequest request;
    *request.mutable_hello() = MyHello();
    request.set_address(address());
    request.set_free_memory_bytes(uint64_t{4} << 30);
    v1::DeviceInfo* d = request.add_devices();
    d->set_kind("cpu");
    d->set_name("fake");
    v1::NodeCalibration* c = request.mutable_calibration();
    c->set_decode_layer_ms(options_.decode_layer_ms);
    c->set_head_ms(options_.decode_layer_ms);
    c->set_memory_budget_bytes(uint64_t{1} << 30);
    c->set_kv_budget_bytes(uint64_t{64} << 20);
    c->set_threads(1);
    c->set_cpu_cores(2);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub->RegisterNode(&context, request, response);
  }

  // Opens the Control stream and waits for the coordinator's hello. On
  // refusal returns the stream's final status.
  grpc::Status OpenControl(const std::string& coordinator, uint64_t session_id,
                           uint32_t heartbeat_ms) {
    control_stub_ = v1::Coordinator::NewStub(MakeChannel(coordinator));
    control_context_ = std::make_unique<grpc::ClientContext>();
    control_ = control_stub_->Control(control_context_.get());
    v1::NodeToCoordinator hello;
    *hello.mutable_hello() = MyHello();
    control_->Write(hello);
    v1::CoordinatorToNode answer;
    if (!control_->Read(&answer)) {
      grpc::Status s = control_->Finish();
      control_.reset();
      return s;
    }
    if (!answer.has_hello()) return grpc::Status(grpc::StatusCode::INTERNAL, "no hello");
    session_id_ = session_id;
    control_reader_ = std::thread([this] { ControlLoop(); });
    heartbeats_ = std::thread([this, heartbeat_ms] {
      std::unique_lock<std::mutex> lock(mu_);
      uint64_t sequence = 0;
      while (!cv_.wait_for(lock, std::chrono::milliseconds(heartbeat_ms), [this] { return dead_; })) {
        v1::NodeToCoordinator m;
        v1::Heartbeat* hb = m.mutable_heartbeat();
        hb->set_session_id(session_id_);
        hb->set_sequence(++sequence);
        hb->set_steps(steps_);
        hb->set_compute_ms_total(compute_ms_);
        hb->set_kv_total_blocks(100);
        hb->set_kv_free_blocks(100 - live_sequences_.size());
        hb->set_link_raw_bytes(1000 * steps_);
        hb->set_link_wire_bytes(500 * steps_);
        hb->set_link_codec("none");
        WriteControl(m);
      }
    });
    return grpc::Status::OK;
  }

  // Registers and opens the Control stream; true when both succeed.
  bool Join(const std::string& coordinator, uint32_t* heartbeat_ms = nullptr) {
    v1::RegisterNodeResponse r;
    if (!Register(coordinator, &r).ok()) return false;
    if (heartbeat_ms) *heartbeat_ms = r.heartbeat_interval_ms();
    return OpenControl(coordinator, r.session_id(), r.heartbeat_interval_ms()).ok();
  }

  // The process "dies": its server and its Control stream go away.
  void Kill() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (dead_) return;
      dead_ = true;
    }
    cv_.notify_all();
    if (control_context_) control_context_->TryCancel();
    if (heartbeats_.joinable()) heartbeats_.join();
    if (control_reader_.joinable()) control_reader_.join();
    if (control_) control_->Finish();
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }

  bool WaitAssigned(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return assigned_; });
  }
  v1::ShardAssignment assignment() {
    std::lock_guard<std::mutex> lock(mu_);
    return assignment_;
  }
  std::set<uint64_t> released() {
    std::lock_guard<std::mutex> lock(mu_);
    return released_;
  }
  std::vector<std::string> errors() {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_;
  }
  uint64_t steps() {
    std::lock_guard<std::mutex> lock(mu_);
    return steps_;
  }

  grpc::Status Forward(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<v1::ForwardResponse, v1::ForwardRequest>* up) override {
    v1::ForwardRequest request;
    if (!up->Read(&request) || !request.has_hello()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "expected a hello");
    }
    v1::ForwardResponse hello;
    *hello.mutable_hello() = MyHello();
    up->Write(hello);
    const v1::ShardAssignment a = assignment();
    const bool last = a.next_stage().empty();
    std::unique_ptr<v1::Node::Stub> stub;
    grpc::ClientContext down_context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::ForwardRequest, v1::ForwardResponse>> down;
    std::thread relay;
    // The relay and this loop both answer up the stream: one write at a time.
    std::mutex up_mu;
    auto write_up = [&](const v1::ForwardResponse& r) {
      std::lock_guard<std::mutex> lock(up_mu);
      up->Write(r);
    };
    if (!last) {
      stub = v1::Node::NewStub(MakeChannel(a.next_stage()));
      down = stub->Forward(&down_context);
      v1::ForwardRequest h;
      *h.mutable_hello() = MyHello();
      h.mutable_hello()->set_role(v1::ROLE_NODE);
      down->Write(h);
      v1::ForwardResponse their;
      if (!down->Read(&their)) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "next stage");
      // Results travel back up; if the next stage goes away, so does this stream.
      relay = std::thread([&] {
        v1::ForwardResponse r;
        while (down->Read(&r)) write_up(r);
        context->TryCancel();
      });
    }
    while (up->Read(&request)) {
      if (!request.has_begin()) continue;
      const v1::ForwardBegin& begin = request.begin();
      if (options_.step_delay_ms > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(options_.step_delay_ms));
      }
      v1::StepResult result = Step(begin);
      if (last || !result.error().empty()) {
        v1::ForwardResponse out;
        *out.mutable_result() = std::move(result);
        write_up(out);
      } else {
        down->Write(request);
      }
    }
    if (!last) {
      down_context.TryCancel();
      relay.join();
      down->Finish();
    }
    return grpc::Status::OK;
  }

 private:
  // Checks positions, counts the step and, on the last stage, samples.
  v1::StepResult Step(const v1::ForwardBegin& begin) {
    v1::StepResult result;
    result.set_step_id(begin.step_id());
    result.set_micro_batch_id(begin.micro_batch_id());
    std::lock_guard<std::mutex> lock(mu_);
    ++steps_;
    compute_ms_ += options_.step_delay_ms;
    int row = 0;
    for (const v1::SequenceSlice& s : begin.sequences()) {
      uint32_t& seen = live_sequences_[s.sequence_id()];
      if (s.start_position() != seen || s.token_count() == 0 ||
          row + static_cast<int>(s.token_count()) > begin.token_ids_size()) {
        result.set_error("sequence " + std::to_string(s.sequence_id()) + " arrived at position " +
                         std::to_string(s.start_position()) + ", expected " +
                         std::to_string(seen));
        errors_.push_back(result.error());
        return result;
      }
      seen += s.token_count();
      row += static_cast<int>(s.token_count());
      if (s.sample()) {
        v1::TokenResult* t = result.add_tokens();
        t->set_sequence_id(s.sequence_id());
        t->set_token_id((begin.token_ids(row - 1) + 1) % options_.vocab);
        t->set_logprob(-0.5f);
      }
    }
    if (begin.sampling_size() != begin.sequences_size()) {
      result.set_error("sampling params do not match the sequences");
      errors_.push_back(result.error());
    }
    return result;
  }

  void WriteControl(const v1::NodeToCoordinator& m) {
    std::lock_guard<std::mutex> lock(write_mu_);
    control_->Write(m);
  }

  void ControlLoop() {
    v1::CoordinatorToNode command;
    while (control_->Read(&command)) {
      if (command.has_assign()) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          assignment_ = command.assign();
          assigned_ = true;
          live_sequences_.clear();
        }
        cv_.notify_all();
        v1::NodeToCoordinator m;
        m.mutable_shard_loaded()->set_kv_capacity_tokens(options_.kv_capacity_tokens);
        m.mutable_shard_loaded()->set_weight_bytes(1000);
        WriteControl(m);
      } else if (command.has_release()) {
        std::lock_guard<std::mutex> lock(mu_);
        for (uint64_t id : command.release().sequence_ids()) {
          released_.insert(id);
          live_sequences_.erase(id);
        }
      }
    }
  }

  FakeNodeOptions options_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Coordinator::Stub> control_stub_;
  std::unique_ptr<grpc::ClientContext> control_context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::NodeToCoordinator, v1::CoordinatorToNode>> control_;
  std::mutex write_mu_;
  std::thread control_reader_, heartbeats_;
  uint64_t session_id_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool dead_ = false;
  bool assigned_ = false;
  v1::ShardAssignment assignment_;
  std::map<uint64_t, uint32_t> live_sequences_;
  std::set<uint64_t> released_;
  std::vector<std::string> errors_;
  uint64_t steps_ = 0;
  double compute_ms_ = 0;
};

}  // namespace tandem::testing
