#include "node/paged_kv_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

PagedKvCacheOptions Options(int blocks) {
  PagedKvCacheOptions o{.num_layers = 2, .tp = 2, .kv_heads_per_rank = 3, .head_dim = 8};
  o.budget_bytes = PagedKvCache::BlockBytes(o) * static_cast<size_t>(blocks) + 5;
  return o;
}

TEST(PagedKvCacheTest, CapacityComesFromTheBudget) {
  PagedKvCacheOptions o = Options(10);
  EXPECT_EQ(PagedKvCache::BlockBytes(o), size_t{2} * 16 * 3 * 8 * 4 * 2 * 2);
  auto cache = PagedKvCache::Create(o);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->num_blocks(), 10);
  EXPECT_EQ(cache->free_blocks(), 10);
  EXPECT_EQ(cache->allocated_bytes(), PagedKvCache::BlockBytes(o) * 10);
  // K and V of one position: 3 heads of 8 floats, 2 layers, 2 ranks.
  EXPECT_EQ(cache->position_bytes(), size_t{2} * 3 * 8 * 4 * 2 * 2);
  // Every (rank, layer) gets its own K and V planes inside the storage.
  std::set<float*> planes;
  for (int r = 0; r < 2; ++r) {
    for (int l = 0; l < 2; ++l) {
      cpu::PagedKv& kv = cache->Layer(r, l);
      EXPECT_EQ(kv.num_blocks, 10);
      EXPECT_EQ(kv.num_kv_heads, 3);
      EXPECT_EQ(kv.head_dim, 8);
      planes.insert(kv.k);
      planes.insert(kv.v);
    }
  }
  EXPECT_EQ(planes.size(), 8u);
}

TEST(PagedKvCacheTest, StorageIsResidentFromTheStart) {
  // 16 MiB: fresh pages from the system, which a decode step would otherwise
  // fault in one by one as its sequences grow.
  PagedKvCacheOptions o{.num_layers = 16, .tp = 1, .kv_heads_per_rank = 8, .head_dim = 64};
  o.budget_bytes = size_t{16} << 20;
  auto cache = PagedKvCache::Create(o);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(cache->Layer(0, 0).k);
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = (begin + cache->allocated_bytes()) / page * page;
  ASSERT_GT(last, first);
  std::vector<unsigned char> resident((last - first) / page);
  ASSERT_EQ(mincore(reinterpret_cast<void*>(first), last - first, resident.data()), 0);
  size_t missing = 0;
  for (unsigned char r : resident) missing += (r & 1) == 0;
  EXPECT_EQ(missing, 0u) << "of " << resident.size() << " pages";
}

TEST(PagedKvCacheTest, BudgetBelowOneBlockIsAnError) {
  PagedKvCacheOptions o = Options(0);
  auto cache = PagedKvCache::Create(o);
  ASSERT_FALSE(cache.ok());
  EXPECT_NE(cache.status().message().find("smaller than one block"), std::string::npos);
}

TEST(PagedKvCacheTest, SequencesGrowBlockByBlockAndReleaseFreesThem) {
  auto cache = PagedKvCache::Create(Options(6));
  ASSERT_TRUE(cache.ok());
  const uint64_t a = 0xdeadbeefcafef00dull, b = 7;
  std::vector<KvReservation> step{{a, 0, 17}, {b, 0, 16}};
  ASSERT_TRUE(cache->Reserve(step).ok());
  EXPECT_EQ(cache->BlockTable(a).size(), 2u);
  EXPECT_EQ(cache->BlockTable(b).size(), 1u);
  EXPECT_EQ(cache->Length(a), 17);
  EXPECT_EQ(cache->free_blocks(), 3);
  // Decode: a stays within its second block, b needs a new one.
  std::vector<KvReservation> decode{{a, 17, 18}, {b, 16, 17}};
  ASSERT_TRUE(cache->Reserve(decode).ok());
  EXPECT_EQ(cache->BlockTable(a).size(), 2u);
  EXPECT_EQ(cache->BlockTable(b).size(), 2u);
  std::set<int32_t> ids;
  for (int32_t id : cache->BlockTable(a)) ids.insert(id);
  for (int32_t id : cache->BlockTable(b)) ids.insert(id);
  EXPECT_EQ(ids.size(), 4u);  // no block is shared
  for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 6);
  cache->Release(a);
  EXPECT_FALSE(cache->Contains(a));
  EXPECT_EQ(cache->free_blocks(), 4);
  cache->Release(a);  // idempotent
  EXPECT_EQ(cache->free_blocks(), 4);
}

TEST(PagedKvCacheTest, FullCacheIsAClearErrorAndChangesNothing) {
  auto cache = PagedKvCache::Create(Options(3));
  ASSERT_TRUE(cache.ok());
  std::vector<KvReservation> first{{1, 0, 32}};
  ASSERT_TRUE(cache->Reserve(first).ok());
  std::vector<KvReservation> too_much{{2, 0, 5}, {3, 0, 20}};
  Status s = cache->Reserve(too_much);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("KV cache full"), std::string::npos) << s;
  EXPECT_FALSE(cache->Contains(2));  // all or nothing
  EXPECT_EQ(cache->free_blocks(), 1);
  cache->Release(1);
  EXPECT_TRUE(cache->Reserve(too_much).ok());
}

TEST(PagedKvCacheTest, RefusesGapsAndDuplicates) {
  auto cache = PagedKvCache::Create(Options(4));
  ASSERT_TRUE(cache.ok());
  std::vector<KvReservation> gap{{9, 3, 5}};
  EXPECT_FALSE(cache->Reserve(gap).ok());
  std::vector<KvReservation> dup{{9, 0, 2}, {9, 0, 2}};
  EXPECT_FALSE(cache->Reserve(dup).ok());
  std::vector<KvReservation> empty{{9, 0, 0}};
  EXPECT_FALSE(cache->Reserve(empty).ok());
  EXPECT_EQ(cache->num_sequences(), 0);
}

}  // namespace
}  // namespace tandem
