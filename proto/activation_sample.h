#pragma once
// Synthetic hidden states with the statistics of real transformer
// activations: heavy-tailed values (Student-t, 3 degrees of freedom), a few
// outlier channels about 100x larger than the rest, and a per-token scale.
// Never all zeros. Used by the communication benchmark, codec calibration and
// tests, so that compression ratios are honest.
#include <cstdint>

#include "core/tensor.h"

namespace tandem {

struct ActivationSampleParams {
  uint64_t seed = 1;
  int outlier_channels = 4;
  float outlier_scale = 100.0f;
  float base_scale = 0.5f;
};

// Fills a contiguous [tokens, hidden] (or rank-1 [hidden]) f32/f16/bf16 view.
void FillActivations(const TensorView& dst, const ActivationSampleParams& params);
Tensor MakeActivations(DType dtype, Shape shape, const ActivationSampleParams& params);

}  // namespace tandem
