#pragma once
// Tensor-parallel communication between the ranks of one stage. The layer
// function calls AllReduceSum once after the attention block and once after
// the MLP block; everything else a rank computes is local.
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace tandem {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Replaces data[0, count) on every rank with the element-wise sum over all
  // ranks. Every rank must call it with the same count; it returns on a rank
  // once that rank's buffer holds the sum.
  virtual void AllReduceSum(float* data, size_t count) = 0;
};

// One rank alone: AllReduceSum leaves the data as it is.
class SoloCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllReduceSum(float*, size_t) override {}
};

// N ranks on N threads of one process. All ranks publish their buffer, wait
// at a barrier, each rank then sums a disjoint slice of the elements over the
// ranks in rank order (0, 1, ..., N-1) and writes it into every buffer, and a
// second barrier ends the call. The summation order is fixed, so results are
// reproducible and identical on every rank.
class InProcessGroup {
 public:
  explicit InProcessGroup(int size);
  ~InProcessGroup();
  int size() const { return size_; }
  // The communicator of rank `rank`; owned by the group, valid while it lives.
  Communicator* rank_communicator(int rank);

 private:
  class RankCommunicator;
  void Barrier();
  void AllReduceSum(int rank, float* data, size_t count);

  int size_;
  std::vector<std::unique_ptr<RankCommunicator>> ranks_;
  std::vector<float*> buffers_;
  std::vector<size_t> counts_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  unsigned generation_ = 0;
};

}  // namespace tandem
