#include "model/safetensors.h"

#include <unistd.h>

#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/safetensors_writer.h"
#include "tests/model/test_dir.h"

namespace tandem {
namespace {

using testing_util::FreshTestDir;

// Writes a file with a hand-made header; `claimed_len` overrides the length field.
void WriteRaw(const std::filesystem::path& path, const std::string& header, size_t data_bytes,
              std::optional<uint64_t> claimed_len = std::nullopt) {
  std::string bytes(8, '\0');
  uint64_t n = claimed_len.value_or(header.size());
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
  bytes += header;
  bytes.append(data_bytes, '\x11');
  testing_util::WriteText(path, bytes);
}

std::string OpenError(const std::filesystem::path& path) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_FALSE(file.ok()) << path;
  return file.ok() ? "" : std::string(file.status().message());
}

TEST(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  auto dir = FreshTestDir();
  std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 42.0f};
  std::vector<uint16_t> b = {F32ToBF16(1.0f).bits, F32ToBF16(-0.5f).bits, F32ToBF16(7.0f).bits,
                             F32ToBF16(2.5f).bits};
  int32_t scalar = -7;
  std::vector<NamedTensor> tensors = {
      {"a", TensorView::Contiguous(a.data(), DType::kF32, Shape{2, 3})},
      {"layer.b", TensorView::Contiguous(b.data(), DType::kBF16, Shape{4})},
      {"scalar", TensorView::Contiguous(&scalar, DType::kI32, Shape{})},
      {"empty", TensorView::Contiguous(nullptr, DType::kF16, Shape{0, 5})},
  };
  ASSERT_TRUE(WriteSafetensors(dir / "x.safetensors", tensors, {{"format", "pt"}}).ok());

  auto file = SafetensorsFile::Open(dir / "x.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->data_offset() % 8, 0u);
  EXPECT_EQ((*file)->tensors().size(), 4u);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->Find("missing"), nullptr);

  const TensorInfo* ia = (*file)->Find("a");
  ASSERT_NE(ia, nullptr);
  EXPECT_EQ(ia->dtype, DType::kF32);
  EXPECT_EQ(ia->shape, (Shape{2, 3}));
  TensorView va = (*file)->View(*ia);
  EXPECT_EQ(std::memcmp(va.data, a.data(), 24), 0);

  const TensorInfo* ib = (*file)->Find("layer.b");
  ASSERT_NE(ib, nullptr);
  TensorView vb = (*file)->View(*ib);
  EXPECT_EQ(vb.dtype, DType::kBF16);
  EXPECT_EQ(BF16ToF32(vb.As<BFloat16>()[1]), -0.5f);

  const TensorInfo* is = (*file)->Find("scalar");
  ASSERT_NE(is, nullptr);
  EXPECT_EQ(is->shape.rank(), 0);
  EXPECT_EQ(*(*file)->View(*is).As<int32_t>(), -7);

  const TensorInfo* ie = (*file)->Find("empty");
  ASSERT_NE(ie, nullptr);
  EXPECT_EQ(ie->NumBytes(), 0u);
}

TEST(SafetensorsTest, RefusesFilesShorterThanTheLengthField) {
  auto dir = FreshTestDir();
  testing_util::WriteText(dir / "t.safetensors", "abc");
  std::string err = OpenError(dir / "t.safetensors");
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  EXPECT_NE(err.find("t.safetensors"), std::string::npos) << err;
}

TEST(SafetensorsTest, RefusesHeaderLongerThanTheFile) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "t.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4,
           1000);
  std::string err = OpenError(dir / "t.safetensors");
  EXPECT_NE(err.find("past the end of the file"), std::string::npos) << err;
}

TEST(SafetensorsTest, RefusesHugeHeaderLengthWithoutAllocating) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "t.safetensors", "{}", 0, uint64_t{1} << 62);
  std::string err = OpenError(dir / "t.safetensors");
  EXPECT_NE(err.find("exceeds the limit"), std::string::npos) << err;
  WriteRaw(dir / "u.safetensors", "{}", 0, ~uint64_t{0});
  EXPECT_NE(OpenError(dir / "u.safetensors").find("exceeds the limit"), std::string::npos);
}

TEST(SafetensorsTest, RefusesTruncatedData) {
  auto dir = FreshTestDir();
  std::vector<float> a(100, 1.0f);
  std::vector<NamedTensor> t = {{"w", TensorView::Contiguous(a.data(), DType::kF32, Shape{100})}};
  ASSERT_TRUE(WriteSafetensors(dir / "full.safetensors", t).ok());
  std::filesystem::resize_file(dir / "full.safetensors",
                               std::filesystem::file_size(dir / "full.safetensors") - 10);
  std::string err = OpenError(dir / "full.safetensors");
  EXPECT_NE(err.find("'w'"), std::string::npos) << err;
  EXPECT_NE(err.find("run past the data section"), std::string::npos) << err;
}

TEST(SafetensorsTest, RefusesMalformedJson) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "t.safetensors", R"({"a":{"dtype":"F32",)", 0);
  EXPECT_NE(OpenError(dir / "t.safetensors").find("not valid JSON"), std::string::npos);
  WriteRaw(dir / "u.safetensors", R"([1, 2, 3])", 0);
  EXPECT_NE(OpenError(dir / "u.safetensors").find("not a JSON object"), std::string::npos);
}

TEST(SafetensorsTest, RefusesUnknownDtype) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "t.safetensors", R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})",
           4);
  std::string err = OpenError(dir / "t.safetensors");
  EXPECT_NE(err.find("unknown dtype 'F8_E4M3'"), std::string::npos) << err;
  EXPECT_NE(err.find("'w'"), std::string::npos) << err;
}

TEST(SafetensorsTest, RefusesShapeThatDisagreesWithTheByteRange) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "t.safetensors", R"({"lie":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})",
           24);
  std::string err = OpenError(dir / "t.safetensors");
  EXPECT_NE(err.find("'lie'"), std::string::npos) << err;
  EXPECT_NE(err.find("24 bytes"), std::string::npos) << err;
  EXPECT_NE(err.find("hold 20"), std::string::npos) << err;
}

TEST(SafetensorsTest, RefusesShapesThatOverflow) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "t.safetensors",
           R"({"big":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", 0);
  EXPECT_NE(OpenError(dir / "t.safetensors").find("too many elements"), std::string::npos);
  WriteRaw(dir / "u.safetensors",
           R"({"r":{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(OpenError(dir / "u.safetensors").find("rank 5"), std::string::npos);
  WriteRaw(dir / "v.safetensors", R"({"n":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(OpenError(dir / "v.safetensors").find("non-negative"), std::string::npos);
  WriteRaw(dir / "w.safetensors", R"({"f":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(OpenError(dir / "w.safetensors").find("non-negative"), std::string::npos);
}

TEST(SafetensorsTest, RefusesOverlappingRanges) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "t.safetensors",
           R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
           16);
  std::string err = OpenError(dir / "t.safetensors");
  EXPECT_NE(err.find("overlap"), std::string::npos) << err;
  EXPECT_NE(err.find("'a'"), std::string::npos) << err;
  EXPECT_NE(err.find("'b'"), std::string::npos) << err;
}

TEST(SafetensorsTest, RefusesRangesOutsideTheFileAndReversedRanges) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "t.safetensors", R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[4096,4104]}})",
           16);
  EXPECT_NE(OpenError(dir / "t.safetensors").find("run past the data section"), std::string::npos);
  WriteRaw(dir / "u.safetensors", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", 16);
  EXPECT_NE(OpenError(dir / "u.safetensors").find("reversed"), std::string::npos);
  WriteRaw(dir / "v.safetensors", R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0]}})", 16);
  EXPECT_NE(OpenError(dir / "v.safetensors").find("two non-negative"), std::string::npos);
}

TEST(SafetensorsTest, RefusesMalformedEntries) {
  auto dir = FreshTestDir();
  WriteRaw(dir / "a.safetensors", R"({"__metadata__":{"k":1}})", 0);
  EXPECT_NE(OpenError(dir / "a.safetensors").find("__metadata__ entry 'k'"), std::string::npos);
  WriteRaw(dir / "b.safetensors",
           R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}})", 1);
  EXPECT_NE(OpenError(dir / "b.safetensors").find("unknown header field 'extra'"),
            std::string::npos);
  WriteRaw(dir / "c.safetensors", R"({"x":{"shape":[1],"data_offsets":[0,1]}})", 1);
  EXPECT_NE(OpenError(dir / "c.safetensors").find("dtype"), std::string::npos);
  WriteRaw(dir / "d.safetensors", R"({"x":5})", 0);
  EXPECT_NE(OpenError(dir / "d.safetensors").find("'x'"), std::string::npos);
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  auto dir = FreshTestDir();
  auto file = SafetensorsFile::Open(dir / "nope.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
}

// Random corruption of a valid header must give an error or a consistent
// file, never a crash (ASan builds check the memory accesses too).
TEST(SafetensorsTest, SurvivesRandomHeaderCorruption) {
  auto dir = FreshTestDir();
  std::vector<float> a(16, 2.0f), b(8, 3.0f);
  std::vector<NamedTensor> t = {{"a", TensorView::Contiguous(a.data(), DType::kF32, Shape{4, 4})},
                                {"b", TensorView::Contiguous(b.data(), DType::kF32, Shape{8})}};
  ASSERT_TRUE(WriteSafetensors(dir / "ok.safetensors", t).ok());
  std::ifstream in(dir / "ok.safetensors", std::ios::binary);
  std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::mt19937 rng(std::random_device{}());
  int opened = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string bytes = good;
    int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      size_t pos = rng() % std::min<size_t>(bytes.size(), 8 + 120);
      bytes[pos] = static_cast<char>(rng());
    }
    testing_util::WriteText(dir / "bad.safetensors", bytes);
    auto file = SafetensorsFile::Open(dir / "bad.safetensors");
    if (!file.ok()) continue;
    ++opened;
    for (const TensorInfo& info : (*file)->tensors()) {
      TensorView v = (*file)->View(info);
      uint64_t sum = 0;
      for (size_t i = 0; i < info.NumBytes(); ++i) sum += static_cast<uint8_t*>(v.data)[i];
      EXPECT_LE(sum, 255u * info.NumBytes());
    }
  }
  SUCCEED() << opened << " corrupted files still opened";
}

}  // namespace
}  // namespace tandem
