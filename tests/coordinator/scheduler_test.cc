#include "coordinator/scheduler.h"

#include <map>
#include <random>
#include <set>

#include "gtest/gtest.h"

namespace tandem {
namespace {

SequenceRequest Request(uint64_t id, int prompt_len, int max_tokens) {
  SequenceRequest r;
  r.id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(100 + i);
  r.max_tokens = max_tokens;
  r.stop_ids = {2};
  return r;
}

SchedulerOptions Options(int stages = 1) {
  SchedulerOptions o;
  o.num_stages = stages;
  o.max_batch_tokens = 64;
  o.prefill_chunk = 16;
  o.kv_capacity_tokens = 1024;
  return o;
}

// Answers every sampling entry with token `7` (never a stop id).
std::vector<StepToken> Answer(const MicroBatch& b, int32_t token = 7) {
  std::vector<StepToken> out;
  for (const BatchEntry& e : b.entries)
    if (e.sample) out.push_back({e.sequence_id, token, -0.5f});
  return out;
}

TEST(SchedulerTest, ChunkedPrefillThenDecodeToLength) {
  Scheduler s(Options());
  ASSERT_TRUE(s.Add(Request(1, 40, 3)).ok());
  int positions_seen = 0;
  std::vector<SequenceEvent> all;
  while (!s.idle()) {
    auto b = s.NextBatch();
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->entries.size(), 1u);
    EXPECT_EQ(b->entries[0].start_position, positions_seen);
    positions_seen += static_cast<int>(b->entries[0].tokens.size());
    EXPECT_LE(b->entries[0].tokens.size(), 16u);
    auto events = s.Complete(b->step_id, Answer(*b));
    ASSERT_TRUE(events.ok());
    all.insert(all.end(), events->begin(), events->end());
  }
  // 40 prompt tokens in chunks of 16 (3 steps), then 2 more decode steps.
  EXPECT_EQ(positions_seen, 42);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all.back().kind, SequenceEvent::Kind::kFinished);
  EXPECT_EQ(all.back().finish_reason, "length");
  EXPECT_EQ(s.TakeReleased(), std::vector<uint64_t>{1});
}

TEST(SchedulerTest, StopIdFinishes) {
  Scheduler s(Options());
  ASSERT_TRUE(s.Add(Request(5, 4, 100)).ok());
  auto b = s.NextBatch();
  auto events = s.Complete(b->step_id, Answer(*b, /*token=*/2));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].finish_reason, "stop");
  EXPECT_TRUE(s.idle());
}

TEST(SchedulerTest, MicroBatchesAreDisjointAndFillEveryStage) {
  Scheduler s(Options(/*stages=*/2));
  for (uint64_t id = 1; id <= 8; ++id) ASSERT_TRUE(s.Add(Request(id, 1, 10)).ok());
  auto a = s.NextBatch();
  auto b = s.NextBatch();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(s.NextBatch().has_value());  // both slots busy
  EXPECT_EQ(a->entries.size(), 4u);
  EXPECT_EQ(b->entries.size(), 4u);
  std::set<uint64_t> ids;
  for (auto* m : {&*a, &*b})
    for (const BatchEntry& e : m->entries) EXPECT_TRUE(ids.insert(e.sequence_id).second);
  ASSERT_TRUE(s.Complete(a->step_id, Answer(*a)).ok());
  auto c = s.NextBatch();
  ASSERT_TRUE(c.has_value());
  for (const BatchEntry& e : c->entries) EXPECT_EQ(ids.count(e.sequence_id), 1u);
  EXPECT_EQ(c->slot, a->slot);
}

TEST(SchedulerTest, AdmissionWaitsForKvAndRefusesWhatNeverFits) {
  SchedulerOptions o = Options();
  o.kv_capacity_tokens = 64;
  Scheduler s(o);
  ASSERT_TRUE(s.Add(Request(1, 30, 10)).ok());   // 48 tokens reserved (3 blocks)
  ASSERT_TRUE(s.Add(Request(2, 20, 10)).ok());   // needs 32: waits
  EXPECT_EQ(s.running(), 1);
  EXPECT_EQ(s.waiting(), 1);
  auto too_big = s.Add(Request(3, 60, 10));
  EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(too_big.message().find("64"), std::string::npos) << too_big;
  EXPECT_TRUE(s.Cancel(1));
  EXPECT_EQ(s.running(), 1);
  EXPECT_EQ(s.waiting(), 0);
  EXPECT_TRUE(s.TakeReleased().empty());  // 1 never reached a stage
}

TEST(SchedulerTest, RejectsBadRequests) {
  SchedulerOptions o = Options();
  o.max_context = 32;
  Scheduler s(o);
  EXPECT_FALSE(s.Add(Request(1, 0, 4)).ok());
  EXPECT_FALSE(s.Add(Request(1, 4, 0)).ok());
  EXPECT_FALSE(s.Add(Request(1, 40, 4)).ok());  // longer than the context
  ASSERT_TRUE(s.Add(Request(1, 4, 4)).ok());
  EXPECT_EQ(s.Add(Request(1, 4, 4)).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(s.Complete(999, {}).ok());
}

TEST(SchedulerTest, CancelInFlightIsReleasedWhenTheStepReturns) {
  Scheduler s(Options());
  ASSERT_TRUE(s.Add(Request(1, 4, 10)).ok());
  auto b = s.NextBatch();
  EXPECT_TRUE(s.Cancel(1));
  EXPECT_TRUE(s.TakeReleased().empty());
  auto events = s.Complete(b->step_id, Answer(*b));
  ASSERT_TRUE(events.ok());
  EXPECT_TRUE(events->empty());
  EXPECT_EQ(s.TakeReleased(), std::vector<uint64_t>{1});
  EXPECT_TRUE(s.idle());
}

TEST(SchedulerTest, FailedStepFailsItsSequencesOnly) {
  Scheduler s(Options(2));
  ASSERT_TRUE(s.Add(Request(1, 2, 5)).ok());
  ASSERT_TRUE(s.Add(Request(2, 2, 5)).ok());
  auto a = s.NextBatch();
  auto b = s.NextBatch();
  ASSERT_TRUE(a && b);
  auto failed = s.Fail(a->step_id);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0], a->entries[0].sequence_id);
  EXPECT_EQ(s.running(), 1);
}

// Random arrivals and cancellations: every admitted sequence ends exactly
// once, KV reservations return to zero, positions are contiguous.
TEST(SchedulerTest, RandomWorkloadKeepsInvariants) {
  std::mt19937 rng(std::random_device{}());
  SchedulerOptions o = Options(3);
  o.kv_capacity_tokens = 256;
  Scheduler s(o);
  std::map<uint64_t, int> next_position;
  std::set<uint64_t> finished;
  uint64_t next_id = 1;
  std::vector<MicroBatch> flying;
  for (int iter = 0; iter < 2000; ++iter) {
    if (next_id <= 60 && rng() % 3 == 0) {
      uint64_t id = next_id++;
      if (s.Add(Request(id, 1 + rng() % 40, 1 + rng() % 20)).ok()) next_position[id] = 0;
    }
    if (rng() % 50 == 0 && !next_position.empty()) {
      auto it = next_position.begin();
      std::advance(it, rng() % next_position.size());
      s.Cancel(it->first);
    }
    while (auto b = s.NextBatch()) flying.push_back(std::move(*b));
    if (!flying.empty()) {
      size_t k = rng() % flying.size();
      MicroBatch b = std::move(flying[k]);
      flying.erase(flying.begin() + k);
      for (const BatchEntry& e : b.entries) {
        ASSERT_EQ(e.start_position, next_position[e.sequence_id]);
        next_position[e.sequence_id] += static_cast<int>(e.tokens.size());
      }
      auto events = s.Complete(b.step_id, Answer(b, rng() % 10 == 0 ? 2 : 7));
      ASSERT_TRUE(events.ok());
      for (const SequenceEvent& ev : *events) {
        if (ev.kind == SequenceEvent::Kind::kFinished) {
          EXPECT_TRUE(finished.insert(ev.sequence_id).second);
        }
      }
    }
    EXPECT_LE(s.kv_reserved_tokens(), 256);
  }
  while (!flying.empty()) {
    ASSERT_TRUE(s.Complete(flying.back().step_id, Answer(flying.back())).ok());
    flying.pop_back();
  }
}

}  // namespace
}  // namespace tandem
