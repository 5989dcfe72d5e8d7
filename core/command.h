#pragma once
// Subcommand registry shared by the multi-command binaries (`tandem`,
// `tandem-bench`). Each subcommand lives in its own *_command.cc (or
// *_bench.cc) compiled straight into the executable and registers itself:
//
//   static const bool kRegistered = tandem::RegisterCommand(
//       {.name = "tokenize", .summary = "...", .setup = &SetupTokenize});
//
// `setup` adds the subcommand's options to `sub` and returns the function that
// runs it after parsing (returning the process exit code).
#include <functional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace tandem {

struct Command {
  std::string name;
  std::string summary;
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

bool RegisterCommand(Command command);
const std::vector<Command>& RegisteredCommands();

// Builds the app from the registry, parses argv and runs the chosen command.
int RunCommandLine(const std::string& binary, const std::string& description, int argc,
                   char** argv);

}  // namespace tandem
