#pragma once
// Real processes for black-box tests: daemons started in the background with
// their output in a log file, and commands run to completion with their
// standard output captured. Everything started is killed when its handle
// goes out of scope, so a failing test leaves nothing running.
#include <string>
#include <vector>

namespace tandem::testing {

class Process {
 public:
  // Starts `argv` (argv[0] is a path) with stdout+stderr to `log_path`.
  Process(std::vector<std::string> argv, std::string log_path);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  int pid() const { return pid_; }
  // Non-blocking: true while the process runs.
  bool Running();
  // Sends `signal` and waits up to `timeout_s` for the exit (then SIGKILL).
  int Stop(int signal, double timeout_s = 10);
  // Waits up to `timeout_s` for the exit; returns the exit code, or -1 on
  // time-out (the process keeps running).
  int Wait(double timeout_s);
  std::string Log() const;

 private:
  int pid_ = -1;
  int exit_code_ = -1;
  std::string log_path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs argv to completion (killed after `timeout_s`).
CommandResult RunCommand(const std::vector<std::string>& argv, double timeout_s = 120);

// $TANDEM_BINARY_DIR/bin/<name>, $TANDEM_SOURCE_DIR/<path>.
std::string BinaryPath(const std::string& name);
std::string SourcePath(const std::string& path);

}  // namespace tandem::testing
