#include "tests/integration/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace tandem::testing {

namespace {

std::vector<char*> ArgvPointers(std::vector<std::string>& argv) {
  std::vector<char*> out;
  for (std::string& a : argv) out.push_back(a.data());
  out.push_back(nullptr);
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

Process::Process(std::vector<std::string> argv, std::string log_path)
    : log_path_(std::move(log_path)) {
  int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + log_path_);
  // Built before fork: the child of a multithreaded parent must not allocate.
  auto args = ArgvPointers(argv);
  pid_ = fork();
  if (pid_ == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    setpgid(0, 0);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fd);
  if (pid_ < 0) throw std::runtime_error("fork failed");
}

Process::~Process() {
  if (pid_ > 0 && exit_code_ < 0) Stop(SIGKILL, 5);
}

bool Process::Running() {
  if (exit_code_ >= 0) return false;
  int status = 0;
  int r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

int Process::Wait(double timeout_s) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (Running()) {
    if (std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exit_code_;
}

int Process::Stop(int signal, double timeout_s) {
  if (!Running()) return exit_code_;
  kill(pid_, signal);
  if (Wait(timeout_s) >= 0) return exit_code_;
  kill(pid_, SIGKILL);
  return Wait(10);
}

std::string Process::Log() const { return ReadFile(log_path_); }

CommandResult RunCommand(const std::vector<std::string>& argv_in, double timeout_s) {
  // Tests run commands from several threads at once: each call needs its own
  // files, and its descriptors must not leak into a child forked by another.
  static std::atomic<int> counter{0};
  std::string base = "/tmp/tandem-cmd-" + std::to_string(getpid()) + "-" + std::to_string(++counter);
  std::string out_path = base + ".out", err_path = base + ".err";
  std::vector<std::string> argv = argv_in;
  int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out_fd < 0 || err_fd < 0) throw std::runtime_error("cannot create " + base + ".{out,err}");
  auto args = ArgvPointers(argv);  // before fork, as in Process
  int pid = fork();
  if (pid == 0) {
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    dup2(devnull, 0);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out_fd);
  close(err_fd);
  CommandResult result;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int status = 0;
  while (true) {
    int r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      result.exit_code = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  unlink(out_path.c_str());
  unlink(err_path.c_str());
  return result;
}

// The environment wins (tests run by hand elsewhere); the build's own folders
// are compiled in.
std::string BinaryPath(const std::string& name) {
  const char* v = std::getenv("TANDEM_BINARY_DIR");
  return std::string(v ? v : TANDEM_TEST_BINARY_DIR) + "/bin/" + name;
}
std::string SourcePath(const std::string& path) {
  const char* v = std::getenv("TANDEM_SOURCE_DIR");
  return std::string(v ? v : TANDEM_TEST_SOURCE_DIR) + "/" + path;
}

}  // namespace tandem::testing
