#pragma once
// The tensor-parallel ranks of a GPU stage (node/communicator.h has the
// contract): rank r computes on devices[r] and reduces on streams[r], a
// stream of that device. AllReduceSum is stream-ordered and throws
// cuda::CudaError when the reduction cannot be enqueued.
//  - Distinct devices: NCCL, one communicator per device from
//    ncclCommInitAll; each rank's thread enqueues its own rank's
//    all-reduces. They can be captured in CUDA graphs.
//  - One device named for every rank (NCCL refuses two ranks on a device):
//    the ranks wait for their streams at a host barrier and each sums a
//    disjoint slice of the elements over the ranks in rank order, with
//    device copies and adds; a second barrier ends the call. Slower and not
//    capturable: it lets tensor parallelism run, and be tested, on one GPU.
// Part of the CUDA backend module (node/cuda_backend.h).
#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "core/status.h"
#include "node/communicator.h"

namespace tandem {

class CudaRankGroup {
 public:
  // Errors: no devices, a stream count that differs from the device count,
  // devices that repeat without all being the same, or NCCL failing to set
  // up (its message).
  static StatusOr<std::unique_ptr<CudaRankGroup>> Create(const std::vector<int>& devices,
                                                         const std::vector<cudaStream_t>& streams);
  virtual ~CudaRankGroup() = default;
  virtual int size() const = 0;
  // Rank r's communicator; owned by the group, valid while it lives.
  virtual Communicator* rank(int r) = 0;
  // Whether AllReduceSum may be called while the stream is being captured.
  virtual bool capturable() const = 0;
  // Ends the group's pending and later reductions, so ranks that wait on a
  // rank that failed get back (their sums are not valid). Thread-safe; the
  // group is unusable afterwards.
  virtual void Abort() = 0;
};

}  // namespace tandem
