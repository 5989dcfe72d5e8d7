#include "proto/codec_selector.h"

#include <gtest/gtest.h>

namespace tandem {
namespace {

// A fast coder with no gain, and a slower one that halves the bytes.
std::vector<CodecProfile> TwoProfiles() {
  CodecProfile none{.codec = Codec::kNone,
                    .compress_fixed_s = 1e-6, .compress_bytes_per_s = 10e9,
                    .decompress_fixed_s = 1e-6, .decompress_bytes_per_s = 10e9,
                    .small_bytes = 16384, .large_bytes = 1 << 20,
                    .small_ratio = 1.0, .large_ratio = 1.0};
  CodecProfile shuffled{.codec = Codec::kShuffleLz4,
                        .compress_fixed_s = 20e-6, .compress_bytes_per_s = 1e9,
                        .decompress_fixed_s = 20e-6, .decompress_bytes_per_s = 2e9,
                        .small_bytes = 16384, .large_bytes = 1 << 20,
                        .small_ratio = 0.6, .large_ratio = 0.5};
  return {none, shuffled};
}

TEST(CodecSelector, ChoosesTheCheapestPredictedCodec) {
  CodecSelector selector(TwoProfiles(), 1 << 20);
  for (double bw : {12.5e6, 125e6, 1.25e9, 12.5e9}) {
    for (uint64_t bytes : {uint64_t{2048}, uint64_t{16384}, uint64_t{1} << 20, uint64_t{4} << 20}) {
      LinkModel link{.bytes_per_s = bw};
      const Codec chosen = selector.Choose(bytes, link);
      double best = 1e30;
      for (const CodecProfile& p : selector.profiles()) {
        best = std::min(best, selector.PredictSeconds(p, bytes, link));
      }
      const double none_s = selector.PredictSeconds(selector.profiles()[0], bytes, link);
      const bool worth_it = none_s - best >= CodecSelector::kMinSavingSeconds &&
                            none_s - best >= CodecSelector::kMinSavingFraction * none_s;
      for (const CodecProfile& p : selector.profiles()) {
        if (p.codec == chosen) {
          EXPECT_EQ(selector.PredictSeconds(p, bytes, link), worth_it ? best : none_s);
        }
      }
      if (!worth_it) {
        EXPECT_EQ(chosen, Codec::kNone);
      }
    }
  }
  // Slow link, big frame: halving the bytes wins; fast link: copying wins.
  EXPECT_EQ(selector.Choose(4 << 20, {.bytes_per_s = 12.5e6}), Codec::kShuffleLz4);
  EXPECT_EQ(selector.Choose(4 << 20, {.bytes_per_s = 12.5e9}), Codec::kNone);
}

TEST(CodecSelector, SmallFramesUseTheirOwnMeasuredRate) {
  CodecSelector selector(TwoProfiles(), 1 << 20);
  // 100 Mbit/s sustained, but a 16 KiB frame crosses within the burst.
  LinkModel shaped{.bytes_per_s = 12.5e6, .small_bytes_per_s = 2e9};
  EXPECT_EQ(selector.Choose(16384, shaped), Codec::kNone);
  EXPECT_EQ(selector.Choose(4 << 20, shaped), Codec::kShuffleLz4);
  EXPECT_DOUBLE_EQ(shaped.BytesPerSecond(16384), 2e9);
  EXPECT_DOUBLE_EQ(shaped.BytesPerSecond(8 << 20), 12.5e6);
  const double mid = shaped.BytesPerSecond(256 << 10);
  EXPECT_LT(mid, 2e9);
  EXPECT_GT(mid, 12.5e6);
  // Without a small-frame measurement the sustained rate applies to all.
  LinkModel plain{.bytes_per_s = 12.5e6};
  EXPECT_DOUBLE_EQ(plain.BytesPerSecond(16384), 12.5e6);
}

TEST(CodecSelector, PipelinedPredictionIsBoundedByTheSlowestStage) {
  CodecSelector selector(TwoProfiles(), 1 << 20);
  const CodecProfile& p = selector.profiles()[1];
  LinkModel link{.bytes_per_s = 125e6, .per_message_s = 0};
  const double one = selector.PredictSeconds(p, 1 << 20, link);
  const double eight = selector.PredictSeconds(p, 8 << 20, link);
  EXPECT_LT(eight, 8 * one);  // chunks overlap
  EXPECT_GT(eight, 8.0 * (1 << 20) * 0.5 / 125e6);  // never faster than the wire
}

TEST(CodecSelector, CalibrationMeasuresEveryCodec) {
  auto selector = CodecSelector::Calibrate(
      {.dtype = DType::kBF16, .codecs = {Codec::kNone, Codec::kShuffleLz4}, .options = {.chunk_bytes = 256 << 10}, .repeats = 1});
  ASSERT_TRUE(selector.ok()) << selector.status();
  ASSERT_EQ(selector->profiles().size(), 2u);
  for (const CodecProfile& p : selector->profiles()) {
    EXPECT_GT(p.compress_bytes_per_s, 0);
    EXPECT_GT(p.decompress_bytes_per_s, 0);
  }
  EXPECT_NEAR(selector->profiles()[0].large_ratio, 1.0, 1e-9);
  EXPECT_LT(selector->profiles()[1].large_ratio, 0.95);  // bf16 activations compress once shuffled
}

}  // namespace
}  // namespace tandem
