#pragma once
// Helpers shared by the stage tests: tiny random models in Hugging Face
// layout written once per name into a per-process temp folder (removed when
// the test program ends), relative L2 error, random token ids.
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::testing {

inline std::filesystem::path ModelRoot() {
  return std::filesystem::temp_directory_path() /
         ("tandem-stage-test-" + std::to_string(::getpid()));
}

// Removes the generated models when the test program ends.
class RemoveModels : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(ModelRoot(), ignored);
  }
};
[[maybe_unused]] inline ::testing::Environment* const kRemoveModels =
    ::testing::AddGlobalTestEnvironment(new RemoveModels);

// Writes a tiny model once per name with tools/make-test-model `args`.
inline std::filesystem::path MakeModel(const std::string& name, const std::string& args) {
  const char* source = std::getenv("TANDEM_SOURCE_DIR");
  EXPECT_NE(source, nullptr) << "TANDEM_SOURCE_DIR must point at the repository";
  if (source == nullptr) return {};
  std::filesystem::path dir = ModelRoot() / name;
  if (std::filesystem::exists(dir / "config.json")) return dir;
  std::string cmd = std::string(source) + "/tools/make-test-model --out " + dir.string() + " " +
                    args + " > /dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return dir;
}

inline double RelL2(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / den);
}

inline std::vector<int32_t> RandomTokens(int n, int vocab) {
  static std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> out(static_cast<size_t>(n));
  for (int32_t& t : out) t = dist(rng);
  return out;
}

}  // namespace tandem::testing
