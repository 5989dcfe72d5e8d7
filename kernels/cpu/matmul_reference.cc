// Scalar reference of MatMul for tests: dequantize each row exactly as the
// contract says, accumulate in double.
#include <vector>

#include "core/check.h"
#include "kernels/cpu/matmul.h"

namespace tandem::cpu {

void MatMulReference(const float* x, int64_t T, const WeightMatrix& w, const float* bias,
                     float* y) {
  CHECK_GE(T, 0);
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    DequantizeRow(w, r, row.data());
    for (int64_t t = 0; t < T; ++t) {
      double s = bias != nullptr ? bias[r] : 0.0;
      const float* xt = x + t * w.cols;
      for (int64_t c = 0; c < w.cols; ++c) s += static_cast<double>(row[c]) * xt[c];
      y[t * w.rows + r] = static_cast<float>(s);
    }
  }
}

}  // namespace tandem::cpu
