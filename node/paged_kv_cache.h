#pragma once
// The KV cache of one stage: fixed-size blocks of kKvBlockSize tokens handed
// out to sequences from a free list, one block table per sequence, and the
// key/value storage of every layer of the stage on every tensor-parallel rank
// (each rank holds its own kv heads). Capacity comes from a memory budget,
// allocated and touched (resident) at creation.
//
// Sequence ids are opaque 64-bit values (they arrive from the network) and
// are only ever looked up in a map. Not thread-safe: the stage executor
// reserves blocks before the ranks run and only reads tables while they do.
#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/check.h"
#include "core/status.h"
#include "core/tensor.h"
#include "kernels/cpu/paged_attention.h"

namespace tandem {

inline constexpr int kKvBlockSize = 16;

struct PagedKvCacheOptions {
  int num_layers = 0;         // layers of this stage
  int tp = 1;                 // tensor-parallel ranks
  int kv_heads_per_rank = 0;  // num_kv_heads / tp
  int head_dim = 0;
  size_t budget_bytes = 0;    // K and V of all layers and ranks together
  // False: only the block accounting lives here, the keys and values live
  // elsewhere (GPU memory, laid out as Layer() would be); Layer() is then
  // unavailable and nothing is allocated.
  bool host_storage = true;
};

// A sequence's claim in one step: after it, the cache holds `length` tokens.
struct KvReservation {
  uint64_t seq_id = 0;
  int64_t start = 0;   // position of the step's first token
  int64_t length = 0;  // start + tokens in this step
};

class PagedKvCache {
 public:
  // Fails when the budget does not hold a single block.
  static StatusOr<PagedKvCache> Create(const PagedKvCacheOptions& options);

  // Bytes of one block: K and V of kKvBlockSize tokens for every layer and rank.
  static size_t BlockBytes(const PagedKvCacheOptions& options);

  // Makes room for every reservation at once, or for none: a sequence seen
  // for the first time is created, an existing one grows. Errors (nothing is
  // changed): a start beyond the tokens cached for that sequence, an id that
  // appears twice, or not enough free blocks (the message says how many are
  // needed, free and in total). A start below the cached length rewinds the
  // sequence to `start` first.
  Status Reserve(std::span<const KvReservation> reservations);

  // Frees the sequence's blocks; unknown ids are ignored (release is idempotent).
  void Release(uint64_t seq_id);

  bool Contains(uint64_t seq_id) const { return sequences_.contains(seq_id); }
  // Tokens cached for the sequence (0 when unknown).
  int64_t Length(uint64_t seq_id) const;
  // The block ids of a known sequence, in position order.
  std::span<const int32_t> BlockTable(uint64_t seq_id) const;

  // The layer's cache on a rank, in the layout PagedAttention expects.
  cpu::PagedKv& Layer(int rank, int layer) {
    CHECK_MSG(options_.host_storage, "this KV cache keeps no host storage");
    return layers_[static_cast<size_t>(rank * options_.num_layers + layer)];
  }

  int num_blocks() const { return num_blocks_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  size_t allocated_bytes() const { return storage_.size(); }
  // Bytes of K and V of one cached position over every layer and rank: what
  // attention reads per position of a sequence at each step.
  size_t position_bytes() const { return BlockBytes(options_) / kKvBlockSize; }
  int num_sequences() const { return static_cast<int>(sequences_.size()); }

 private:
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> blocks;
  };

  PagedKvCache(const PagedKvCacheOptions& options, int num_blocks);

  PagedKvCacheOptions options_;
  int num_blocks_ = 0;
  AlignedBuffer storage_;
  std::vector<cpu::PagedKv> layers_;  // [tp * num_layers]
  std::vector<int32_t> free_;         // stack of free block ids
  std::unordered_map<uint64_t, Sequence> sequences_;
};

}  // namespace tandem
