#pragma once
// Logging goes through spdlog. Binaries call InitLogging once at start.
#include <string_view>

#include "spdlog/spdlog.h"

namespace tandem {
// level: trace, debug, info, warn, error, off. Unknown names fall back to info.
void InitLogging(std::string_view level);
}  // namespace tandem
