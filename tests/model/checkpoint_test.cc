#include "model/checkpoint.h"

#include <vector>

#include "gtest/gtest.h"
#include "model/safetensors_writer.h"
#include "tests/model/test_dir.h"

namespace tandem {
namespace {

using testing_util::FreshTestDir;
using testing_util::WriteText;

struct Fixture {
  std::vector<float> a = {1, 2, 3, 4};
  std::vector<float> b = {5, 6};
  std::vector<float> c = {7, 8, 9};
  NamedTensor Ta() {
    return {"model.a", TensorView::Contiguous(a.data(), DType::kF32, Shape{2, 2})};
  }
  NamedTensor Tb() { return {"model.b", TensorView::Contiguous(b.data(), DType::kF32, Shape{2})}; }
  NamedTensor Tc() { return {"model.c", TensorView::Contiguous(c.data(), DType::kF32, Shape{3})}; }
};

void WriteShards(const std::filesystem::path& dir, Fixture& f) {
  std::vector<NamedTensor> s1 = {f.Ta(), f.Tb()};
  std::vector<NamedTensor> s2 = {f.Tc()};
  ASSERT_TRUE(WriteSafetensors(dir / "model-00001-of-00002.safetensors", s1).ok());
  ASSERT_TRUE(WriteSafetensors(dir / "model-00002-of-00002.safetensors", s2).ok());
  WriteText(dir / "model.safetensors.index.json",
            R"({"metadata": {"total_size": 36}, "weight_map": {
                 "model.a": "model-00001-of-00002.safetensors",
                 "model.b": "model-00001-of-00002.safetensors",
                 "model.c": "model-00002-of-00002.safetensors"}})");
}

TEST(CheckpointTest, OpensASingleFile) {
  auto dir = FreshTestDir();
  Fixture f;
  std::vector<NamedTensor> all = {f.Ta(), f.Tb(), f.Tc()};
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", all).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_FALSE(ckpt->sharded());
  EXPECT_EQ(ckpt->Names(), (std::vector<std::string>{"model.a", "model.b", "model.c"}));
  EXPECT_TRUE(ckpt->Has("model.b"));
  EXPECT_FALSE(ckpt->Has("model.z"));
  auto c = ckpt->Get("model.c");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->As<float>()[2], 9.0f);
  auto info = ckpt->Info("model.a");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->shape, (Shape{2, 2}));

  auto missing = ckpt->Get("model.z");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("model.z"), std::string::npos);
  EXPECT_NE(missing.status().message().find(dir.string()), std::string::npos);
}

TEST(CheckpointTest, MapsShardsOnlyWhenTheirTensorsAreAskedFor) {
  auto dir = FreshTestDir();
  Fixture f;
  WriteShards(dir, f);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(ckpt->sharded());
  EXPECT_EQ(ckpt->num_shards(), 2);
  EXPECT_EQ(ckpt->num_open_shards(), 0);
  EXPECT_EQ(ckpt->Names().size(), 3u);
  auto c = ckpt->Get("model.c");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->As<float>()[0], 7.0f);
  EXPECT_EQ(ckpt->num_open_shards(), 1);
  auto a = ckpt->Get("model.a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(ckpt->num_open_shards(), 2);

  // Views survive moving the checkpoint.
  Checkpoint moved = std::move(*ckpt);
  EXPECT_EQ(a->As<float>()[3], 4.0f);
  EXPECT_EQ(moved.Get("model.b")->As<float>()[1], 6.0f);
}

TEST(CheckpointTest, ABrokenShardOnlyFailsTheTensorsItHolds) {
  auto dir = FreshTestDir();
  Fixture f;
  WriteShards(dir, f);
  WriteText(dir / "model-00002-of-00002.safetensors", "garbage!garbage!");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(ckpt->Get("model.a").ok());
  auto c = ckpt->Get("model.c");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("model.c"), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("model-00002-of-00002.safetensors"), std::string::npos);
  EXPECT_FALSE(ckpt->ValidateAll().ok());
}

TEST(CheckpointTest, RefusesAnIndexThatPlacesATensorInTheWrongShard) {
  auto dir = FreshTestDir();
  Fixture f;
  WriteShards(dir, f);
  WriteText(dir / "model.safetensors.index.json",
            R"({"weight_map": {"model.a": "model-00001-of-00002.safetensors",
                               "model.b": "model-00001-of-00002.safetensors",
                               "model.c": "model-00001-of-00002.safetensors"}})");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto a = ckpt->Get("model.a");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("'model.c'"), std::string::npos) << a.status();
  EXPECT_NE(a.status().message().find("does not hold it"), std::string::npos) << a.status();
}

TEST(CheckpointTest, RefusesBadIndexes) {
  auto dir = FreshTestDir();
  Fixture f;
  WriteShards(dir, f);
  auto expect_error = [&](const std::string& index, const std::string& needle) {
    WriteText(dir / "model.safetensors.index.json", index);
    auto ckpt = Checkpoint::Open(dir);
    ASSERT_FALSE(ckpt.ok()) << index;
    EXPECT_NE(ckpt.status().message().find(needle), std::string::npos) << ckpt.status();
    EXPECT_NE(ckpt.status().message().find("model.safetensors.index.json"), std::string::npos);
  };
  expect_error(R"({"weight_map": {"model.a": "model-00009-of-00009.safetensors"}})",
               "model-00009-of-00009.safetensors");
  expect_error(R"({"weight_map": {"model.a": "../model-00001-of-00002.safetensors"}})",
               "not a plain file name");
  expect_error(R"({"weight_map": {"model.a": 3}})", "not a string");
  expect_error(R"({"metadata": {}})", "weight_map");
  expect_error(R"({"weight_map": {}})", "empty");
  expect_error(R"({"weight_map": )", "not valid JSON");
}

TEST(CheckpointTest, RefusesAFolderWithoutWeights) {
  auto dir = FreshTestDir();
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(ckpt.status().message().find("model.safetensors"), std::string::npos);
}

}  // namespace
}  // namespace tandem
