// Seeded mutation fuzzing of the frame decoder: thousands of corrupted,
// truncated, extended and lying frames must each come back as an error (or,
// where the mutation happens to keep the frame valid, decode correctly);
// none may crash, hang or allocate beyond the limits (run under ASan/UBSan
// in the debug-asan preset).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "absl/strings/escaping.h"
#include "proto/activation_sample.h"
#include "proto/chunk_wire.h"
#include "proto/tensor_codec.h"
#include "tandem/v1/node.pb.h"

namespace tandem {
namespace {

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}
  uint64_t Next() { return rng_(); }
  size_t Below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }

  void MutateBytes(std::string* s) {
    switch (Below(6)) {
      case 0:  // flip bits
        for (int i = 0, n = 1 + static_cast<int>(Below(8)); i < n && !s->empty(); ++i)
          (*s)[Below(s->size())] ^= static_cast<char>(1 << Below(8));
        break;
      case 1:  // truncate
        s->resize(Below(s->size() + 1));
        break;
      case 2:  // extend with garbage
        for (size_t i = 0, n = 1 + Below(64); i < n; ++i) s->push_back(static_cast<char>(Next()));
        break;
      case 3:  // overwrite a run with one byte (zeros or 0xff are typical lies)
        if (!s->empty()) {
          const size_t at = Below(s->size());
          const size_t n = std::min(s->size() - at, 1 + Below(16));
          std::memset(s->data() + at, Below(2) ? 0xff : 0, n);
        }
        break;
      case 4:  // swap halves
        if (s->size() > 2) *s = s->substr(s->size() / 2) + s->substr(0, s->size() / 2);
        break;
      default:  // random replacement
        for (char& c : *s) c = static_cast<char>(Next());
        break;
    }
  }

  void MutateHeader(v1::TensorHeader* h) {
    switch (Below(8)) {
      case 0: h->set_raw_bytes(Below(2) ? Next() : h->raw_bytes() + 1 - 2 * Below(2)); break;
      case 1: if (h->shape_size() > 0) h->set_shape(static_cast<int>(Below(h->shape_size())), static_cast<int64_t>(Next())); break;
      case 2: h->add_shape(static_cast<int64_t>(Below(5))); break;
      case 3: h->set_chunk_raw_bytes(Below(2) ? Next() : Below(h->chunk_raw_bytes() + 2)); break;
      case 4: h->set_num_chunks(static_cast<uint32_t>(Below(2) ? Next() : Below(h->num_chunks() + 3))); break;
      case 5: h->set_codec(static_cast<v1::Codec>(Below(10))); break;
      case 6: h->set_dtype(static_cast<v1::DType>(Below(12))); break;
      default: h->clear_shape(); break;
    }
  }

 private:
  std::mt19937_64 rng_;
};

// A fresh seed each run; TANDEM_FUZZ_SEED replays one a failure printed.
uint64_t FuzzSeed() {
  if (const char* env = std::getenv("TANDEM_FUZZ_SEED")) return std::strtoull(env, nullptr, 10);
  return std::random_device{}();
}

TEST(TensorDecoderFuzz, MalformedFramesReturnErrors) {
  const uint64_t seed = FuzzSeed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  Mutator m(seed);
  DecodeLimits limits{.max_raw_bytes = 1 << 22, .max_chunk_bytes = 1 << 20, .max_chunks = 1024};
  int errors = 0, accepted = 0;
  constexpr int kIterations = 4000;
  for (int iter = 0; iter < kIterations; ++iter) {
    const Codec codec = WireCodecs()[m.Below(WireCodecs().size())];
    const DType dtype = (codec == Codec::kQ8 || m.Below(2)) ? DType::kBF16 : DType::kF32;
    const Shape shape{static_cast<int64_t>(1 + m.Below(4)), static_cast<int64_t>(1 + m.Below(700))};
    Tensor src = MakeActivations(dtype, shape, {.seed = m.Next()});
    auto frame = EncodeTensor(src.view(), {.codec = codec, .chunk_bytes = 256 + m.Below(2048)});
    ASSERT_TRUE(frame.ok()) << frame.status();
    v1::TensorFrame f = *frame;
    // One to three mutations of the header, a payload, the chunk list or the
    // serialized bytes of the whole frame.
    for (size_t k = 0, n = 1 + m.Below(3); k < n; ++k) {
      switch (m.Below(6)) {
        case 0: m.MutateHeader(f.mutable_header()); break;
        case 1:
        case 2:
          if (f.chunks_size() > 0) m.MutateBytes(f.mutable_chunks(static_cast<int>(m.Below(f.chunks_size())))->mutable_payload());
          break;
        case 3:
          if (f.chunks_size() > 0) {
            auto* c = f.mutable_chunks(static_cast<int>(m.Below(f.chunks_size())));
            if (m.Below(2)) c->set_index(static_cast<uint32_t>(m.Below(f.chunks_size() + 2)));
            else c->set_checksum(m.Next());
          }
          break;
        case 4:
          if (f.chunks_size() > 0 && m.Below(2)) f.mutable_chunks()->RemoveLast();
          else if (f.chunks_size() > 0) *f.add_chunks() = f.chunks(0);
          break;
        default: {
          std::string wire = f.SerializeAsString();
          m.MutateBytes(&wire);
          if (!f.ParseFromString(wire)) f.Clear();
          break;
        }
      }
    }
    auto decoded = DecodeTensor(f, limits);
    if (!decoded.ok()) {
      ++errors;
      EXPECT_FALSE(decoded.status().message().empty());
      continue;
    }
    // Accepted: every chunk checksum matched, so a frame whose header still
    // describes the source must reproduce it (lossless codecs).
    ++accepted;
    ASSERT_LE(decoded->NumBytes(), limits.max_raw_bytes);
    if (f.header().codec() == frame->header().codec() && codec != Codec::kQ8 &&
        decoded->NumBytes() == src.NumBytes() && decoded->dtype() == src.dtype()) {
      EXPECT_EQ(std::memcmp(decoded->data(), src.data(), src.NumBytes()), 0) << "iteration " << iter;
    }
  }
  EXPECT_GT(errors, kIterations * 8 / 10) << "accepted " << accepted;
}

TEST(TensorDecoderFuzz, RandomHeadersNeverAllocateBeyondLimits) {
  const uint64_t seed = FuzzSeed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  Mutator m(seed);
  DecodeLimits limits{.max_raw_bytes = 1 << 20, .max_chunk_bytes = 1 << 16, .max_chunks = 64};
  for (int iter = 0; iter < 3000; ++iter) {
    v1::TensorFrame f;
    v1::TensorHeader* h = f.mutable_header();
    h->set_dtype(static_cast<v1::DType>(m.Below(11)));
    h->set_codec(static_cast<v1::Codec>(m.Below(9)));
    for (size_t d = 0, n = m.Below(6); d < n; ++d)
      h->add_shape(m.Below(2) ? static_cast<int64_t>(m.Next()) : static_cast<int64_t>(m.Below(3000)));
    h->set_raw_bytes(m.Below(2) ? m.Next() : m.Below(1 << 21));
    h->set_chunk_raw_bytes(m.Below(2) ? m.Next() : m.Below(1 << 17));
    h->set_num_chunks(static_cast<uint32_t>(m.Below(100)));
    for (size_t c = 0, n = m.Below(4); c < n; ++c) {
      v1::TensorChunk* chunk = f.add_chunks();
      chunk->set_index(static_cast<uint32_t>(m.Below(5)));
      chunk->set_checksum(m.Next());
      std::string payload(m.Below(4096), '\0');
      for (char& ch : payload) ch = static_cast<char>(m.Next());
      chunk->set_payload(payload);
    }
    auto decoded = DecodeTensor(f, limits);
    if (decoded.ok()) {
      EXPECT_LE(decoded->NumBytes(), limits.max_raw_bytes);
    }
  }
}

// Received chunk messages are parsed in place (proto/chunk_wire.h): corrupted
// bytes, cut into random slices, must either be refused or read exactly as
// protobuf reads them, never crash or read out of bounds.
TEST(TensorDecoderFuzz, CorruptChunkMessagesParseAsProtobufOrFail) {
  const uint64_t seed = FuzzSeed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  Mutator m(seed);
  std::mt19937_64 rng(seed);
  constexpr int kField = v1::EchoMessage::kChunkFieldNumber;
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    v1::EchoMessage msg;
    v1::TensorChunk* c = msg.mutable_chunk();
    c->set_index(static_cast<uint32_t>(m.Below(2) ? m.Below(300) : m.Next()));
    c->set_checksum(m.Next());
    std::string payload(m.Below(500), '\0');
    for (char& ch : payload) ch = static_cast<char>(m.Next());
    c->set_payload(payload);
    std::string wire = msg.SerializeAsString();
    m.MutateBytes(&wire);
    std::vector<grpc::Slice> slices;
    for (size_t at = 0; at < wire.size();) {
      const size_t n = std::min(wire.size() - at, static_cast<size_t>(rng() % 64));
      slices.emplace_back(wire.data() + at, n);
      at += n;
    }
    grpc::ByteBuffer buffer(slices.data(), slices.size());
    ReceivedMessage received;
    ASSERT_TRUE(received.Reset(buffer).ok());
    ChunkView view;
    auto is_chunk = received.AsChunk(kField, &view);
    v1::EchoMessage parsed;
    const bool protobuf_ok = parsed.ParseFromString(wire);
    if (!is_chunk.ok() || !*is_chunk) continue;
    ++accepted;
    // Read in place as a chunk: protobuf must agree on every field.
    ASSERT_TRUE(protobuf_ok) << "iteration " << iter << ": " << absl::BytesToHexString(wire);
    ASSERT_TRUE(parsed.has_chunk()) << "iteration " << iter;
    EXPECT_EQ(view.index, parsed.chunk().index());
    EXPECT_EQ(view.checksum, parsed.chunk().checksum());
    std::string joined;
    for (auto piece : view.payload) joined.append(reinterpret_cast<const char*>(piece.data()), piece.size());
    EXPECT_EQ(joined, parsed.chunk().payload()) << "iteration " << iter;
  }
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace tandem
