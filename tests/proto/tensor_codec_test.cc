#include "proto/tensor_codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "proto/activation_sample.h"
#include "proto/byte_shuffle.h"
#include "proto/frame_stream.h"
#include "proto/q8_codec.h"

namespace tandem {
namespace {

// memcmp of n bytes; empty tensors (null data) compare equal.
bool SameBytes(const void* a, const void* b, size_t n) {
  return n == 0 || std::memcmp(a, b, n) == 0;
}

uint64_t FreshSeed() { return std::random_device{}(); }

// Realistic data for float dtypes, random bytes for the rest.
Tensor MakeData(DType dtype, Shape shape, uint64_t seed) {
  if (dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16) {
    return MakeActivations(dtype, shape, {.seed = seed});
  }
  Tensor t(dtype, shape);
  std::mt19937_64 rng(seed);
  auto* p = t.As<uint8_t>();
  // Small values in wide types: realistic ids and counts, compressible.
  std::vector<uint8_t> bytes(t.NumBytes());
  for (size_t i = 0; i < t.NumBytes(); ++i) p[i] = static_cast<uint8_t>(rng() % 7);
  return t;
}

TEST(CodecNames, ParseAndPrintRoundTrip) {
  for (int i = 0; i <= static_cast<int>(Codec::kAuto); ++i) {
    const Codec c = static_cast<Codec>(i);
    auto parsed = ParseCodec(CodecName(c));
    ASSERT_TRUE(parsed.ok()) << CodecName(c);
    EXPECT_EQ(*parsed, c);
  }
  EXPECT_EQ(CodecName(Codec::kShuffleZstd), "shuffle-zstd");
  auto bad = ParseCodec("gzip");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("gzip"), std::string_view::npos);
}

TEST(ByteShuffle, RoundTripsEveryElementSize) {
  std::mt19937_64 rng(FreshSeed());
  for (size_t elem : {1, 2, 3, 4, 8}) {
    const size_t count = 1 + rng() % 1000;
    std::vector<uint8_t> src(count * elem), shuffled(src.size()), back(src.size());
    for (auto& b : src) b = static_cast<uint8_t>(rng());
    ByteShuffle(src.data(), shuffled.data(), count, elem);
    if (elem == 2) {
      EXPECT_EQ(shuffled[count], src[1]);  // second plane starts with byte 1
    }
    ByteUnshuffle(shuffled.data(), back.data(), count, elem);
    EXPECT_EQ(back, src) << "elem " << elem;
  }
}

struct RoundTripCase {
  DType dtype;
  Codec codec;
};

class CodecRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(CodecRoundTrip, LosslessCodecsReproduceEveryByte) {
  const auto [dtype, codec] = GetParam();
  std::mt19937_64 rng(FreshSeed());
  // Odd sizes, small chunks so that frames span several chunks.
  for (Shape shape : {Shape{1, 1}, Shape{3, 37}, Shape{7, 333}, Shape{1, 8191}, Shape{0, 5},
                      Shape{2, 3, 5, 7}}) {
    Tensor src = MakeData(dtype, shape, rng());
    for (size_t chunk : {size_t{100}, size_t{4096}, kDefaultChunkBytes}) {
      CodecOptions options{.codec = codec, .zlib_level = 3, .zstd_level = 2, .chunk_bytes = chunk};
      auto frame = EncodeTensor(src.view(), options);
      ASSERT_TRUE(frame.ok()) << frame.status();
      EXPECT_EQ(frame->header().raw_bytes(), src.NumBytes());
      Tensor dst(dtype, shape);
      if (dst.NumBytes() > 0) std::memset(dst.data(), 0xAB, dst.NumBytes());
      ASSERT_TRUE(DecodeTensor(*frame, dst.view()).ok());
      EXPECT_TRUE(SameBytes(src.data(), dst.data(), src.NumBytes()))
          << DTypeName(dtype) << " " << CodecName(codec) << " " << shape.ToString();
      auto owned = DecodeTensor(*frame);
      ASSERT_TRUE(owned.ok()) << owned.status();
      EXPECT_EQ(owned->shape(), shape);
      EXPECT_TRUE(SameBytes(src.data(), owned->data(), src.NumBytes()));
    }
  }
}

std::vector<RoundTripCase> AllLosslessCases() {
  std::vector<RoundTripCase> cases;
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI8, DType::kI4,
                  DType::kI32, DType::kI64, DType::kU8, DType::kBool}) {
    for (Codec c : LosslessCodecs()) cases.push_back({d, c});
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(AllDTypes, CodecRoundTrip, ::testing::ValuesIn(AllLosslessCases()),
                         [](const auto& info) {
                           std::string name = absl::StrCat(
                               std::string(DTypeName(info.param.dtype)), "_",
                               std::string(CodecName(info.param.codec)));
                           for (char& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

TEST(CodecRatio, ShuffleCompressesBf16ActivationsBetter) {
  Tensor src = MakeActivations(DType::kBF16, {64, 4096}, {.seed = FreshSeed()});
  auto plain = EncodeTensor(src.view(), {.codec = Codec::kZstd});
  auto shuffled = EncodeTensor(src.view(), {.codec = Codec::kShuffleZstd});
  ASSERT_TRUE(plain.ok() && shuffled.ok());
  EXPECT_LT(FrameWireBytes(*shuffled), FrameWireBytes(*plain));
  EXPECT_LT(FrameWireBytes(*shuffled), src.NumBytes());
}

TEST(Q8, ErrorWithinHalfAScalePerBlock) {
  std::mt19937_64 rng(FreshSeed());
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const Shape shape{5, 1000 + static_cast<int64_t>(rng() % 97)};
    Tensor src = MakeActivations(dtype, shape, {.seed = rng()});
    auto frame = EncodeTensor(src.view(), {.codec = Codec::kQ8, .chunk_bytes = 3000});
    ASSERT_TRUE(frame.ok()) << frame.status();
    EXPECT_LT(FrameWireBytes(*frame), src.NumBytes() * 3 / 4 + 1);
    Tensor dst(dtype, shape);
    Status decoded = DecodeTensor(*frame, dst.view());
    ASSERT_TRUE(decoded.ok()) << decoded;
    const size_t n = static_cast<size_t>(src.view().NumElements());
    std::vector<float> a(n), b(n);
    ConvertToF32(dtype, src.data(), a.data(), n);
    ConvertToF32(dtype, dst.data(), b.data(), n);
    // Chunks hold whole blocks, so blocks are the runs of 32 from the start.
    const double out_rounding = dtype == DType::kBF16 ? 1.0 / 256 : dtype == DType::kF16 ? 1.0 / 2048 : 0;
    double err2 = 0, ref2 = 0;
    for (size_t block = 0; block * kQ8Block < n; ++block) {
      float max_abs = 0;
      const size_t end = std::min(n, (block + 1) * kQ8Block);
      for (size_t i = block * kQ8Block; i < end; ++i) max_abs = std::max(max_abs, std::fabs(a[i]));
      const double bound = max_abs / 127.0 * (1 + 1.0 / 1024) / 2;
      for (size_t i = block * kQ8Block; i < end; ++i) {
        const double e = std::fabs(static_cast<double>(a[i]) - b[i]);
        ASSERT_LE(e, bound + std::fabs(a[i]) * out_rounding + max_abs * 1e-6 + 3e-8) << "value " << i;
        err2 += e * e;
        ref2 += static_cast<double>(a[i]) * a[i];
      }
    }
    EXPECT_LT(std::sqrt(err2 / ref2), 0.02) << DTypeName(dtype);
  }
}

TEST(Q8, RefusesNonFloatAndNonFinite) {
  Tensor ints(DType::kI32, {4, 8});
  EXPECT_FALSE(EncodeTensor(ints.view(), {.codec = Codec::kQ8}).ok());
  Tensor f(DType::kF32, {64});
  for (int i = 0; i < 64; ++i) f.As<float>()[i] = 1.0f;
  f.As<float>()[40] = std::nanf("");
  EXPECT_FALSE(EncodeTensor(f.view(), {.codec = Codec::kQ8}).ok());
}

TEST(Encoder, RefusesAutoAndBadLevels) {
  Tensor t = MakeActivations(DType::kBF16, {2, 64}, {});
  EXPECT_FALSE(EncodeTensor(t.view(), {.codec = Codec::kAuto}).ok());
  EXPECT_FALSE(EncodeTensor(t.view(), {.codec = Codec::kZlib, .zlib_level = 12}).ok());
  EXPECT_FALSE(EncodeTensor(t.view(), {.codec = Codec::kZstd, .zstd_level = 99}).ok());
}

TEST(Decoder, AcceptsChunksInAnyOrderOnce) {
  Tensor src = MakeActivations(DType::kF16, {9, 1000}, {.seed = FreshSeed()});
  auto frame = EncodeTensor(src.view(), {.codec = Codec::kShuffleLz4, .chunk_bytes = 2048});
  ASSERT_TRUE(frame.ok());
  ASSERT_GT(frame->chunks_size(), 3);
  Tensor dst(DType::kF16, {9, 1000});
  auto dec = TensorDecoder::Create(frame->header(),
                                   {dst.As<uint8_t>(), dst.NumBytes()});
  ASSERT_TRUE(dec.ok());
  for (int i = frame->chunks_size() - 1; i >= 0; --i) {
    ASSERT_TRUE(dec->DecodeChunk(frame->chunks(i)).ok());
    if (i > 0) {
      EXPECT_FALSE(dec->Finish().ok());
    }
  }
  EXPECT_FALSE(dec->DecodeChunk(frame->chunks(0)).ok()) << "a repeated chunk is refused";
  EXPECT_TRUE(dec->Finish().ok());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), src.NumBytes()), 0);
}

TEST(Decoder, RefusesChunksMovedToAnotherPosition) {
  // Two equal-sized chunks with their indices swapped: each payload is
  // intact, but the checksum is seeded with the index, so both are refused.
  for (Codec codec : {Codec::kNone, Codec::kShuffleZlib, Codec::kQ8}) {
    Tensor src = MakeActivations(DType::kBF16, {4, 1024}, {.seed = FreshSeed()});
    auto frame = EncodeTensor(src.view(), {.codec = codec, .chunk_bytes = 1024});
    ASSERT_TRUE(frame.ok());
    ASSERT_GT(frame->chunks_size(), 2);
    v1::TensorFrame f = *frame;
    f.mutable_chunks(0)->set_index(1);
    f.mutable_chunks(1)->set_index(0);
    auto decoded = DecodeTensor(f);
    ASSERT_FALSE(decoded.ok()) << CodecName(codec);
    EXPECT_NE(decoded.status().message().find("checksum"), std::string::npos) << decoded.status();
  }
}

TEST(Decoder, RefusesMismatchedDestination) {
  Tensor src = MakeActivations(DType::kBF16, {4, 64}, {});
  auto frame = EncodeTensor(src.view(), {});
  ASSERT_TRUE(frame.ok());
  Tensor wrong_shape(DType::kBF16, {8, 32});
  Tensor wrong_type(DType::kF16, {4, 64});
  EXPECT_FALSE(DecodeTensor(*frame, wrong_shape.view()).ok());
  EXPECT_FALSE(DecodeTensor(*frame, wrong_type.view()).ok());
}

TEST(Decoder, RefusesLyingHeadersBeforeAllocating) {
  Tensor src = MakeActivations(DType::kF32, {4, 64}, {});
  auto frame = EncodeTensor(src.view(), {.codec = Codec::kLz4});
  ASSERT_TRUE(frame.ok());
  {
    v1::TensorFrame f = *frame;
    f.mutable_header()->set_raw_bytes(f.header().raw_bytes() + 4);
    EXPECT_FALSE(DecodeTensor(f).ok());
  }
  {
    v1::TensorFrame f = *frame;  // a huge shape, consistent raw_bytes: over the limit
    f.mutable_header()->set_shape(0, int64_t{1} << 40);
    f.mutable_header()->set_raw_bytes((uint64_t{1} << 40) * 64 * 4);
    auto st = DecodeTensor(f);
    ASSERT_FALSE(st.ok());
  }
  {
    v1::TensorFrame f = *frame;  // overflowing product of dimensions
    f.mutable_header()->set_shape(0, int64_t{1} << 62);
    f.mutable_header()->add_shape(int64_t{1} << 62);
    EXPECT_FALSE(DecodeTensor(f).ok());
  }
  {
    v1::TensorFrame f = *frame;
    f.mutable_header()->set_num_chunks(7);
    EXPECT_FALSE(DecodeTensor(f).ok());
  }
  {
    v1::TensorFrame f = *frame;
    f.mutable_header()->set_codec(static_cast<v1::Codec>(42));
    EXPECT_FALSE(DecodeTensor(f).ok());
  }
  {
    v1::TensorFrame f = *frame;
    f.mutable_chunks(0)->set_checksum(f.chunks(0).checksum() ^ 1);
    auto st = DecodeTensor(f);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.status().message().find("checksum"), std::string_view::npos);
  }
}

TEST(StreamChunks, DeliversEveryChunkInOrder) {
  Tensor src = MakeActivations(DType::kBF16, {16, 4096}, {.seed = FreshSeed()});
  auto enc = TensorEncoder::Create(src.view(), {.codec = Codec::kShuffleLz4, .chunk_bytes = 10000});
  ASSERT_TRUE(enc.ok());
  Tensor dst(DType::kBF16, {16, 4096});
  auto dec = TensorDecoder::Create(enc->header(), {dst.As<uint8_t>(), dst.NumBytes()});
  ASSERT_TRUE(dec.ok());
  uint32_t next = 0;
  ASSERT_TRUE(StreamChunks(*enc, [&](v1::TensorChunk& chunk) {
                EXPECT_EQ(chunk.index(), next++);
                return dec->DecodeChunk(chunk);
              }).ok());
  EXPECT_EQ(next, enc->num_chunks());
  EXPECT_TRUE(dec->Finish().ok());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), src.NumBytes()), 0);
  // An error from the sender stops the stream and comes back.
  auto st = StreamChunks(*enc, [&](v1::TensorChunk& chunk) {
    return chunk.index() == 2 ? absl::UnavailableError("link down") : absl::OkStatus();
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace tandem
