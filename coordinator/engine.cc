#include "coordinator/engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "spdlog/spdlog.h"

namespace tandem {

namespace {

v1::SamplingParams ToProto(const SamplingOptions& s) {
  v1::SamplingParams p;
  p.set_temperature(s.temperature);
  p.set_top_p(s.top_p);
  p.set_top_k(static_cast<uint32_t>(std::max(0, s.top_k)));
  p.set_min_p(s.min_p);
  p.set_presence_penalty(s.presence_penalty);
  p.set_frequency_penalty(s.frequency_penalty);
  p.set_repetition_penalty(s.repetition_penalty);
  p.set_seed(s.seed);
  p.set_has_seed(s.has_seed);
  p.set_want_logprob(s.want_logprobs);
  return p;
}

v1::GenerateResponse ErrorResponse(const std::string& message) {
  v1::GenerateResponse r;
  r.set_finish_reason("error");
  r.set_error(message);
  return r;
}

}  // namespace

Engine::Engine(EngineOptions options) : options_(std::move(options)) {
  unavailable_ = "waiting for nodes to register";
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  pipeline_.reset();
  FailAll("the coordinator is shutting down");
}

void Engine::Post(std::function<void()> work) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(work));
  }
  cv_.notify_one();
}

uint64_t Engine::Submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) {
  const uint64_t id = next_id_.fetch_add(1);
  Post([this, id, request = std::move(request), sink = std::move(sink)]() mutable {
    DoSubmit(id, std::move(request), std::move(sink));
  });
  return id;
}

void Engine::Cancel(uint64_t request_id) {
  Post([this, request_id] { DoCancel(request_id); });
}

void Engine::Attach(PipelineTarget target) {
  Post([this, target = std::move(target)]() mutable { DoAttach(std::move(target)); });
}

void Engine::Detach(std::string reason) {
  Post([this, reason = std::move(reason)] {
    if (pipeline_ != nullptr || scheduler_.has_value()) {
      DropPipeline(absl::StrCat("the pipeline failed: ", reason));
    }
    unavailable_ = reason;
  });
}

void Engine::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    std::deque<std::function<void()>> work;
    work.swap(queue_);
    lock.unlock();
    for (auto& w : work) w();
    Pump();
    waiting_.store(scheduler_ ? scheduler_->waiting() : 0);
    running_.store(scheduler_ ? scheduler_->running() : 0);
    lock.lock();
  }
}

void Engine::DoSubmit(uint64_t id, GenerationRequest request,
                      std::shared_ptr<GenerationSink> sink) {
  if (!scheduler_.has_value()) {
    sink->Send(ErrorResponse(absl::StrCat("no pipeline: ", unavailable_)));
    return;
  }
  Active active;
  active.sink = std::move(sink);
  active.want_logprobs = request.sampling.want_logprobs;
  active.prompt_tokens = static_cast<int>(request.prompt.size());
  if (options_.tokenizer != nullptr) {
    active.detokenizer =
        std::make_unique<StreamingDetokenizer>(*options_.tokenizer, /*skip_special=*/true);
  }
  active.stops = std::make_unique<StopStringMatcher>(std::move(request.stop));
  SequenceRequest sequence{.id = id,
                           .prompt = std::move(request.prompt),
                           .max_tokens = request.max_tokens,
                           .stop_ids = options_.stop_ids,
                           .sampling = request.sampling};
  if (Status s = scheduler_->Add(std::move(sequence)); !s.ok()) {
    active.sink->Send(ErrorResponse(std::string(s.message())));
    return;
  }
  active_.emplace(id, std::move(active));
}

void Engine::DoCancel(uint64_t id) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  active_.erase(it);
  if (scheduler_) scheduler_->Cancel(id);
  Release();
}

void Engine::DoAttach(PipelineTarget target) {
  if (pipeline_ != nullptr || scheduler_.has_value()) {
    DropPipeline("the pipeline was replaced (the cluster was re-planned)");
  }
  CHECK_GE(target.num_stages, 1);
  epoch_ = target.epoch;
  connected_ = false;
  scheduler_.emplace(SchedulerOptions{.num_stages = target.num_stages,
                                      .max_batch_tokens = options_.max_batch_tokens,
                                      .max_sequences = options_.max_sequences,
                                      .prefill_chunk = options_.prefill_chunk,
                                      .kv_capacity_tokens = target.kv_capacity_tokens,
                                      .block_size = options_.block_size,
                                      .max_context = options_.max_context});
  const uint64_t epoch = target.epoch;
  PipelineClient::Callbacks callbacks{
      .on_connected =
          [this, epoch] {
            Post([this, epoch] {
              if (epoch != epoch_ || pipeline_ == nullptr) return;
              connected_ = true;
              spdlog::info("pipeline {} connected to stage 0 at {}", epoch, pipeline_->address());
              if (options_.pipeline_event) options_.pipeline_event(epoch, absl::OkStatus());
            });
          },
      .on_result =
          [this, epoch](v1::StepResult result) {
            Post([this, epoch, result = std::move(result)] { OnResult(epoch, result); });
          },
      .on_broken =
          [this, epoch](Status status) {
            Post([this, epoch, status] { OnBroken(epoch, status); });
          },
  };
  auto client = PipelineClient::Connect(target.stage0_address, options_.hello, callbacks);
  if (!client.ok()) {
    scheduler_.reset();
    unavailable_ = std::string(client.status().message());
    if (options_.pipeline_event) options_.pipeline_event(epoch, client.status());
    return;
  }
  pipeline_ = std::move(client).value();
}

void Engine::DropPipeline(const std::string& failure) {
  FailAll(failure);
  pipeline_.reset();
  scheduler_.reset();
  connected_ = false;
}

void Engine::OnBroken(uint64_t epoch, const Status& status) {
  if (epoch != epoch_ || pipeline_ == nullptr) return;
  spdlog::warn("pipeline {}: {}", epoch, std::string(status.message()));
  DropPipeline(std::string(status.message()));
  unavailable_ = std::string(status.message());
  if (options_.pipeline_event) options_.pipeline_event(epoch, status);
}

void Engine::OnResult(uint64_t epoch, const v1::StepResult& result) {
  if (epoch != epoch_ || !scheduler_.has_value()) return;
  if (!result.error().empty()) {
    const std::string message = absl::StrCat("a stage failed the step: ", result.error());
    for (uint64_t id : scheduler_->Fail(result.step_id())) {
      auto it = active_.find(id);
      if (it == active_.end()) continue;
      SendTo(id, it->second, ErrorResponse(message));
      active_.erase(it);
    }
    Release();
    return;
  }
  std::vector<StepToken> tokens;
  tokens.reserve(result.tokens_size());
  for (const v1::TokenResult& t : result.tokens()) {
    tokens.push_back({.sequence_id = t.sequence_id(),
                      .token = static_cast<int32_t>(t.token_id()),
                      .logprob = t.logprob()});
  }
  // Token ids come from the network: an id outside the model's vocabulary
  // fails the step rather than reaching the detokenizer.
  for (const StepToken& t : tokens) {
    if (t.token < 0 || (options_.vocab_size > 0 && t.token >= options_.vocab_size)) {
      for (uint64_t id : scheduler_->Fail(result.step_id())) {
        auto it = active_.find(id);
        if (it == active_.end()) continue;
        SendTo(id, it->second,
               ErrorResponse(absl::StrCat("the last stage returned token id ", t.token,
                                          ", outside the model's vocabulary of ",
                                          options_.vocab_size)));
        active_.erase(it);
      }
      Release();
      return;
    }
  }
  auto events = scheduler_->Complete(result.step_id(), tokens);
  if (!events.ok()) {
    spdlog::warn("ignoring a step result: {}", std::string(events.status().message()));
    return;
  }
  // One response per sequence per step, in event order.
  std::vector<uint64_t> order;
  std::unordered_map<uint64_t, v1::GenerateResponse> out;
  std::vector<uint64_t> stopped;
  for (const SequenceEvent& e : *events) {
    auto it = active_.find(e.sequence_id);
    if (it == active_.end()) continue;
    Active& a = it->second;
    auto [slot, inserted] = out.try_emplace(e.sequence_id);
    if (inserted) order.push_back(e.sequence_id);
    v1::GenerateResponse& r = slot->second;
    if (!r.finish_reason().empty()) continue;  // ended by a stop string
    if (e.kind == SequenceEvent::Kind::kToken) {
      r.add_token_ids(static_cast<uint32_t>(e.token));
      if (a.want_logprobs) r.add_logprobs(e.logprob);
      // Models pad their vocabulary past the tokenizer's: such ids have no text.
      const bool has_text = a.detokenizer && options_.tokenizer->IsValidId(e.token);
      const std::string piece = has_text ? a.detokenizer->Push(e.token) : std::string();
      StopStringMatcher::Output o = a.stops->Push(piece);
      r.mutable_text()->append(o.text);
      if (o.stopped) {
        r.set_finish_reason("stop");
        stopped.push_back(e.sequence_id);
      }
    } else if (e.finish_reason.rfind("error", 0) == 0) {
      r.set_finish_reason("error");
      r.set_error(e.finish_reason);
    } else {
      const std::string rest = a.detokenizer ? a.detokenizer->Finish() : std::string();
      StopStringMatcher::Output o = a.stops->Push(rest);
      r.mutable_text()->append(o.text);
      if (!o.stopped) r.mutable_text()->append(a.stops->Finish());
      r.set_finish_reason(o.stopped ? "stop" : e.finish_reason);
    }
  }
  for (uint64_t id : stopped) scheduler_->Cancel(id);
  for (uint64_t id : order) {
    auto it = active_.find(id);
    v1::GenerateResponse& r = out[id];
    const bool done = !r.finish_reason().empty();
    if (r.token_ids_size() > 0 || !r.text().empty() || done) SendTo(id, it->second, std::move(r));
    if (done) active_.erase(it);
  }
  Release();
}

void Engine::SendTo(uint64_t /*id*/, Active& active, v1::GenerateResponse response) {
  if (!active.sent_first) {
    response.set_prompt_tokens(static_cast<uint32_t>(active.prompt_tokens));
    active.sent_first = true;
  }
  active.sink->Send(std::move(response));
}

void Engine::FailAll(const std::string& message) {
  std::vector<uint64_t> ids;
  for (auto& [id, a] : active_) {
    ids.push_back(id);
    SendTo(id, a, ErrorResponse(message));
  }
  active_.clear();
  if (!ids.empty() && options_.release) options_.release(ids);
}

void Engine::Release() {
  if (!scheduler_) return;
  std::vector<uint64_t> ids = scheduler_->TakeReleased();
  if (!ids.empty() && options_.release) options_.release(ids);
}

void Engine::Pump() {
  if (!scheduler_.has_value() || pipeline_ == nullptr || !connected_) return;
  while (std::optional<MicroBatch> batch = scheduler_->NextBatch()) {
    v1::ForwardBegin begin;
    begin.set_step_id(batch->step_id);
    begin.set_micro_batch_id(static_cast<uint32_t>(batch->slot));
    for (const BatchEntry& e : batch->entries) {
      v1::SequenceSlice* slice = begin.add_sequences();
      slice->set_sequence_id(e.sequence_id);
      slice->set_start_position(static_cast<uint32_t>(e.start_position));
      slice->set_token_count(static_cast<uint32_t>(e.tokens.size()));
      slice->set_sample(e.sample);
      for (int32_t t : e.tokens) begin.add_token_ids(static_cast<uint32_t>(t));
      CHECK(e.sampling != nullptr);
      *begin.add_sampling() = ToProto(*e.sampling);
    }
    if (Status s = pipeline_->Send(begin); !s.ok()) {
      OnBroken(epoch_, s);
      return;
    }
  }
}

}  // namespace tandem
