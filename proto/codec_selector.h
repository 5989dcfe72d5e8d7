#pragma once
// Codec `auto`: a cost model built from this machine's measured codec speeds
// and ratios and the link's measured bandwidth, choosing for each frame size
// the codec with the least compress + transfer + decompress time, counting the
// overlap of chunked streaming.
#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"
#include "proto/tensor_codec.h"

namespace tandem {

// Per chunk of n raw bytes: seconds = fixed_s + n / bytes_per_s; the wire
// size is n * ratio (ratio = wire / raw, interpolated between two sizes).
struct CodecProfile {
  Codec codec = Codec::kNone;
  double compress_fixed_s = 0, compress_bytes_per_s = 1e12;
  double decompress_fixed_s = 0, decompress_bytes_per_s = 1e12;
  uint64_t small_bytes = 16384, large_bytes = 1 << 20;
  double small_ratio = 1.0, large_ratio = 1.0;

  double Ratio(double n) const;
  double CompressSeconds(double n) const { return compress_fixed_s + n / compress_bytes_per_s; }
  double DecompressSeconds(double n) const {
    return decompress_fixed_s + n / decompress_bytes_per_s;
  }
};

struct LinkModel {
  double bytes_per_s = 125e6;     // 1 Gbit/s, as measured on large frames
  double per_message_s = 20e-6;   // fixed cost per chunk message
  // Small frames can cross faster than the sustained rate (a shaper's burst
  // allowance, socket buffers): the effective rate measured on a frame of
  // small_frame_bytes. 0: the same as bytes_per_s.
  double small_bytes_per_s = 0;
  uint64_t small_frame_bytes = 16384;
  uint64_t large_frame_bytes = 4 << 20;
  // The effective rate for a frame of `frame_bytes` raw bytes, interpolated
  // in log-size between the small and the large measurement.
  double BytesPerSecond(double frame_bytes) const;
};

struct CalibrationParams {
  DType dtype = DType::kBF16;
  std::vector<Codec> codecs;  // empty: every lossless codec
  CodecOptions options;       // levels and chunk size
  int repeats = 3;
};

class CodecSelector {
 public:
  // Times each codec on synthetic activations (activation_sample.h) of two
  // sizes on this machine.
  static StatusOr<CodecSelector> Calibrate(const CalibrationParams& params);
  CodecSelector(std::vector<CodecProfile> profiles, size_t chunk_bytes);

  // Predicted seconds to move a frame of `raw_bytes` with `codec`.
  double PredictSeconds(const CodecProfile& profile, uint64_t raw_bytes,
                        const LinkModel& link) const;
  // The codec with the least predicted time; a compressing codec must save
  // at least kMinSavingSeconds and kMinSavingFraction of `none`'s time (when
  // `none` is a candidate), as smaller gains drown in scheduling jitter and
  // in the link's burst allowance.
  Codec Choose(uint64_t raw_bytes, const LinkModel& link) const;
  static constexpr double kMinSavingSeconds = 250e-6;
  static constexpr double kMinSavingFraction = 0.05;
  const std::vector<CodecProfile>& profiles() const { return profiles_; }

 private:
  std::vector<CodecProfile> profiles_;
  size_t chunk_bytes_;
};

}  // namespace tandem
