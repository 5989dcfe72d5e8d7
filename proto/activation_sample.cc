#include "proto/activation_sample.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace tandem {

void FillActivations(const TensorView& dst, const ActivationSampleParams& params) {
  CHECK(dst.IsContiguous());
  CHECK(dst.dtype == DType::kF32 || dst.dtype == DType::kF16 || dst.dtype == DType::kBF16);
  const int64_t hidden = dst.shape.rank() == 0 ? 1 : dst.shape[dst.shape.rank() - 1];
  const int64_t total = dst.NumElements();
  if (total == 0) return;
  const int64_t tokens = total / hidden;
  std::mt19937_64 rng(params.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::chi_squared_distribution<float> chi2(3.0f);
  std::lognormal_distribution<float> token_scale(0.0f, 0.5f);
  std::vector<float> channel_scale(static_cast<size_t>(hidden), 1.0f);
  std::uniform_int_distribution<int64_t> pick(0, hidden - 1);
  for (int i = 0; i < params.outlier_channels && hidden > 1; ++i) {
    channel_scale[static_cast<size_t>(pick(rng))] = params.outlier_scale;
  }
  std::vector<float> row(static_cast<size_t>(hidden));
  const size_t elem = DTypeBytes(dst.dtype, 1);
  for (int64_t t = 0; t < tokens; ++t) {
    const float ts = params.base_scale * token_scale(rng);
    for (int64_t h = 0; h < hidden; ++h) {
      // Student-t(3): normal / sqrt(chi2 / 3); clamp the extreme tail.
      float v = normal(rng) / std::sqrt(std::max(chi2(rng), 1e-3f) / 3.0f);
      v = std::clamp(v, -50.0f, 50.0f);
      row[static_cast<size_t>(h)] = v * ts * channel_scale[static_cast<size_t>(h)];
    }
    ConvertFromF32(row.data(), dst.dtype,
                   static_cast<uint8_t*>(dst.data) + static_cast<size_t>(t * hidden) * elem,
                   static_cast<size_t>(hidden));
  }
}

Tensor MakeActivations(DType dtype, Shape shape, const ActivationSampleParams& params) {
  Tensor t(dtype, shape);
  FillActivations(t.view(), params);
  return t;
}

}  // namespace tandem
