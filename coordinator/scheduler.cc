#include "coordinator/scheduler.h"

#include <algorithm>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace tandem {

int MicroBatch::num_tokens() const {
  int n = 0;
  for (const BatchEntry& e : entries) n += static_cast<int>(e.tokens.size());
  return n;
}

Scheduler::Scheduler(SchedulerOptions options) : options_(options) {
  CHECK_GE(options_.num_stages, 1);
  CHECK_GE(options_.max_batch_tokens, 1);
  CHECK_GE(options_.max_sequences, 1);
  CHECK_GE(options_.prefill_chunk, 1);
  CHECK_GE(options_.block_size, 1);
  slot_busy_.assign(options_.num_stages, false);
}

int64_t Scheduler::ReservationFor(const SequenceRequest& r) const {
  int64_t tokens = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
  int64_t blocks = (tokens + options_.block_size - 1) / options_.block_size;
  return blocks * options_.block_size;
}

Status Scheduler::Add(SequenceRequest request) {
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be at least 1, got ", request.max_tokens));
  }
  if (running_.count(request.id) ||
      std::any_of(waiting_.begin(), waiting_.end(),
                  [&](const SequenceRequest& r) { return r.id == request.id; })) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", request.id, " already exists"));
  }
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  if (options_.max_context > 0) {
    if (prompt >= options_.max_context) {
      return absl::InvalidArgumentError(absl::StrCat("the prompt has ", prompt,
                                                     " tokens; the model's context is ",
                                                     options_.max_context, " tokens"));
    }
    request.max_tokens = static_cast<int>(
        std::min<int64_t>(request.max_tokens, options_.max_context - prompt));
  }
  if (ReservationFor(request) > options_.kv_capacity_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt (", prompt, " tokens) plus max_tokens (", request.max_tokens, ") needs ",
        ReservationFor(request), " tokens of KV cache; the smallest stage holds ",
        options_.kv_capacity_tokens));
  }
  waiting_.push_back(std::move(request));
  Admit();
  return absl::OkStatus();
}

void Scheduler::Admit() {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_sequences) {
    const int64_t need = ReservationFor(waiting_.front());
    if (kv_reserved_tokens_ + need > options_.kv_capacity_tokens) break;
    SequenceRequest r = std::move(waiting_.front());
    waiting_.pop_front();
    uint64_t id = r.id;
    Sequence s;
    s.history = r.prompt;
    s.request = std::move(r);
    s.reserved_tokens = need;
    kv_reserved_tokens_ += need;
    running_.emplace(id, std::move(s));
    order_.push_back(id);
  }
}

bool Scheduler::Cancel(uint64_t sequence_id) {
  auto w = std::find_if(waiting_.begin(), waiting_.end(),
                        [&](const SequenceRequest& r) { return r.id == sequence_id; });
  if (w != waiting_.end()) {
    waiting_.erase(w);
    return true;
  }
  auto it = running_.find(sequence_id);
  if (it == running_.end()) return false;
  if (it->second.in_flight) {
    it->second.cancelled = true;  // retired when its step comes back
  } else {
    Retire(sequence_id);
  }
  return true;
}

void Scheduler::Retire(uint64_t id) {
  auto it = running_.find(id);
  CHECK(it != running_.end());
  kv_reserved_tokens_ -= it->second.reserved_tokens;
  // A sequence that never reached a stage holds no KV there.
  if (it->second.computed > 0 || it->second.in_flight) released_.push_back(id);
  running_.erase(it);
  order_.erase(std::find(order_.begin(), order_.end(), id));
  Admit();
}

std::optional<MicroBatch> Scheduler::NextBatch() {
  auto free_slot = std::find(slot_busy_.begin(), slot_busy_.end(), false);
  if (free_slot == slot_busy_.end() || order_.empty()) return std::nullopt;

  // Spread the running sequences over the in-flight slots.
  const int per_batch = static_cast<int>(
      (order_.size() + options_.num_stages - 1) / static_cast<size_t>(options_.num_stages));
  std::vector<uint64_t> candidates;
  const size_t n = order_.size();
  for (size_t k = 0; k < n; ++k) {
    uint64_t id = order_[(rotate_ + k) % n];
    const Sequence& s = running_.at(id);
    if (!s.in_flight && !s.cancelled) candidates.push_back(id);
  }
  if (candidates.empty()) return std::nullopt;
  rotate_ = (rotate_ + 1) % n;

  MicroBatch batch;
  int budget = options_.max_batch_tokens;
  int taken = 0;
  // Decodes first (one token each), then prompt chunks.
  for (int pass = 0; pass < 2; ++pass) {
    for (uint64_t id : candidates) {
      if (taken >= per_batch || budget <= 0) break;
      Sequence& s = running_.at(id);
      if (s.in_flight) continue;
      const int pending = static_cast<int>(s.history.size()) - s.computed;
      const bool decode = pending == 1;
      if ((pass == 0) != decode) continue;
      const int count = std::min({pending, options_.prefill_chunk, budget});
      BatchEntry e;
      e.sequence_id = id;
      e.start_position = s.computed;
      e.tokens.assign(s.history.begin() + s.computed, s.history.begin() + s.computed + count);
      e.sample = s.computed + count == static_cast<int>(s.history.size());
      e.sampling = &s.request.sampling;
      e.history = &s.history;
      batch.entries.push_back(std::move(e));
      s.in_flight = true;
      budget -= count;
      ++taken;
    }
  }
  if (batch.entries.empty()) return std::nullopt;
  batch.step_id = next_step_id_++;
  batch.slot = static_cast<int>(free_slot - slot_busy_.begin());
  *free_slot = true;
  InFlight f;
  f.slot = batch.slot;
  for (const BatchEntry& e : batch.entries) {
    f.sequences.push_back(e.sequence_id);
    f.tokens_per_sequence.push_back(static_cast<int>(e.tokens.size()));
  }
  in_flight_.emplace(batch.step_id, std::move(f));
  return batch;
}

StatusOr<std::vector<SequenceEvent>> Scheduler::Complete(
    uint64_t step_id, const std::vector<StepToken>& tokens) {
  auto it = in_flight_.find(step_id);
  if (it == in_flight_.end()) {
    return absl::NotFoundError(absl::StrCat("step ", step_id, " is not in flight"));
  }
  InFlight f = std::move(it->second);
  in_flight_.erase(it);
  slot_busy_[f.slot] = false;

  std::unordered_map<uint64_t, const StepToken*> by_sequence;
  for (const StepToken& t : tokens) by_sequence[t.sequence_id] = &t;

  std::vector<SequenceEvent> events;
  for (size_t k = 0; k < f.sequences.size(); ++k) {
    const uint64_t id = f.sequences[k];
    Sequence& s = running_.at(id);
    s.in_flight = false;
    s.computed += f.tokens_per_sequence[k];
    if (s.cancelled) {
      Retire(id);
      continue;
    }
    if (s.computed < static_cast<int>(s.history.size())) continue;  // more prompt to go
    auto t = by_sequence.find(id);
    if (t == by_sequence.end()) {
      events.push_back({SequenceEvent::Kind::kFinished, id, 0, 0,
                        "error: the last stage returned no token"});
      Retire(id);
      continue;
    }
    const int32_t token = t->second->token;
    s.history.push_back(token);
    ++s.generated;
    events.push_back({SequenceEvent::Kind::kToken, id, token, t->second->logprob, ""});
    const auto& stops = s.request.stop_ids;
    if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
      events.push_back({SequenceEvent::Kind::kFinished, id, 0, 0, "stop"});
      Retire(id);
    } else if (s.generated >= s.request.max_tokens) {
      events.push_back({SequenceEvent::Kind::kFinished, id, 0, 0, "length"});
      Retire(id);
    }
  }
  return events;
}

std::vector<uint64_t> Scheduler::Fail(uint64_t step_id) {
  std::vector<uint64_t> failed;
  auto it = in_flight_.find(step_id);
  if (it == in_flight_.end()) return failed;
  InFlight f = std::move(it->second);
  in_flight_.erase(it);
  slot_busy_[f.slot] = false;
  for (uint64_t id : f.sequences) {
    Sequence& s = running_.at(id);
    s.in_flight = false;
    if (!s.cancelled) failed.push_back(id);
    Retire(id);
  }
  return failed;
}

std::vector<uint64_t> Scheduler::TakeReleased() {
  std::vector<uint64_t> out;
  out.swap(released_);
  return out;
}

}  // namespace tandem
