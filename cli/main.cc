// `tandem`: the client (generate, chat, status) and local tools (run,
// tokenize, detokenize, chat-template, inspect). Subcommands register
// themselves from their own *_command.cc files.
#include "core/command.h"

int main(int argc, char** argv) {
  return tandem::RunCommandLine("tandem", "tandem: client and local tools", argc, argv);
}
