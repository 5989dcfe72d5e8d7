#include "core/logging.h"

#include <string>

#include "spdlog/sinks/stdout_color_sinks.h"

namespace tandem {
void InitLogging(std::string_view level) {
  // Logs go to stderr so stdout stays clean for machine-readable output.
  auto logger = spdlog::stderr_color_mt("tandem");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  auto parsed = spdlog::level::from_str(std::string(level));
  spdlog::set_level(parsed == spdlog::level::off && level != "off" ? spdlog::level::info : parsed);
}
}  // namespace tandem
