#include "node/communicator.h"

#include "core/check.h"

namespace tandem {

class InProcessGroup::RankCommunicator final : public Communicator {
 public:
  RankCommunicator(InProcessGroup* group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  void AllReduceSum(float* data, size_t count) override {
    group_->AllReduceSum(rank_, data, count);
  }

 private:
  InProcessGroup* group_;
  int rank_;
};

RankBarrier::RankBarrier(int size) : size_(size) { CHECK_GE(size, 1); }

bool RankBarrier::Wait() {
  std::unique_lock lock(mutex_);
  if (aborted_) return false;
  const unsigned generation = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return true;
  }
  cv_.wait(lock, [&] { return aborted_ || generation_ != generation; });
  return generation_ != generation;
}

void RankBarrier::Abort() {
  {
    std::lock_guard lock(mutex_);
    aborted_ = true;
  }
  cv_.notify_all();
}

InProcessGroup::InProcessGroup(int size)
    : size_(size),
      buffers_(static_cast<size_t>(size)),
      counts_(static_cast<size_t>(size)),
      barrier_(size) {
  CHECK_GE(size, 1);
  for (int r = 0; r < size; ++r) ranks_.push_back(std::make_unique<RankCommunicator>(this, r));
}

InProcessGroup::~InProcessGroup() = default;

Communicator* InProcessGroup::rank_communicator(int rank) {
  CHECK(rank >= 0 && rank < size_);
  return ranks_[static_cast<size_t>(rank)].get();
}

void InProcessGroup::AllReduceSum(int rank, float* data, size_t count) {
  if (size_ == 1) return;
  buffers_[static_cast<size_t>(rank)] = data;
  counts_[static_cast<size_t>(rank)] = count;
  barrier_.Wait();  // every buffer is published (the mutex orders the writes)
  for (int r = 0; r < size_; ++r) CHECK_EQ(counts_[static_cast<size_t>(r)], count);
  size_t begin = count * static_cast<size_t>(rank) / static_cast<size_t>(size_);
  size_t end = count * static_cast<size_t>(rank + 1) / static_cast<size_t>(size_);
  for (size_t i = begin; i < end; ++i) {
    float sum = buffers_[0][i];
    for (int r = 1; r < size_; ++r) sum += buffers_[static_cast<size_t>(r)][i];
    for (int r = 0; r < size_; ++r) buffers_[static_cast<size_t>(r)][i] = sum;
  }
  barrier_.Wait();  // every slice is written before any rank reads its buffer again
}

}  // namespace tandem
