#pragma once
// Tensor frames: a tensor cut into chunks, each compressed on its own and
// checksummed (xxhash64 of the raw chunk), described by a TensorHeader
// (tandem/v1/common.proto). The decoder trusts nothing it receives: the header
// is checked against dtype x shape and the size limits before any allocation,
// every chunk decompresses into a buffer of exactly its raw size, and any
// mismatch comes back as an error Status.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "tandem/v1/common.pb.h"

namespace tandem {

// Codec names everywhere (flags, YAML, JSON): none, lz4, zlib, zstd,
// shuffle-lz4, shuffle-zlib, shuffle-zstd, q8, auto. `auto` is resolved by a
// CodecSelector before encoding; it never appears on the wire.
enum class Codec : uint8_t {
  kNone,
  kLz4,
  kZlib,
  kZstd,
  kShuffleLz4,
  kShuffleZlib,
  kShuffleZstd,
  kQ8,
  kAuto,
};

std::string_view CodecName(Codec codec);
StatusOr<Codec> ParseCodec(std::string_view name);
// Every codec that can go on the wire (all but kAuto), in enum order.
std::span<const Codec> WireCodecs();
// Lossless wire codecs (all but kQ8 and kAuto).
std::span<const Codec> LosslessCodecs();
bool IsLossy(Codec codec);

v1::DType DTypeToProto(DType dtype);
StatusOr<DType> DTypeFromProto(int value);
v1::Codec CodecToProto(Codec codec);  // CHECKs codec != kAuto
StatusOr<Codec> CodecFromProto(int value);

inline constexpr size_t kDefaultChunkBytes = size_t{1} << 20;

struct CodecOptions {
  Codec codec = Codec::kNone;  // kAuto is refused here: resolve it first
  int zlib_level = 1;          // 1..9
  int zstd_level = 1;          // 1..19 (negative: faster levels)
  // Raw bytes per chunk; rounded down to whole elements (and q8 blocks).
  size_t chunk_bytes = kDefaultChunkBytes;
};

// What a decoder accepts; frames beyond these limits are refused before any
// allocation.
struct DecodeLimits {
  uint64_t max_raw_bytes = uint64_t{1} << 32;  // 4 GiB
  uint64_t max_chunk_bytes = uint64_t{64} << 20;
  uint32_t max_chunks = 1u << 16;
};

// Encodes one contiguous tensor. The source must stay alive and unchanged
// until the last EncodeChunk returns. EncodeChunk is const and may run for
// different indices on different threads at once.
class TensorEncoder {
 public:
  static StatusOr<TensorEncoder> Create(const TensorView& src, const CodecOptions& options);

  const v1::TensorHeader& header() const { return header_; }
  uint32_t num_chunks() const { return header_.num_chunks(); }
  // Fills `out` (index, checksum, payload) for chunk `index`; reuses the
  // payload string's capacity.
  Status EncodeChunk(uint32_t index, v1::TensorChunk* out) const;

 private:
  TensorEncoder() = default;
  v1::TensorHeader header_;
  Codec codec_ = Codec::kNone;
  DType dtype_ = DType::kF32;
  const uint8_t* data_ = nullptr;
  int zlib_level_ = 1;
  int zstd_level_ = 1;
};

// Validates a header on its own: known dtype and codec, shape x dtype equals
// raw_bytes (without overflow), chunking consistent, within `limits`.
Status ValidateHeader(const v1::TensorHeader& header, const DecodeLimits& limits = {});

// A received chunk whose payload stays where it arrived: `payload` lists its
// bytes in order as pieces of buffers the caller keeps alive (for example the
// slices of a gRPC message), so that decoding reads them without a copy.
struct ChunkView {
  uint32_t index = 0;
  uint64_t checksum = 0;
  std::vector<std::span<const uint8_t>> payload;
  size_t payload_bytes() const;
};

// Decodes the chunks of one frame, in any order, into `dest` ([raw_bytes]).
// Each chunk index is accepted once; Finish() reports missing chunks.
class TensorDecoder {
 public:
  // `dest` must be exactly header.raw_bytes() long.
  static StatusOr<TensorDecoder> Create(const v1::TensorHeader& header, std::span<uint8_t> dest,
                                        const DecodeLimits& limits = {});
  Status DecodeChunk(const v1::TensorChunk& chunk);
  Status DecodeChunk(const ChunkView& chunk);
  Status Finish() const;
  uint64_t wire_bytes() const { return wire_bytes_; }

 private:
  TensorDecoder() = default;
  v1::TensorHeader header_;
  Codec codec_ = Codec::kNone;
  DType dtype_ = DType::kF32;
  std::span<uint8_t> dest_;
  std::vector<bool> seen_;
  uint32_t remaining_ = 0;
  uint64_t wire_bytes_ = 0;
};

// Whole-frame conveniences.
StatusOr<v1::TensorFrame> EncodeTensor(const TensorView& src, const CodecOptions& options);
// Decodes into `dest`, whose dtype and shape must equal the frame's.
Status DecodeTensor(const v1::TensorFrame& frame, const TensorView& dest,
                    const DecodeLimits& limits = {});
// Decodes into a newly allocated tensor (size bounded by `limits`).
StatusOr<Tensor> DecodeTensor(const v1::TensorFrame& frame, const DecodeLimits& limits = {});
// Sum of payload sizes of a frame.
uint64_t FrameWireBytes(const v1::TensorFrame& frame);

}  // namespace tandem
