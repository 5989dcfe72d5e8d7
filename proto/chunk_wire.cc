#include "proto/chunk_wire.h"

#include <cstring>
#include <memory>

#include "grpcpp/impl/codegen/proto_utils.h"

namespace tandem {
namespace {

// Protobuf wire types.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;

// TensorChunk's fields.
constexpr uint32_t kIndexField = 1;
constexpr uint32_t kChecksumField = 2;
constexpr uint32_t kPayloadField = 3;

size_t PutVarint(uint64_t v, uint8_t* out) {
  size_t n = 0;
  while (v >= 0x80) {
    out[n++] = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  out[n++] = static_cast<uint8_t>(v);
  return n;
}
uint64_t Tag(uint32_t field, int wire_type) {
  return (static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire_type);
}

// The encoding of everything before the payload bytes:
//   tag(field) len(chunk) [tag(1) index] [tag(2) checksum] [tag(3) len(payload)]
// with zero-valued fields left out, as protobuf itself writes them.
grpc::Slice ChunkHead(int field, uint32_t index, uint64_t checksum, size_t payload_bytes) {
  uint8_t inner[32];
  size_t n = 0;
  if (index != 0) {
    n += PutVarint(Tag(kIndexField, kVarint), inner + n);
    n += PutVarint(index, inner + n);
  }
  if (checksum != 0) {
    n += PutVarint(Tag(kChecksumField, kVarint), inner + n);
    n += PutVarint(checksum, inner + n);
  }
  if (payload_bytes != 0) {
    n += PutVarint(Tag(kPayloadField, kLengthDelimited), inner + n);
    n += PutVarint(payload_bytes, inner + n);
  }
  uint8_t head[64];
  size_t h = PutVarint(Tag(static_cast<uint32_t>(field), kLengthDelimited), head);
  h += PutVarint(n + payload_bytes, head + h);
  std::memcpy(head + h, inner, n);
  return grpc::Slice(head, h + n);
}

grpc::ByteBuffer WithPayload(int field, const v1::TensorChunk& chunk, grpc::Slice payload) {
  const size_t n = payload.size();
  grpc::Slice slices[2] = {ChunkHead(field, chunk.index(), chunk.checksum(), n),
                           std::move(payload)};
  return grpc::ByteBuffer(slices, n == 0 ? 1 : 2);
}

// Reads protobuf wire format from a sequence of slices.
class SliceReader {
 public:
  SliceReader(const std::vector<grpc::Slice>& slices, size_t slice, size_t offset, size_t left)
      : slices_(slices), slice_(slice), offset_(offset), left_(left) {}

  size_t left() const { return left_; }
  bool ReadByte(uint8_t* b) {
    if (left_ == 0) return false;
    SkipEmpty();
    *b = slices_[slice_].begin()[offset_];
    Advance(1);
    return true;
  }
  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = 0;
      if (!ReadByte(&b)) return false;
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  // Appends the next `n` bytes to `pieces` as views into the slices.
  bool Take(size_t n, std::vector<std::span<const uint8_t>>* pieces) {
    if (n > left_) return false;
    while (n > 0) {
      SkipEmpty();
      const grpc::Slice& s = slices_[slice_];
      const size_t here = std::min(n, s.size() - offset_);
      if (pieces != nullptr) pieces->emplace_back(s.begin() + offset_, here);
      Advance(here);
      n -= here;
    }
    return true;
  }
  bool Skip(size_t n) { return Take(n, nullptr); }
  // Skips a field's value of `wire_type`.
  bool SkipValue(int wire_type) {
    uint64_t v = 0;
    switch (wire_type) {
      case kVarint: return ReadVarint(&v);
      case kFixed64: return Skip(8);
      case kLengthDelimited: return ReadVarint(&v) && Skip(static_cast<size_t>(v));
      case kFixed32: return Skip(4);
      default: return false;  // groups are not used by tandem's messages
    }
  }

 private:
  void SkipEmpty() {
    while (left_ > 0 && offset_ == slices_[slice_].size()) {
      ++slice_;
      offset_ = 0;
    }
  }
  void Advance(size_t n) {
    offset_ += n;
    left_ -= n;
  }

  const std::vector<grpc::Slice>& slices_;
  size_t slice_;
  size_t offset_;
  size_t left_;
};

Status Malformed() { return absl::DataLossError("malformed chunk message"); }

}  // namespace

grpc::ByteBuffer ChunkMessageBuffer(int field, v1::TensorChunk&& chunk) {
  auto* payload = new std::string(std::move(*chunk.mutable_payload()));
  chunk.clear_payload();
  if (payload->empty()) {
    delete payload;
    return WithPayload(field, chunk, grpc::Slice());
  }
  return WithPayload(field, chunk,
                     grpc::Slice(
                         payload->data(), payload->size(),
                         [](void* p) { delete static_cast<std::string*>(p); }, payload));
}

grpc::ByteBuffer BorrowedChunkMessageBuffer(int field, const v1::TensorChunk& chunk) {
  const std::string& p = chunk.payload();
  return WithPayload(field, chunk, grpc::Slice(p.data(), p.size(), grpc::Slice::STATIC_SLICE));
}

StatusOr<grpc::ByteBuffer> MessageBuffer(const google::protobuf::MessageLite& message) {
  grpc::ByteBuffer buffer;
  bool own = false;
  grpc::Status s = grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(
      message, &buffer, &own);
  if (!s.ok()) return absl::InternalError(absl::StrCat("serializing: ", s.error_message()));
  return buffer;
}

Status ParseMessageBuffer(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  grpc::ByteBuffer copy(buffer);  // shares the slices; Deserialize clears its argument
  grpc::Status s =
      grpc::SerializationTraits<google::protobuf::MessageLite>::Deserialize(&copy, message);
  if (!s.ok()) return absl::DataLossError(absl::StrCat("malformed message: ", s.error_message()));
  return absl::OkStatus();
}

Status ReceivedMessage::Reset(grpc::ByteBuffer& buffer) {
  slices_.clear();
  bytes_ = 0;
  if (buffer.Valid()) {
    grpc::Status s = buffer.Dump(&slices_);
    if (!s.ok()) return absl::DataLossError(absl::StrCat("unreadable message: ", s.error_message()));
    for (const grpc::Slice& slice : slices_) bytes_ += slice.size();
  }
  buffer.Clear();
  return absl::OkStatus();
}

StatusOr<bool> ReceivedMessage::AsChunk(int field, ChunkView* chunk) const {
  SliceReader outer(slices_, 0, 0, bytes_);
  uint64_t tag = 0;
  uint64_t len = 0;
  // Anything but a message made of the chunk field alone goes to protobuf,
  // which also judges whether it is malformed.
  if (!outer.ReadVarint(&tag) || tag != Tag(static_cast<uint32_t>(field), kLengthDelimited) ||
      !outer.ReadVarint(&len) || len != outer.left()) {
    return false;
  }
  SliceReader in = outer;
  chunk->index = 0;
  chunk->checksum = 0;
  chunk->payload.clear();
  while (in.left() > 0) {
    // As protobuf: a tag is a 32-bit varint with a non-zero field number.
    if (!in.ReadVarint(&tag) || tag > 0xFFFFFFFFu || (tag >> 3) == 0) return Malformed();
    const uint64_t number = tag >> 3;
    const int wire_type = static_cast<int>(tag & 7);
    uint64_t v = 0;
    if (number == kIndexField && wire_type == kVarint) {
      if (!in.ReadVarint(&v)) return Malformed();
      chunk->index = static_cast<uint32_t>(v);  // as protobuf reads a uint32
    } else if (number == kChecksumField && wire_type == kVarint) {
      if (!in.ReadVarint(&chunk->checksum)) return Malformed();
    } else if (number == kPayloadField && wire_type == kLengthDelimited) {
      chunk->payload.clear();  // the last occurrence wins, as in protobuf
      if (!in.ReadVarint(&v) || !in.Take(static_cast<size_t>(v), &chunk->payload)) {
        return Malformed();
      }
    } else if (!in.SkipValue(wire_type)) {
      return Malformed();
    }
  }
  return true;
}

Status ReceivedMessage::Parse(google::protobuf::MessageLite* message) const {
  return ParseMessageBuffer(Buffer(), message);
}

grpc::ByteBuffer ReceivedMessage::Buffer() const {
  return grpc::ByteBuffer(slices_.data(), slices_.size());
}

void ReceivedMessage::Release() {
  slices_.clear();
  bytes_ = 0;
}

}  // namespace tandem
