#pragma once
// Shared command-line conventions for every binary: --help, --version, and a
// one-line reason with a non-zero exit code on error.
#include <string>

#include "CLI/CLI.hpp"
#include "core/status.h"

namespace tandem {
// Adds --version (prints "<binary> <version>") and --log-level to `app`.
void AddCommonFlags(CLI::App& app, std::string* log_level);
// Parses argv; returns an exit code when the program should stop now (help,
// version, or a parse error already reported), or -1 to go on.
int ParseArgs(CLI::App& app, int argc, char** argv);
// Prints "<binary>: error: <message>" to stderr and returns 1.
int ReportError(const std::string& binary, const absl::Status& status);
}  // namespace tandem
