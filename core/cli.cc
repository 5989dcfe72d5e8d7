#include "core/cli.h"

#include <cstdio>

#include "core/version.h"

namespace tandem {
void AddCommonFlags(CLI::App& app, std::string* log_level) {
  app.set_version_flag("--version", std::string(app.get_name()) + " " + kVersion);
  app.add_option("--log-level", *log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
}

int ParseArgs(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", app.get_name().c_str(), e.what());
    return 2;
  }
  return -1;
}

int ReportError(const std::string& binary, const absl::Status& status) {
  std::fprintf(stderr, "%s: error: %s\n", binary.c_str(), std::string(status.message()).c_str());
  return 1;
}
}  // namespace tandem
