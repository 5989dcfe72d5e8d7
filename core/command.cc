#include "core/command.h"

#include <algorithm>
#include <cstdio>
#include <exception>

#include "core/cli.h"
#include "core/logging.h"

namespace tandem {

namespace {
std::vector<Command>& Registry() {
  static std::vector<Command> registry;
  return registry;
}
}  // namespace

bool RegisterCommand(Command command) {
  Registry().push_back(std::move(command));
  return true;
}

const std::vector<Command>& RegisteredCommands() { return Registry(); }

int RunCommandLine(const std::string& binary, const std::string& description, int argc,
                   char** argv) {
  CLI::App app(description, binary);
  std::string log_level = "warn";
  AddCommonFlags(app, &log_level);
  app.require_subcommand(1);
  std::vector<Command> commands = Registry();
  std::sort(commands.begin(), commands.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
  std::vector<std::pair<CLI::App*, std::function<int()>>> runners;
  for (const Command& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.summary);
    runners.emplace_back(sub, c.setup(*sub));
  }
  int code = ParseArgs(app, argc, argv);
  if (code >= 0) return code;
  InitLogging(log_level);
  for (auto& [sub, run] : runners) {
    if (sub->parsed()) {
      try {
        return run();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s %s: error: %s\n", binary.c_str(), sub->get_name().c_str(),
                     e.what());
        return 1;
      }
    }
  }
  return 2;
}

}  // namespace tandem
