#include "proto/tensor_codec.h"

#include <lz4.h>
#include <xxhash.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>

#include "proto/byte_shuffle.h"
#include "proto/q8_codec.h"

namespace tandem {
namespace {

constexpr std::array<std::string_view, 9> kCodecNames = {
    "none", "lz4", "zlib", "zstd", "shuffle-lz4", "shuffle-zlib", "shuffle-zstd", "q8", "auto"};
constexpr std::array<Codec, 8> kWireCodecs = {Codec::kNone,        Codec::kLz4,
                                              Codec::kZlib,        Codec::kZstd,
                                              Codec::kShuffleLz4,  Codec::kShuffleZlib,
                                              Codec::kShuffleZstd, Codec::kQ8};
constexpr std::array<Codec, 7> kLosslessCodecs = {Codec::kNone,       Codec::kLz4,
                                                  Codec::kZlib,       Codec::kZstd,
                                                  Codec::kShuffleLz4, Codec::kShuffleZlib,
                                                  Codec::kShuffleZstd};

bool IsShuffled(Codec c) {
  return c == Codec::kShuffleLz4 || c == Codec::kShuffleZlib || c == Codec::kShuffleZstd;
}
// The entropy coder behind a codec (shuffle variants map to their coder).
Codec Coder(Codec c) {
  switch (c) {
    case Codec::kShuffleLz4: return Codec::kLz4;
    case Codec::kShuffleZlib: return Codec::kZlib;
    case Codec::kShuffleZstd: return Codec::kZstd;
    default: return c;
  }
}
// Bytes per element for chunking and shuffling (int4 packs two per byte).
size_t ElementBytes(DType t) { return std::max(1, DTypeBits(t) / 8); }
size_t ChunkUnit(DType t, Codec c) {
  return c == Codec::kQ8 ? ElementBytes(t) * kQ8Block : ElementBytes(t);
}

// Per-thread scratch and coder contexts: encoders and decoders are used from
// several threads, and contexts are costly to create per chunk.
struct ThreadCoders {
  std::vector<uint8_t> scratch;
  std::vector<uint8_t> gathered;  // a payload received in pieces, made contiguous
  ZSTD_CCtx* cctx = nullptr;
  ZSTD_DCtx* dctx = nullptr;
  ~ThreadCoders() {
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
  }
  uint8_t* Scratch(size_t n) {
    if (scratch.size() < n) scratch.resize(n);
    return scratch.data();
  }
  uint8_t* Gathered(size_t n) {
    if (gathered.size() < n) gathered.resize(n);
    return gathered.data();
  }
  ZSTD_CCtx* CCtx() {
    if (cctx == nullptr) cctx = ZSTD_createCCtx();
    CHECK(cctx != nullptr);
    return cctx;
  }
  ZSTD_DCtx* DCtx() {
    if (dctx == nullptr) dctx = ZSTD_createDCtx();
    CHECK(dctx != nullptr);
    return dctx;
  }
};
ThreadCoders& Coders() {
  thread_local ThreadCoders coders;
  return coders;
}

Status Compress(Codec coder, const uint8_t* src, size_t n, int zlib_level, int zstd_level,
                std::string* out) {
  switch (coder) {
    case Codec::kNone:
      out->assign(reinterpret_cast<const char*>(src), n);
      return absl::OkStatus();
    case Codec::kLz4: {
      if (n > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) {
        return absl::InvalidArgumentError("lz4: chunk too large");
      }
      const int bound = LZ4_compressBound(static_cast<int>(n));
      out->resize(static_cast<size_t>(bound));
      const int written = LZ4_compress_default(reinterpret_cast<const char*>(src), out->data(),
                                               static_cast<int>(n), bound);
      if (written <= 0 && n > 0) return absl::InternalError("lz4: compression failed");
      out->resize(static_cast<size_t>(written));
      return absl::OkStatus();
    }
    case Codec::kZlib: {
      uLongf len = compressBound(static_cast<uLong>(n));
      out->resize(len);
      const int rc = compress2(reinterpret_cast<Bytef*>(out->data()), &len, src,
                               static_cast<uLong>(n), zlib_level);
      if (rc != Z_OK) return absl::InternalError(absl::StrCat("zlib: compression failed (", rc, ")"));
      out->resize(len);
      return absl::OkStatus();
    }
    case Codec::kZstd: {
      const size_t bound = ZSTD_compressBound(n);
      out->resize(bound);
      const size_t written =
          ZSTD_compressCCtx(Coders().CCtx(), out->data(), bound, src, n, zstd_level);
      if (ZSTD_isError(written)) {
        return absl::InternalError(absl::StrCat("zstd: ", ZSTD_getErrorName(written)));
      }
      out->resize(written);
      return absl::OkStatus();
    }
    default:
      break;
  }
  return absl::InternalError("unreachable coder");
}

// Decompresses into exactly `n` bytes at `dst`; anything else is an error.
Status Decompress(Codec coder, std::span<const uint8_t> bytes, uint8_t* dst, size_t n) {
  const std::string_view payload(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  switch (coder) {
    case Codec::kNone:
      if (payload.size() != n) {
        return absl::DataLossError(
            absl::StrCat("payload has ", payload.size(), " bytes, expected ", n));
      }
      if (n > 0) std::memcpy(dst, payload.data(), n);
      return absl::OkStatus();
    case Codec::kLz4: {
      if (payload.size() > static_cast<size_t>(LZ4_compressBound(static_cast<int>(n))) + 16) {
        return absl::DataLossError(absl::StrCat("lz4 payload of ", payload.size(),
                                                " bytes is too long for ", n, " raw bytes"));
      }
      const int got = LZ4_decompress_safe(payload.data(), reinterpret_cast<char*>(dst),
                                          static_cast<int>(payload.size()), static_cast<int>(n));
      if (got < 0 || static_cast<size_t>(got) != n) {
        return absl::DataLossError(absl::StrCat("lz4 payload is corrupt or does not inflate to ",
                                                n, " bytes"));
      }
      return absl::OkStatus();
    }
    case Codec::kZlib: {
      uLongf dst_len = static_cast<uLongf>(n);
      uLong src_len = static_cast<uLong>(payload.size());
      const int rc = uncompress2(dst, &dst_len, reinterpret_cast<const Bytef*>(payload.data()),
                                 &src_len);
      if (rc != Z_OK || dst_len != n || src_len != payload.size()) {
        return absl::DataLossError(absl::StrCat("zlib payload is corrupt or does not inflate to ",
                                                n, " bytes (zlib code ", rc, ")"));
      }
      return absl::OkStatus();
    }
    case Codec::kZstd: {
      const size_t got =
          ZSTD_decompressDCtx(Coders().DCtx(), dst, n, payload.data(), payload.size());
      if (ZSTD_isError(got) || got != n) {
        return absl::DataLossError(
            absl::StrCat("zstd payload is corrupt or does not inflate to ", n, " bytes",
                         ZSTD_isError(got) ? absl::StrCat(" (", ZSTD_getErrorName(got), ")") : ""));
      }
      return absl::OkStatus();
    }
    default:
      break;
  }
  return absl::InternalError("unreachable coder");
}

}  // namespace

std::string_view CodecName(Codec codec) { return kCodecNames[static_cast<size_t>(codec)]; }

StatusOr<Codec> ParseCodec(std::string_view name) {
  for (size_t i = 0; i < kCodecNames.size(); ++i) {
    if (kCodecNames[i] == name) return static_cast<Codec>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown codec '", std::string(name),
      "' (expected none, lz4, zlib, zstd, shuffle-lz4, shuffle-zlib, shuffle-zstd, q8 or auto)"));
}

std::span<const Codec> WireCodecs() { return kWireCodecs; }
std::span<const Codec> LosslessCodecs() { return kLosslessCodecs; }
bool IsLossy(Codec codec) { return codec == Codec::kQ8; }

v1::DType DTypeToProto(DType dtype) { return static_cast<v1::DType>(dtype); }

StatusOr<DType> DTypeFromProto(int value) {
  if (value < 0 || value > static_cast<int>(DType::kBool)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dtype value ", value));
  }
  return static_cast<DType>(value);
}

v1::Codec CodecToProto(Codec codec) {
  CHECK_MSG(codec != Codec::kAuto, "codec auto must be resolved before encoding");
  return static_cast<v1::Codec>(codec);
}

StatusOr<Codec> CodecFromProto(int value) {
  if (value < 0 || value > static_cast<int>(Codec::kQ8)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown codec value ", value));
  }
  return static_cast<Codec>(value);
}

// ---------------------------------------------------------------- encoder

StatusOr<TensorEncoder> TensorEncoder::Create(const TensorView& src, const CodecOptions& options) {
  if (options.codec == Codec::kAuto) {
    return absl::InvalidArgumentError("codec 'auto' must be resolved (CodecSelector) before encoding");
  }
  if (!src.IsContiguous()) return absl::InvalidArgumentError("tensor to encode is not contiguous");
  if (options.codec == Codec::kQ8 && !Q8Supports(src.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("codec q8 needs an f32, f16 or bf16 tensor, not ", std::string(DTypeName(src.dtype))));
  }
  if (options.zlib_level < 0 || options.zlib_level > 9) {
    return absl::InvalidArgumentError(
        absl::StrCat("zlib level ", options.zlib_level, " is outside 0..9"));
  }
  if (options.zstd_level < ZSTD_minCLevel() || options.zstd_level > ZSTD_maxCLevel()) {
    return absl::InvalidArgumentError(absl::StrCat("zstd level ", options.zstd_level,
                                                   " is outside ", ZSTD_minCLevel(), "..",
                                                   ZSTD_maxCLevel()));
  }
  if (src.NumElements() > 0 && src.data == nullptr) {
    return absl::InvalidArgumentError("tensor to encode has no data");
  }
  TensorEncoder enc;
  enc.codec_ = options.codec;
  enc.dtype_ = src.dtype;
  enc.data_ = static_cast<const uint8_t*>(src.data);
  enc.zlib_level_ = options.zlib_level;
  enc.zstd_level_ = options.zstd_level;
  const size_t raw = src.NumBytes();
  const size_t unit = ChunkUnit(src.dtype, options.codec);
  const size_t chunk = std::max(unit, options.chunk_bytes / unit * unit);
  v1::TensorHeader& h = enc.header_;
  h.set_dtype(DTypeToProto(src.dtype));
  for (int64_t d : src.shape.dims()) h.add_shape(d);
  h.set_codec(CodecToProto(options.codec));
  h.set_raw_bytes(raw);
  h.set_chunk_raw_bytes(chunk);
  const size_t chunks = (raw + chunk - 1) / chunk;
  if (chunks > DecodeLimits{}.max_chunks) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor of ", raw, " bytes needs ", chunks, " chunks of ", chunk,
                     " bytes; raise the chunk size"));
  }
  h.set_num_chunks(static_cast<uint32_t>(chunks));
  return enc;
}

Status TensorEncoder::EncodeChunk(uint32_t index, v1::TensorChunk* out) const {
  CHECK_LT(index, header_.num_chunks());
  const size_t chunk = header_.chunk_raw_bytes();
  const size_t begin = static_cast<size_t>(index) * chunk;
  const size_t n = std::min<size_t>(chunk, header_.raw_bytes() - begin);
  const uint8_t* src = data_ + begin;
  out->set_index(index);
  out->set_checksum(XXH64(src, n, index));
  std::string* payload = out->mutable_payload();
  if (codec_ == Codec::kQ8) {
    // Lossy: the checksum covers the payload, as the decoded values differ.
    RETURN_IF_ERROR(Q8Encode(dtype_, src, n / ElementBytes(dtype_), payload));
    out->set_checksum(XXH64(payload->data(), payload->size(), index));
    return absl::OkStatus();
  }
  if (IsShuffled(codec_)) {
    uint8_t* shuffled = Coders().Scratch(n);
    const size_t elem = ElementBytes(dtype_);
    ByteShuffle(src, shuffled, n / elem, elem);
    src = shuffled;
  }
  return Compress(Coder(codec_), src, n, zlib_level_, zstd_level_, payload);
}

// ---------------------------------------------------------------- decoder

Status ValidateHeader(const v1::TensorHeader& h, const DecodeLimits& limits) {
  ASSIGN_OR_RETURN(DType dtype, DTypeFromProto(h.dtype()));
  ASSIGN_OR_RETURN(Codec codec, CodecFromProto(h.codec()));
  if (h.shape_size() > kMaxRank) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor header: rank ", h.shape_size(), " exceeds ", kMaxRank));
  }
  uint64_t elements = 1;
  for (int i = 0; i < h.shape_size(); ++i) {
    const int64_t d = h.shape(i);
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor header: dimension ", i, " is ", d));
    }
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements) ||
        elements > limits.max_raw_bytes * 8) {
      return absl::InvalidArgumentError("tensor header: shape exceeds the size limit");
    }
  }
  const uint64_t expected = DTypeBytes(dtype, elements);
  if (expected != h.raw_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor header: ", std::string(DTypeName(dtype)), " x ", elements, " elements is ", expected,
        " bytes but raw_bytes says ", h.raw_bytes()));
  }
  if (h.raw_bytes() > limits.max_raw_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("tensor header: ", h.raw_bytes(),
                                                     " bytes exceeds the limit of ",
                                                     limits.max_raw_bytes));
  }
  if (codec == Codec::kQ8 && !Q8Supports(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor header: codec q8 with dtype ", std::string(DTypeName(dtype))));
  }
  if (h.raw_bytes() == 0) {
    if (h.num_chunks() != 0) {
      return absl::InvalidArgumentError("tensor header: empty tensor with chunks");
    }
    return absl::OkStatus();
  }
  const uint64_t chunk = h.chunk_raw_bytes();
  const uint64_t unit = ChunkUnit(dtype, codec);
  if (chunk == 0 || chunk > limits.max_chunk_bytes || chunk % unit != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor header: chunk size ", chunk, " is not a multiple of ", unit, " in (0, ",
        limits.max_chunk_bytes, "]"));
  }
  const uint64_t chunks = (h.raw_bytes() + chunk - 1) / chunk;
  if (chunks != h.num_chunks() || chunks > limits.max_chunks) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor header: ", h.num_chunks(), " chunks declared, ", chunks,
                     " needed for ", h.raw_bytes(), " bytes (limit ", limits.max_chunks, ")"));
  }
  return absl::OkStatus();
}

StatusOr<TensorDecoder> TensorDecoder::Create(const v1::TensorHeader& header,
                                              std::span<uint8_t> dest,
                                              const DecodeLimits& limits) {
  RETURN_IF_ERROR(ValidateHeader(header, limits));
  if (dest.size() != header.raw_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("frame of ", header.raw_bytes(),
                                                   " bytes does not fit a buffer of ",
                                                   dest.size(), " bytes"));
  }
  TensorDecoder dec;
  dec.header_ = header;
  dec.codec_ = static_cast<Codec>(header.codec());
  dec.dtype_ = static_cast<DType>(header.dtype());
  dec.dest_ = dest;
  dec.seen_.assign(header.num_chunks(), false);
  dec.remaining_ = header.num_chunks();
  return dec;
}

size_t ChunkView::payload_bytes() const {
  size_t n = 0;
  for (std::span<const uint8_t> piece : payload) n += piece.size();
  return n;
}

Status TensorDecoder::DecodeChunk(const v1::TensorChunk& c) {
  ChunkView view{.index = c.index(), .checksum = c.checksum(), .payload = {}};
  view.payload.emplace_back(reinterpret_cast<const uint8_t*>(c.payload().data()),
                            c.payload().size());
  return DecodeChunk(view);
}

Status TensorDecoder::DecodeChunk(const ChunkView& c) {
  const uint32_t index = c.index;
  if (index >= header_.num_chunks()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk index ", index, " out of range (", header_.num_chunks(), " chunks)"));
  }
  if (seen_[index]) return absl::InvalidArgumentError(absl::StrCat("chunk ", index, " repeated"));
  const size_t chunk = header_.chunk_raw_bytes();
  const size_t begin = static_cast<size_t>(index) * chunk;
  const size_t n = std::min<size_t>(chunk, header_.raw_bytes() - begin);
  uint8_t* dst = dest_.data() + begin;
  const size_t payload_bytes = c.payload_bytes();
  Status st;
  if (codec_ == Codec::kNone && c.payload.size() > 1) {
    // Stored pieces go straight to their place.
    if (payload_bytes != n) {
      st = absl::DataLossError(absl::StrCat("payload has ", payload_bytes, " bytes, expected ", n));
    } else {
      uint8_t* at = dst;
      for (std::span<const uint8_t> piece : c.payload) {
        if (!piece.empty()) std::memcpy(at, piece.data(), piece.size());
        at += piece.size();
      }
    }
  } else {
    // Coders read one contiguous payload.
    std::span<const uint8_t> payload;
    if (c.payload.size() == 1) {
      payload = c.payload[0];
    } else if (c.payload.size() > 1) {
      // Every coder's worst case stays far below this bound; it caps the
      // scratch buffer before anything is copied.
      if (payload_bytes > n + n / 8 + 1024) {
        return absl::DataLossError(absl::StrCat("chunk ", index, " of ", header_.num_chunks(),
                                                ": payload of ", payload_bytes,
                                                " bytes is too long for ", n, " raw bytes"));
      }
      uint8_t* gathered = Coders().Gathered(payload_bytes);
      uint8_t* at = gathered;
      for (std::span<const uint8_t> piece : c.payload) {
        if (!piece.empty()) std::memcpy(at, piece.data(), piece.size());
        at += piece.size();
      }
      payload = {gathered, payload_bytes};
    }
    if (codec_ == Codec::kQ8) {
      if (XXH64(payload.data(), payload.size(), index) != c.checksum) {
        return absl::DataLossError(absl::StrCat("chunk ", index, " of ", header_.num_chunks(),
                                                ": checksum mismatch"));
      }
      st = Q8Decode(payload, dtype_, dst, n / ElementBytes(dtype_));
    } else if (IsShuffled(codec_)) {
      uint8_t* scratch = Coders().Scratch(n);
      st = Decompress(Coder(codec_), payload, scratch, n);
      if (st.ok()) {
        const size_t elem = ElementBytes(dtype_);
        ByteUnshuffle(scratch, dst, n / elem, elem);
      }
    } else {
      st = Decompress(codec_, payload, dst, n);
    }
  }
  if (!st.ok()) {
    return absl::DataLossError(absl::StrCat("chunk ", index, " of ", header_.num_chunks(), " (",
                                            std::string(CodecName(codec_)), "): ", st.message()));
  }
  if (codec_ != Codec::kQ8 && XXH64(dst, n, index) != c.checksum) {
    return absl::DataLossError(absl::StrCat("chunk ", index, " of ", header_.num_chunks(),
                                            ": checksum mismatch"));
  }
  seen_[index] = true;
  --remaining_;
  wire_bytes_ += payload_bytes;
  return absl::OkStatus();
}

Status TensorDecoder::Finish() const {
  if (remaining_ != 0) {
    return absl::DataLossError(absl::StrCat("frame incomplete: ", remaining_, " of ",
                                            header_.num_chunks(), " chunks missing"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- whole frames

StatusOr<v1::TensorFrame> EncodeTensor(const TensorView& src, const CodecOptions& options) {
  ASSIGN_OR_RETURN(TensorEncoder enc, TensorEncoder::Create(src, options));
  v1::TensorFrame frame;
  *frame.mutable_header() = enc.header();
  for (uint32_t i = 0; i < enc.num_chunks(); ++i) {
    RETURN_IF_ERROR(enc.EncodeChunk(i, frame.add_chunks()));
  }
  return frame;
}

Status DecodeTensor(const v1::TensorFrame& frame, const TensorView& dest,
                    const DecodeLimits& limits) {
  if (!dest.IsContiguous()) return absl::InvalidArgumentError("destination is not contiguous");
  RETURN_IF_ERROR(ValidateHeader(frame.header(), limits));
  const v1::TensorHeader& h = frame.header();
  Shape shape(std::span<const int64_t>(h.shape().data(), static_cast<size_t>(h.shape_size())));
  if (static_cast<DType>(h.dtype()) != dest.dtype || !(shape == dest.shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "frame holds ", std::string(DTypeName(static_cast<DType>(h.dtype()))), " ", shape.ToString(),
        ", destination is ", std::string(DTypeName(dest.dtype)), " ", dest.shape.ToString()));
  }
  ASSIGN_OR_RETURN(TensorDecoder dec,
                   TensorDecoder::Create(h, {static_cast<uint8_t*>(dest.data), dest.NumBytes()},
                                         limits));
  for (const v1::TensorChunk& c : frame.chunks()) RETURN_IF_ERROR(dec.DecodeChunk(c));
  return dec.Finish();
}

StatusOr<Tensor> DecodeTensor(const v1::TensorFrame& frame, const DecodeLimits& limits) {
  RETURN_IF_ERROR(ValidateHeader(frame.header(), limits));
  const v1::TensorHeader& h = frame.header();
  Tensor t(static_cast<DType>(h.dtype()),
           Shape(std::span<const int64_t>(h.shape().data(), static_cast<size_t>(h.shape_size()))));
  RETURN_IF_ERROR(DecodeTensor(frame, t.view(), limits));
  return t;
}

uint64_t FrameWireBytes(const v1::TensorFrame& frame) {
  uint64_t n = 0;
  for (const v1::TensorChunk& c : frame.chunks()) n += c.payload().size();
  return n;
}

}  // namespace tandem
