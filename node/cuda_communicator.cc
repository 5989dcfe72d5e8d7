#include "node/cuda_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>

#include "absl/strings/str_join.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops.h"

namespace tandem {
namespace {

// Ranks on distinct GPUs, one NCCL communicator each.
class NcclGroup final : public CudaRankGroup {
 public:
  class Rank final : public Communicator {
   public:
    Rank(int rank, int size, ncclComm_t comm, cudaStream_t stream)
        : rank_(rank), size_(size), comm_(comm), stream_(stream) {}
    int rank() const override { return rank_; }
    int size() const override { return size_; }
    void AllReduceSum(float* data, size_t count) override {
      NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream_));
    }

   private:
    int rank_, size_;
    ncclComm_t comm_;
    cudaStream_t stream_;
  };

  NcclGroup(std::vector<ncclComm_t> comms, const std::vector<cudaStream_t>& streams)
      : comms_(std::move(comms)) {
    const int n = static_cast<int>(comms_.size());
    for (int r = 0; r < n; ++r) {
      ranks_.push_back(std::make_unique<Rank>(r, n, comms_[static_cast<size_t>(r)],
                                              streams[static_cast<size_t>(r)]));
    }
  }
  ~NcclGroup() override {
    if (aborted_.load()) return;  // ncclCommAbort freed them
    for (ncclComm_t c : comms_) ncclCommDestroy(c);
  }
  int size() const override { return static_cast<int>(comms_.size()); }
  Communicator* rank(int r) override { return ranks_[static_cast<size_t>(r)].get(); }
  bool capturable() const override { return true; }
  void Abort() override {
    if (aborted_.exchange(true)) return;
    for (ncclComm_t c : comms_) ncclCommAbort(c);
  }

 private:
  std::vector<ncclComm_t> comms_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::atomic<bool> aborted_{false};
};

// Ranks that share one GPU: host barriers around device copies and adds.
class SharedDeviceGroup final : public CudaRankGroup {
 public:
  class Rank final : public Communicator {
   public:
    Rank(SharedDeviceGroup* group, int rank) : group_(group), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return group_->size(); }
    void AllReduceSum(float* data, size_t count) override {
      group_->AllReduceSum(rank_, data, count);
    }

   private:
    SharedDeviceGroup* group_;
    int rank_;
  };

  explicit SharedDeviceGroup(const std::vector<cudaStream_t>& streams)
      : streams_(streams),
        buffers_(streams.size()),
        counts_(streams.size()),
        barrier_(static_cast<int>(streams.size())) {
    for (int r = 0; r < size(); ++r) ranks_.push_back(std::make_unique<Rank>(this, r));
  }
  int size() const override { return static_cast<int>(streams_.size()); }
  Communicator* rank(int r) override { return ranks_[static_cast<size_t>(r)].get(); }
  bool capturable() const override { return false; }
  void Abort() override { barrier_.Abort(); }

 private:
  // Throws CudaError once the group is aborted, so no rank waits for one
  // that will not come.
  void Barrier() {
    if (!barrier_.Wait()) throw cuda::CudaError("the tensor-parallel group was aborted");
  }

  void AllReduceSum(int rank, float* data, size_t count) {
    const size_t n = streams_.size();
    if (n == 1) return;
    cudaStream_t s = streams_[static_cast<size_t>(rank)];
    CUDA_CHECK(cudaStreamSynchronize(s));  // this rank's partial sums are complete
    buffers_[static_cast<size_t>(rank)] = data;
    counts_[static_cast<size_t>(rank)] = count;
    Barrier();  // every buffer is published and complete
    for (size_t r = 0; r < n; ++r) {
      if (counts_[r] != count) {
        Abort();
        throw cuda::CudaError("tensor-parallel ranks all-reduced different counts");
      }
    }
    const size_t begin = count * static_cast<size_t>(rank) / n;
    const size_t end = count * static_cast<size_t>(rank + 1) / n;
    if (end > begin) {
      float* sum = buffers_[0] + begin;
      for (size_t r = 1; r < n; ++r) {
        cuda::AddInPlace(sum, buffers_[r] + begin, static_cast<int64_t>(end - begin), s);
      }
      for (size_t r = 1; r < n; ++r) {
        CUDA_CHECK(cudaMemcpyAsync(buffers_[r] + begin, sum, (end - begin) * sizeof(float),
                                   cudaMemcpyDeviceToDevice, s));
      }
      CUDA_CHECK(cudaStreamSynchronize(s));
    }
    Barrier();  // every slice is written before any rank's stream reads its buffer
  }

  std::vector<cudaStream_t> streams_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::vector<float*> buffers_;
  std::vector<size_t> counts_;
  RankBarrier barrier_;
};

}  // namespace

StatusOr<std::unique_ptr<CudaRankGroup>> CudaRankGroup::Create(
    const std::vector<int>& devices, const std::vector<cudaStream_t>& streams) {
  if (devices.empty()) return absl::InvalidArgumentError("no CUDA devices for the ranks");
  if (streams.size() != devices.size()) {
    return absl::InvalidArgumentError(absl::StrCat(devices.size(), " devices but ",
                                                   streams.size(), " streams"));
  }
  std::vector<int> sorted = devices;
  std::sort(sorted.begin(), sorted.end());
  const bool distinct = std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end();
  const bool one_device = sorted.front() == sorted.back();
  if (!distinct && !one_device) {
    return absl::InvalidArgumentError(
        "a CUDA device may be named for several ranks only when all ranks share it");
  }
  if (!distinct || devices.size() == 1) {
    return std::unique_ptr<CudaRankGroup>(new SharedDeviceGroup(streams));
  }
  std::vector<ncclComm_t> comms(devices.size());
  const ncclResult_t st =
      ncclCommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data());
  if (st != ncclSuccess) {
    return absl::UnavailableError(absl::StrCat("NCCL cannot join CUDA devices ",
                                               absl::StrJoin(devices, ","), ": ",
                                               ncclGetErrorString(st)));
  }
  return std::unique_ptr<CudaRankGroup>(new NcclGroup(std::move(comms), streams));
}

}  // namespace tandem
