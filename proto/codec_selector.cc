#include "proto/codec_selector.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "proto/activation_sample.h"

namespace tandem {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Measured {
  double compress_s, decompress_s, ratio;
};

StatusOr<Measured> Measure(const Tensor& sample, const CodecOptions& options, int repeats) {
  std::vector<double> enc_t, dec_t;
  double ratio = 1.0;
  Tensor out(sample.dtype(), sample.shape());
  for (int r = 0; r < repeats + 1; ++r) {  // first run warms up
    const double t0 = Now();
    ASSIGN_OR_RETURN(v1::TensorFrame frame, EncodeTensor(sample.view(), options));
    const double t1 = Now();
    RETURN_IF_ERROR(DecodeTensor(frame, out.view()));
    const double t2 = Now();
    if (r == 0) continue;
    enc_t.push_back(t1 - t0);
    dec_t.push_back(t2 - t1);
    ratio = static_cast<double>(FrameWireBytes(frame)) / static_cast<double>(sample.NumBytes());
  }
  std::sort(enc_t.begin(), enc_t.end());
  std::sort(dec_t.begin(), dec_t.end());
  return Measured{enc_t[enc_t.size() / 2], dec_t[dec_t.size() / 2], ratio};
}

}  // namespace

double CodecProfile::Ratio(double n) const {
  if (n <= static_cast<double>(small_bytes)) return small_ratio;
  if (n >= static_cast<double>(large_bytes)) return large_ratio;
  const double f = std::log(n / static_cast<double>(small_bytes)) /
                   std::log(static_cast<double>(large_bytes) / static_cast<double>(small_bytes));
  return small_ratio + f * (large_ratio - small_ratio);
}

CodecSelector::CodecSelector(std::vector<CodecProfile> profiles, size_t chunk_bytes)
    : profiles_(std::move(profiles)), chunk_bytes_(std::max<size_t>(chunk_bytes, 1)) {
  CHECK(!profiles_.empty());
}

StatusOr<CodecSelector> CodecSelector::Calibrate(const CalibrationParams& params) {
  std::vector<Codec> codecs = params.codecs;
  if (codecs.empty()) codecs.assign(LosslessCodecs().begin(), LosslessCodecs().end());
  const int64_t hidden = 4096;
  const size_t elem = DTypeBytes(params.dtype, 1);
  // Small: one decode-sized row block; large: one full chunk.
  const int64_t small_rows = std::max<int64_t>(1, 16384 / static_cast<int64_t>(elem) / hidden);
  const int64_t large_rows = std::max<int64_t>(
      1, static_cast<int64_t>(params.options.chunk_bytes / elem) / hidden);
  const int64_t small_hidden = small_rows == 1 ? static_cast<int64_t>(16384 / elem) : hidden;
  Tensor small = MakeActivations(params.dtype, {small_rows, small_hidden}, {.seed = 11});
  Tensor large = MakeActivations(params.dtype, {large_rows, hidden}, {.seed = 12});
  std::vector<CodecProfile> profiles;
  for (Codec c : codecs) {
    CodecOptions o = params.options;
    o.codec = c;
    ASSIGN_OR_RETURN(Measured s, Measure(small, o, params.repeats));
    ASSIGN_OR_RETURN(Measured l, Measure(large, o, params.repeats));
    CodecProfile p;
    p.codec = c;
    p.small_bytes = small.NumBytes();
    p.large_bytes = large.NumBytes();
    p.small_ratio = s.ratio;
    p.large_ratio = l.ratio;
    const double dn = static_cast<double>(p.large_bytes - p.small_bytes);
    auto fit = [&](double ts, double tl, double* fixed, double* speed) {
      const double slope = std::max((tl - ts) / dn, 1e-13);
      *speed = 1.0 / slope;
      *fixed = std::max(0.0, ts - slope * static_cast<double>(p.small_bytes));
    };
    fit(s.compress_s, l.compress_s, &p.compress_fixed_s, &p.compress_bytes_per_s);
    fit(s.decompress_s, l.decompress_s, &p.decompress_fixed_s, &p.decompress_bytes_per_s);
    profiles.push_back(p);
  }
  return CodecSelector(std::move(profiles), params.options.chunk_bytes);
}

double LinkModel::BytesPerSecond(double frame_bytes) const {
  if (small_bytes_per_s <= 0 || large_frame_bytes <= small_frame_bytes) return bytes_per_s;
  const double small = static_cast<double>(small_frame_bytes);
  const double large = static_cast<double>(large_frame_bytes);
  if (frame_bytes <= small) return small_bytes_per_s;
  if (frame_bytes >= large) return bytes_per_s;
  const double t = std::log(frame_bytes / small) / std::log(large / small);
  return std::exp((1 - t) * std::log(small_bytes_per_s) + t * std::log(bytes_per_s));
}

double CodecSelector::PredictSeconds(const CodecProfile& p, uint64_t raw_bytes,
                                     const LinkModel& link) const {
  if (raw_bytes == 0) return 0.0;
  const double chunks = std::ceil(static_cast<double>(raw_bytes) / static_cast<double>(chunk_bytes_));
  const double n = static_cast<double>(raw_bytes) / chunks;
  const double tc = p.CompressSeconds(n);
  const double tt =
      link.per_message_s + n * p.Ratio(n) / link.BytesPerSecond(static_cast<double>(raw_bytes));
  const double td = p.DecompressSeconds(n);
  // Three-stage pipeline over the chunks: fill once, then the slowest stage.
  return tc + tt + td + (chunks - 1) * std::max({tc, tt, td});
}

Codec CodecSelector::Choose(uint64_t raw_bytes, const LinkModel& link) const {
  const CodecProfile* best = &profiles_.front();
  double best_s = PredictSeconds(*best, raw_bytes, link);
  for (const CodecProfile& p : profiles_) {
    const double s = PredictSeconds(p, raw_bytes, link);
    if (s < best_s) {
      best_s = s;
      best = &p;
    }
  }
  for (const CodecProfile& p : profiles_) {
    if (p.codec != Codec::kNone) continue;
    const double none_s = PredictSeconds(p, raw_bytes, link);
    const double saving = none_s - best_s;
    if (saving < kMinSavingSeconds || saving < kMinSavingFraction * none_s) return Codec::kNone;
  }
  return best->codec;
}

}  // namespace tandem
