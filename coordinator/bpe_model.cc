#include "coordinator/bpe_model.h"

#include <limits>
#include <queue>

#include "absl/hash/hash.h"

namespace tandem {
namespace {
// Below this many symbols a plain scan for the best pair beats a heap.
constexpr size_t kSmallWord = 48;
}  // namespace

void BpeModel::MergeSymbols(std::vector<int32_t>* symbols) const {
  if (symbols->size() < 2) return;
  if (symbols->size() <= kSmallWord) {
    MergeSmall(symbols);
  } else {
    MergeLarge(symbols);
  }
}

void BpeModel::MergeSmall(std::vector<int32_t>* symbols) const {
  std::vector<int32_t>& s = *symbols;
  while (s.size() > 1) {
    int32_t best_rank = std::numeric_limits<int32_t>::max();
    size_t best = 0;
    int32_t best_id = -1;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const Merge* m = Find(s[i], s[i + 1]);
      if (m != nullptr && m->rank < best_rank) {
        best_rank = m->rank;
        best = i;
        best_id = m->merged_id;
      }
    }
    if (best_id < 0) return;
    s[best] = best_id;
    s.erase(s.begin() + best + 1);
  }
}

void BpeModel::MergeLarge(std::vector<int32_t>* symbols) const {
  // Doubly linked list over the symbols and a min-heap of candidate pairs
  // keyed by (rank, position of the left symbol). Entries go stale when a
  // neighbour merges; they are recognised by the ids no longer matching.
  std::vector<int32_t>& s = *symbols;
  const int n = static_cast<int>(s.size());
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int left;
    int32_t left_id;
    int32_t right_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int left) {
    const int right = next[left];
    if (right < 0) return;
    if (const Merge* m = Find(s[left], s[right])) heap.push({m->rank, left, s[left], s[right]});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int right = next[c.left];
    if (!alive[c.left] || right < 0 || s[c.left] != c.left_id || s[right] != c.right_id) continue;
    const Merge* m = Find(c.left_id, c.right_id);
    s[c.left] = m->merged_id;
    alive[right] = false;
    next[c.left] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.left;
    if (prev[c.left] >= 0) push(prev[c.left]);
    push(c.left);
  }
  std::vector<int32_t> out;
  for (int i = 0; i >= 0; i = next[i]) out.push_back(s[i]);
  s.swap(out);
}

bool BpeModel::CacheLookup(std::string_view word, std::vector<int32_t>* out) const {
  if (word.size() > kMaxCachedWordBytes) return false;
  CacheShard& shard = cache_[absl::HashOf(word) % kCacheShards];
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.words.find(absl::string_view(word.data(), word.size()));
  if (it == shard.words.end()) return false;
  out->insert(out->end(), it->second.begin(), it->second.end());
  return true;
}

void BpeModel::CacheStore(std::string_view word, std::span<const int32_t> ids) const {
  if (word.size() > kMaxCachedWordBytes) return;
  CacheShard& shard = cache_[absl::HashOf(word) % kCacheShards];
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.words.size() >= kMaxEntriesPerShard) shard.words.clear();
  shard.words.emplace(std::string(word), std::vector<int32_t>(ids.begin(), ids.end()));
}

}  // namespace tandem
