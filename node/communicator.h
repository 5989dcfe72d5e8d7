#pragma once
// Tensor-parallel communication between the ranks of one stage. The layer
// function calls AllReduceSum once after the attention block and once after
// the MLP block; everything else a rank computes is local. Here the ranks of
// a CPU stage (threads of one process); node/cuda_communicator.h has those
// of a GPU stage (NCCL).
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
  // ranks. Every rank must call it with the same count. Host ranks: it
  // returns once this rank's buffer holds the sum. GPU ranks: data is device
  // memory and the call is ordered on the rank's stream: it returns once the
  // reduction is enqueued, and what the stream runs next sees the sum.
  virtual void AllReduceSum(float* data, size_t count) = 0;
};

// One rank alone: AllReduceSum leaves the data as it is.
class SoloCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllReduceSum(float*, size_t) override {}
};

// Where N threads of one process meet: Wait returns once all N have
// called it (then it can be used again), or at once, with false, after
// Abort.
class RankBarrier {
 public:
  explicit RankBarrier(int size);
  int size() const { return size_; }
  bool Wait();
  // Frees every thread that waits, and every later Wait. Thread-safe.
  void Abort();

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  unsigned generation_ = 0;
  bool aborted_ = false;
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
  void AllReduceSum(int rank, float* data, size_t count);

  int size_;
  std::vector<std::unique_ptr<RankCommunicator>> ranks_;
  std::vector<float*> buffers_;
  std::vector<size_t> counts_;
  RankBarrier barrier_;
};

}  // namespace tandem
