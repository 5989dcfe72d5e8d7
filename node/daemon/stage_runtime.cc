#include "node/daemon/stage_runtime.h"

#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/logging.h"

namespace tandem {

namespace {

SamplingParams FromProto(const v1::SamplingParams& p) {
  SamplingParams s;
  s.temperature = p.temperature();
  s.top_k = static_cast<int>(p.top_k());
  s.top_p = p.top_p() > 0 ? p.top_p() : 1.0f;
  s.min_p = p.min_p();
  s.repetition_penalty = p.repetition_penalty() > 0 ? p.repetition_penalty() : 1.0f;
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  if (p.has_seed()) s.seed = p.seed();
  return s;
}

}  // namespace

StatusOr<std::unique_ptr<StageRuntime>> StageRuntime::Create(
    const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
    const StageOptions& options, std::unique_ptr<NextStageLink> next,
    const std::vector<int>& cuda_devices) {
  ASSIGN_OR_RETURN(auto executor, CreateStage(spec, std::move(checkpoint), options, cuda_devices));
  if (!executor->is_last() && !next) {
    return absl::InvalidArgumentError("a stage that is not the last needs a next stage address");
  }
  return std::unique_ptr<StageRuntime>(new StageRuntime(std::move(executor), std::move(next)));
}

StageRuntime::StageRuntime(std::unique_ptr<Stage> executor,
                           std::unique_ptr<NextStageLink> next)
    : executor_(std::move(executor)), next_(std::move(next)) {
  kv_free_blocks_ = executor_->kv_cache().free_blocks();
  compute_ = std::thread([this] { ComputeLoop(); });
}

StageRuntime::~StageRuntime() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  compute_.join();
  // Steps still queued get an answer, so no stream waits forever.
  for (Work& w : queue_) {
    if (auto* step = std::get_if<StepInput>(&w)) {
      step->reply(StepError(step->begin, "the stage was unloaded"));
    }
  }
  next_.reset();
}

void StageRuntime::Submit(StepInput input) {
  {
    std::lock_guard lock(mutex_);
    queue_.emplace_back(std::move(input));
  }
  cv_.notify_one();
}

void StageRuntime::Release(std::vector<uint64_t> sequence_ids) {
  {
    std::lock_guard lock(mutex_);
    queue_.emplace_back(std::move(sequence_ids));
  }
  cv_.notify_one();
}

StageStats StageRuntime::stats() const {
  StageStats s;
  s.steps = steps_done_.load();
  s.compute_ms_total = compute_ms_.load();
  s.kv_total_blocks = executor_->kv_cache().num_blocks();
  s.kv_free_blocks = kv_free_blocks_.load();
  if (next_) {
    s.link_raw_bytes = next_->raw_bytes();
    s.link_wire_bytes = next_->wire_bytes();
    s.link_codec = next_->codec_name();
  }
  return s;
}

void StageRuntime::ComputeLoop() {
  while (true) {
    Work work;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    if (auto* ids = std::get_if<std::vector<uint64_t>>(&work)) {
      for (uint64_t id : *ids) {
        executor_->Release(id);
        samplers_.erase(id);
      }
      kv_free_blocks_ = executor_->kv_cache().free_blocks();
      continue;
    }
    RunStep(std::get<StepInput>(work));
  }
}

Status StageRuntime::ValidateStep(const StepInput& input) const {
  const v1::ForwardBegin& b = input.begin;
  if (b.sequences_size() == 0) return absl::InvalidArgumentError("a step without sequences");
  int64_t tokens = 0;
  for (const v1::SequenceSlice& s : b.sequences()) {
    if (s.token_count() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s.sequence_id(), " has no tokens in step ", b.step_id()));
    }
    tokens += s.token_count();
  }
  if (b.token_ids_size() != tokens) {
    return absl::InvalidArgumentError(absl::StrCat("step ", b.step_id(), " has ", tokens,
                                                   " rows but ", b.token_ids_size(), " token ids"));
  }
  if (executor_->is_last() && b.sampling_size() != b.sequences_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("step ", b.step_id(), " has ", b.sequences_size(), " sequences but ",
                     b.sampling_size(), " sampling entries"));
  }
  if (!executor_->is_first() &&
      static_cast<int64_t>(input.hidden.size()) != tokens * executor_->spec().hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("step ", b.step_id(), ": hidden states of ", input.hidden.size(),
                     " values do not match ", tokens, " rows of ", executor_->spec().hidden_size));
  }
  return absl::OkStatus();
}

void StageRuntime::RunStep(StepInput& input) {
  const v1::ForwardBegin& b = input.begin;
  if (Status s = ValidateStep(input); !s.ok()) {
    input.reply(StepError(b, std::string(s.message())));
    return;
  }
  steps_.clear();
  tokens_.clear();
  for (const v1::SequenceSlice& s : b.sequences()) {
    steps_.push_back({s.sequence_id(), s.start_position(), s.token_count()});
  }
  for (uint32_t t : b.token_ids()) tokens_.push_back(static_cast<int32_t>(t));

  auto t0 = std::chrono::steady_clock::now();
  const std::span<const int32_t> first_tokens =
      executor_->is_first() ? std::span<const int32_t>(tokens_) : std::span<const int32_t>();
  if (!executor_->is_last()) {
    auto out = executor_->Forward(steps_, first_tokens, input.hidden);
    if (!out.ok()) {
      input.reply(StepError(b, std::string(out.status().message())));
      return;
    }
    kv_free_blocks_ = executor_->kv_cache().free_blocks();
    std::vector<float> hidden(out->begin(), out->end());
    compute_ms_ = compute_ms_.load() + std::chrono::duration<double, std::milli>(
                                           std::chrono::steady_clock::now() - t0).count();
    ++steps_done_;
    v1::ForwardBegin next = b;
    next.clear_tensor();
    next_->Send(std::move(next), std::move(hidden), executor_->spec().hidden_size,
                std::move(input.reply));
    return;
  }

  // Last stage: every sequence's sampler records its tokens of the step
  // (the repetition penalty counts the prompt); the sequences that asked for
  // a token are sampled by the stage, on its device. Parameters are checked
  // before the step runs, so a bad one leaves the KV cache as it was; a step
  // that fails fails its sequences, which the coordinator then releases.
  const int vocab = executor_->spec().vocab_size;
  step_samplers_.clear();
  size_t row_token = 0;
  for (int i = 0; i < b.sequences_size(); ++i) {
    const v1::SequenceSlice& s = b.sequences(i);
    auto& sampler = samplers_[s.sequence_id()];
    if (!sampler) {
      SamplingParams params = FromProto(b.sampling(i));
      if (Status st = ValidateSamplingParams(params); !st.ok()) {
        samplers_.erase(s.sequence_id());
        input.reply(StepError(b, absl::StrCat("sequence ", s.sequence_id(), ": ", st.message())));
        return;
      }
      sampler = std::make_unique<SequenceSampler>(params, vocab);
    }
    sampler->SetPrompt(std::span<const int32_t>(tokens_).subspan(row_token, s.token_count()));
    row_token += s.token_count();
    step_samplers_.push_back(s.sample() ? sampler.get() : nullptr);
  }
  auto sampled = executor_->ForwardAndSample(steps_, first_tokens, input.hidden, step_samplers_);
  if (!sampled.ok()) {
    input.reply(StepError(b, std::string(sampled.status().message())));
    return;
  }
  kv_free_blocks_ = executor_->kv_cache().free_blocks();
  v1::StepResult result;
  result.set_step_id(b.step_id());
  result.set_micro_batch_id(b.micro_batch_id());
  for (int i = 0; i < b.sequences_size(); ++i) {
    if (step_samplers_[static_cast<size_t>(i)] == nullptr) continue;
    const SampledToken& t = (*sampled)[static_cast<size_t>(i)];
    v1::TokenResult* r = result.add_tokens();
    r->set_sequence_id(b.sequences(i).sequence_id());
    r->set_token_id(static_cast<uint32_t>(t.token));
    r->set_logprob(t.logprob);
  }
  compute_ms_ = compute_ms_.load() +
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                    .count();
  ++steps_done_;
  input.reply(result);
}

}  // namespace tandem
