#pragma once
// Byte-pair encoding over token ids: a word enters as its initial symbols and
// leaves as the ids that repeatedly merging the lowest-ranked adjacent pair
// (leftmost on ties) produces. Also owns the cache of encoded words.
#include <array>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace tandem {

class BpeModel {
 public:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };

  // `merges` maps (left_id, right_id) to its rank and result.
  void AddMerge(int32_t left, int32_t right, int32_t rank, int32_t merged_id) {
    merges_[Key(left, right)] = Merge{rank, merged_id};
  }
  size_t num_merges() const { return merges_.size(); }

  // Merges `symbols` in place. Thread-safe.
  void MergeSymbols(std::vector<int32_t>* symbols) const;

  // Word cache: encoded ids of a pre-tokenized word, shared by all threads
  // (sharded, each shard behind its own mutex, bounded in size).
  bool CacheLookup(std::string_view word, std::vector<int32_t>* out) const;
  void CacheStore(std::string_view word, std::span<const int32_t> ids) const;

 private:
  static uint64_t Key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  const Merge* Find(int32_t left, int32_t right) const {
    auto it = merges_.find(Key(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }
  void MergeSmall(std::vector<int32_t>* symbols) const;
  void MergeLarge(std::vector<int32_t>* symbols) const;

  absl::flat_hash_map<uint64_t, Merge> merges_;

  static constexpr int kCacheShards = 16;
  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kMaxEntriesPerShard = 4096;
  struct CacheShard {
    std::mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> words;
  };
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace tandem
