#pragma once
// Small statistics shared by the benchmarks.
#include <algorithm>
#include <vector>

namespace tandem::bench {

// The middle element of v once sorted (the upper middle for an even count);
// 0 for an empty v.
inline double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

}  // namespace tandem::bench
