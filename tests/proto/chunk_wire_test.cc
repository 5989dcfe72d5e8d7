// Chunk messages as byte buffers: the hand-made encoding equals protobuf's,
// parsing in place agrees with protobuf however the bytes are sliced, and
// chunks decode from payload pieces exactly as from one string.
#include "proto/chunk_wire.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "proto/activation_sample.h"
#include "tandem/v1/node.pb.h"
#include "tests/proto/byte_buffer_bytes.h"

namespace tandem {
namespace {

using testing::Flatten;

// `bytes` cut at random places into slices (some of them empty).
grpc::ByteBuffer Sliced(const std::string& bytes, std::mt19937_64& rng) {
  std::vector<grpc::Slice> slices;
  size_t at = 0;
  while (at < bytes.size()) {
    const size_t n = std::min(bytes.size() - at, static_cast<size_t>(rng() % 40));
    slices.emplace_back(bytes.data() + at, n);
    at += n;
  }
  slices.emplace_back();
  return grpc::ByteBuffer(slices.data(), slices.size());
}

v1::TensorChunk RandomChunk(std::mt19937_64& rng) {
  v1::TensorChunk c;
  // Zero values are left out of the encoding, and varints take 1 to 10
  // bytes: cover zero, small and large values.
  const auto value = [&rng](uint64_t large) {
    switch (rng() % 3) {
      case 0: return uint64_t{0};
      case 1: return 1 + rng() % 300;
      default: return large;
    }
  };
  c.set_index(static_cast<uint32_t>(value(static_cast<uint32_t>(rng()))));
  c.set_checksum(value(rng()));
  std::string payload(rng() % 3 == 0 ? 0 : rng() % 300, '\0');
  for (char& ch : payload) ch = static_cast<char>(rng());
  c.set_payload(payload);
  return c;
}

TEST(ChunkWire, EncodingEqualsProtobufAndParsesBackInAnySlicing) {
  std::mt19937_64 rng(std::random_device{}());
  for (int trial = 0; trial < 200; ++trial) {
    const v1::TensorChunk chunk = RandomChunk(rng);
    v1::EchoMessage expected;
    *expected.mutable_chunk() = chunk;
    v1::TensorChunk moved = chunk;
    const grpc::ByteBuffer owned = ChunkMessageBuffer(v1::EchoMessage::kChunkFieldNumber, std::move(moved));
    const grpc::ByteBuffer borrowed =
        BorrowedChunkMessageBuffer(v1::EchoMessage::kChunkFieldNumber, chunk);
    ASSERT_EQ(Flatten(owned), expected.SerializeAsString());
    ASSERT_EQ(Flatten(borrowed), expected.SerializeAsString());

    grpc::ByteBuffer received = Sliced(expected.SerializeAsString(), rng);
    ReceivedMessage message;
    ASSERT_TRUE(message.Reset(received).ok());
    ChunkView view;
    auto is_chunk = message.AsChunk(v1::EchoMessage::kChunkFieldNumber, &view);
    ASSERT_TRUE(is_chunk.ok()) << is_chunk.status();
    ASSERT_TRUE(*is_chunk);
    EXPECT_EQ(view.index, chunk.index());
    EXPECT_EQ(view.checksum, chunk.checksum());
    std::string payload;
    for (auto piece : view.payload) payload.append(reinterpret_cast<const char*>(piece.data()), piece.size());
    EXPECT_EQ(payload, chunk.payload());
  }
}

TEST(ChunkWire, ForwardRequestChunksUseTheSameEncoding) {
  std::mt19937_64 rng(std::random_device{}());
  const v1::TensorChunk chunk = RandomChunk(rng);
  v1::ForwardRequest expected;
  *expected.mutable_chunk() = chunk;
  EXPECT_EQ(Flatten(BorrowedChunkMessageBuffer(v1::ForwardRequest::kChunkFieldNumber, chunk)),
            expected.SerializeAsString());
}

TEST(ChunkWire, UnknownFieldsAndRepeatsReadAsProtobufReadsThem) {
  std::mt19937_64 rng(std::random_device{}());
  const uint32_t index = static_cast<uint32_t>(rng() | 1);
  // chunk { index=1; unknown fixed32 field 9; payload "ab"; payload "xyz"; unknown
  // length-delimited field 12 }
  std::string inner;
  inner += '\x08';
  for (uint64_t v = index; ; v >>= 7) {
    if (v < 0x80) { inner += static_cast<char>(v); break; }
    inner += static_cast<char>((v & 0x7f) | 0x80);
  }
  inner += std::string("\x4d\x01\x02\x03\x04", 5);
  inner += std::string("\x1a\x02" "ab", 4);
  inner += std::string("\x1a\x03" "xyz", 5);
  inner += std::string("\x62\x01" "q", 3);
  std::string bytes = "\x1a";
  bytes += static_cast<char>(inner.size());
  bytes += inner;
  v1::EchoMessage reference;
  ASSERT_TRUE(reference.ParseFromString(bytes));

  grpc::ByteBuffer received = Sliced(bytes, rng);
  ReceivedMessage message;
  ASSERT_TRUE(message.Reset(received).ok());
  ChunkView view;
  auto is_chunk = message.AsChunk(v1::EchoMessage::kChunkFieldNumber, &view);
  ASSERT_TRUE(is_chunk.ok() && *is_chunk);
  EXPECT_EQ(view.index, reference.chunk().index());
  std::string payload;
  for (auto piece : view.payload) payload.append(reinterpret_cast<const char*>(piece.data()), piece.size());
  EXPECT_EQ(payload, reference.chunk().payload());
  EXPECT_EQ(payload, "xyz");
}

TEST(ChunkWire, OtherMessagesGoToProtobufAndTruncationIsAnError) {
  std::mt19937_64 rng(std::random_device{}());
  v1::EchoMessage ping;
  ping.set_ping(rng() | 1);
  grpc::ByteBuffer received = Sliced(ping.SerializeAsString(), rng);
  ReceivedMessage message;
  ASSERT_TRUE(message.Reset(received).ok());
  ChunkView view;
  auto is_chunk = message.AsChunk(v1::EchoMessage::kChunkFieldNumber, &view);
  ASSERT_TRUE(is_chunk.ok());
  EXPECT_FALSE(*is_chunk);
  v1::EchoMessage parsed;
  ASSERT_TRUE(message.Parse(&parsed).ok());
  EXPECT_EQ(parsed.ping(), ping.ping());

  // A chunk whose payload length runs past the end of its message.
  v1::EchoMessage chunk;
  chunk.mutable_chunk()->set_index(3);
  chunk.mutable_chunk()->set_payload(std::string(50, 'p'));
  std::string bytes = chunk.SerializeAsString();
  bytes[bytes.size() - 51] = 60;  // the payload's length byte
  grpc::ByteBuffer bad = Sliced(bytes, rng);
  ASSERT_TRUE(message.Reset(bad).ok());
  is_chunk = message.AsChunk(v1::EchoMessage::kChunkFieldNumber, &view);
  EXPECT_FALSE(is_chunk.ok());
  EXPECT_FALSE(message.Parse(&parsed).ok());
}

TEST(ChunkWire, DecodingFromPiecesEqualsDecodingFromOneString) {
  std::mt19937_64 rng(std::random_device{}());
  for (Codec codec : WireCodecs()) {
    Tensor src = MakeActivations(DType::kBF16, {3, 1000 + static_cast<int64_t>(rng() % 50)},
                                 {.seed = rng()});
    auto enc = TensorEncoder::Create(src.view(), {.codec = codec, .chunk_bytes = 2000});
    ASSERT_TRUE(enc.ok());
    Tensor a(src.dtype(), src.shape());
    Tensor b(src.dtype(), src.shape());
    auto da = TensorDecoder::Create(enc->header(), {a.As<uint8_t>(), a.NumBytes()});
    auto db = TensorDecoder::Create(enc->header(), {b.As<uint8_t>(), b.NumBytes()});
    ASSERT_TRUE(da.ok() && db.ok());
    for (uint32_t i = 0; i < enc->num_chunks(); ++i) {
      v1::TensorChunk chunk;
      ASSERT_TRUE(enc->EncodeChunk(i, &chunk).ok());
      ASSERT_TRUE(da->DecodeChunk(chunk).ok());
      v1::EchoMessage m;
      *m.mutable_chunk() = chunk;
      grpc::ByteBuffer received = Sliced(m.SerializeAsString(), rng);
      ReceivedMessage message;
      ASSERT_TRUE(message.Reset(received).ok());
      ChunkView view;
      auto is_chunk = message.AsChunk(v1::EchoMessage::kChunkFieldNumber, &view);
      ASSERT_TRUE(is_chunk.ok() && *is_chunk);
      Status st = db->DecodeChunk(view);
      ASSERT_TRUE(st.ok()) << CodecName(codec) << ": " << st;
    }
    ASSERT_TRUE(db->Finish().ok());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.NumBytes()), 0) << CodecName(codec);
    if (!IsLossy(codec)) {
      EXPECT_EQ(std::memcmp(src.data(), b.data(), src.NumBytes()), 0) << CodecName(codec);
    }
  }
}

TEST(ChunkWire, CorruptPiecesAreRefused) {
  std::mt19937_64 rng(std::random_device{}());
  for (Codec codec : {Codec::kNone, Codec::kLz4, Codec::kQ8}) {
    Tensor src = MakeActivations(DType::kF32, {2, 700}, {.seed = rng()});
    auto enc = TensorEncoder::Create(src.view(), {.codec = codec, .chunk_bytes = 4096});
    ASSERT_TRUE(enc.ok());
    v1::TensorChunk chunk;
    ASSERT_TRUE(enc->EncodeChunk(0, &chunk).ok());
    std::string payload = chunk.payload();
    payload[rng() % payload.size()] ^= static_cast<char>(1 + rng() % 255);
    const size_t cut = 1 + rng() % (payload.size() - 1);
    ChunkView view{.index = 0, .checksum = chunk.checksum(), .payload = {}};
    view.payload.emplace_back(reinterpret_cast<const uint8_t*>(payload.data()), cut);
    view.payload.emplace_back(reinterpret_cast<const uint8_t*>(payload.data()) + cut,
                              payload.size() - cut);
    Tensor dst(src.dtype(), src.shape());
    auto dec = TensorDecoder::Create(enc->header(), {dst.As<uint8_t>(), dst.NumBytes()});
    ASSERT_TRUE(dec.ok());
    EXPECT_FALSE(dec->DecodeChunk(view).ok()) << CodecName(codec);
    // Too many bytes for the chunk.
    std::string longer = chunk.payload() + std::string(chunk.payload().size() / 4 + 2048, 'x');
    ChunkView too_long{.index = 0, .checksum = chunk.checksum(), .payload = {}};
    too_long.payload.emplace_back(reinterpret_cast<const uint8_t*>(longer.data()), 10);
    too_long.payload.emplace_back(reinterpret_cast<const uint8_t*>(longer.data()) + 10,
                                  longer.size() - 10);
    EXPECT_FALSE(dec->DecodeChunk(too_long).ok()) << CodecName(codec);
  }
}

}  // namespace
}  // namespace tandem
