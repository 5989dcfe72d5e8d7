// Black-box tests of a cluster on loopback: a real tandem-coordinator, real
// tandem-node processes and the real `tandem` client, on a tiny model.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/process.h"

namespace tandem::testing {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("tandem-cluster-test-" + std::to_string(getpid())));
    fs::create_directories(*dir_);
    MakeModel("model", "7", "");
    MakeModel("other-model", "8", "--hidden=96");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  static void MakeModel(const std::string& name, const std::string& seed,
                        const std::string& extra) {
    std::vector<std::string> argv = {"/usr/bin/python3", SourcePath("tools/make-test-model"),
                                     "--preset",         "tiny-llama",
                                     "--layers",         "6",
                                     "--dtype",          "bf16",
                                     "--seed",           seed,
                                     "--out",            (*dir_ / name).string()};
    if (!extra.empty()) argv.push_back(extra);
    CommandResult r = RunCommand(argv, 300);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static std::string Model(const std::string& name = "model") { return (*dir_ / name).string(); }

  // Starts a coordinator waiting for `nodes` nodes, and those nodes. The
  // coordinator listens on a port it picks itself (port 0), which its log
  // names, so no other process can take the port before it binds.
  void Start(int nodes, const std::string& token = "", const std::string& model = "",
             const std::vector<std::string>& extra = {}) {
    const std::string dir = model.empty() ? Model() : model;
    std::vector<std::string> argv = {BinaryPath("tandem-coordinator"),
                                     "--model",
                                     dir,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--nodes",
                                     std::to_string(nodes)};
    if (!token.empty()) argv.insert(argv.end(), {"--cluster-token", token});
    argv.insert(argv.end(), extra.begin(), extra.end());
    coordinator_ = std::make_unique<Process>(argv, (*dir_ / "coordinator.log").string());
    coordinator_addr_ = "127.0.0.1:" + std::to_string(BoundPort(*coordinator_));
    ASSERT_NE(coordinator_addr_, "127.0.0.1:0") << coordinator_->Log();
    for (int i = 0; i < nodes; ++i) {
      nodes_.push_back(StartNode("node" + std::to_string(i), token, dir));
    }
  }

  // Each node listens on a port it picks itself (port 0), so no other
  // process can take it between a pick here and the node's bind.
  std::unique_ptr<Process> StartNode(const std::string& name, const std::string& token,
                                     const std::string& model = "") {
    std::vector<std::string> argv = {BinaryPath("tandem-node"),
                                     "--coordinator",
                                     coordinator_addr_,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--model",
                                     model.empty() ? Model() : model,
                                     "--name",
                                     name,
                                     "--threads",
                                     "1",
                                     "--kv-budget",
                                     "64MiB"};
    if (!token.empty()) argv.insert(argv.end(), {"--cluster-token", token});
    return std::make_unique<Process>(argv, (*dir_ / (name + ".log")).string());
  }

  json Status() {
    CommandResult r = RunCommand(
        {BinaryPath("tandem"), "status", "--coordinator", coordinator_addr_, "--json"}, 20);
    if (r.exit_code != 0) return json();
    auto j = json::parse(r.out, nullptr, false);
    return j.is_discarded() ? json() : j;
  }

  void WaitReady(double timeout_s = 120) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      json s = Status();
      if (s.is_object() && s.value("state", "") == "ready") return;
      ASSERT_TRUE(coordinator_->Running()) << coordinator_->Log();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    FAIL() << "the cluster did not become ready\n" << coordinator_->Log() << NodeLogs();
  }

  // The port a coordinator logs once it listens; 0 if it exits or says
  // nothing within a minute.
  static int BoundPort(Process& coordinator) {
    static const std::string kMark = "listening on port ";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string log = coordinator.Log();
      // The whole number, followed by the rest of its line.
      if (size_t at = log.find(kMark); at != std::string::npos) {
        char* end = nullptr;
        const long port = std::strtol(log.c_str() + at + kMark.size(), &end, 10);
        if (*end == ';') return static_cast<int>(port);
      }
      if (!coordinator.Running()) return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return 0;
  }

  // Each node's state and log, for a failure message.
  std::string NodeLogs() {
    std::string logs;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      logs += "--- node " + std::to_string(i) +
              (nodes_[i]->Running() ? " (running)\n" : " (exited)\n") + nodes_[i]->Log();
    }
    return logs;
  }

  json Generate(const std::string& prompt, int max_tokens, CommandResult* raw = nullptr,
                bool logprobs = false) {
    std::vector<std::string> argv = {BinaryPath("tandem"), "generate", "--coordinator",
                                     coordinator_addr_, "--prompt", prompt, "--max-tokens",
                                     std::to_string(max_tokens), "--temperature", "0", "--json"};
    if (logprobs) argv.push_back("--logprobs");
    CommandResult r = RunCommand(argv, 180);
    if (raw) *raw = r;
    if (r.exit_code != 0) return json();
    return json::parse(r.out, nullptr, false);
  }

  static json RunLocal(const std::string& prompt, int max_tokens, const std::string& model = "") {
    CommandResult r =
        RunCommand({BinaryPath("tandem"), "run", "--model", model.empty() ? Model() : model,
                    "--prompt", prompt,
                    "--max-tokens", std::to_string(max_tokens), "--temperature", "0", "--threads",
                    "1", "--json"},
                   180);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out, nullptr, false);
  }

  static fs::path* dir_;
  std::string coordinator_addr_;
  std::unique_ptr<Process> coordinator_;
  std::vector<std::unique_ptr<Process>> nodes_;
};

fs::path* ClusterTest::dir_ = nullptr;

const char* kPrompts[] = {
    "The quick brown fox",
    "In the beginning",
    "Once upon a time there was a",
    "1, 2, 3, 4,",
    "Hello",
    "A long prompt that goes on for a while, with commas, and more words to fill the context up",
    "tandem",
    "The",
};

TEST_F(ClusterTest, TwoNodesMatchOneProcess) {
  Start(2);
  WaitReady();
  for (const char* prompt : {kPrompts[0], kPrompts[5]}) {
    json local = RunLocal(prompt, 24);
    CommandResult raw;
    json remote = Generate(prompt, 24, &raw);
    ASSERT_TRUE(remote.is_object()) << raw.err << coordinator_->Log();
    EXPECT_EQ(remote["tokens"], local["tokens"]) << prompt;
    EXPECT_EQ(remote["text"], local["text"]) << prompt;
    EXPECT_EQ(remote["prompt_tokens"], local["prompt_tokens"]);
  }
  json status = Status();
  ASSERT_TRUE(status.contains("nodes"));
  EXPECT_EQ(status["nodes"].size(), 2u);
}

TEST_F(ClusterTest, ThreeNodesMatchOneProcess) {
  Start(3);
  WaitReady();
  json local = RunLocal(kPrompts[1], 32);
  CommandResult raw;
  json remote = Generate(kPrompts[1], 32, &raw);
  ASSERT_TRUE(remote.is_object()) << raw.err << coordinator_->Log();
  EXPECT_EQ(remote["tokens"], local["tokens"]);
}

// A request's answer does not depend on which others share its steps. Not
// bit for bit: a shared step multiplies several tokens at once, which sums in
// another order than one token alone, so the log-probabilities agree to
// rounding, and a greedy choice between two tokens whose logits tie to within
// that rounding may go either way. The tokens are identical up to such a tie,
// if any; a request that read another's cache or hidden states would differ
// by far more, from its first token on.
TEST_F(ClusterTest, ConcurrentRequestsEachMatchAlone) {
  Start(2);
  WaitReady();
  constexpr int kRequests = 16;
  // Rounding-level agreement of log-probabilities (a tie's two choices
  // included); a wrong answer moves them by orders of magnitude more.
  constexpr double kLogprobTolerance = 1e-3;
  std::vector<json> alone(kRequests);
  auto prompt_of = [](int i) { return std::string(kPrompts[i % 8]) + (i >= 8 ? " again" : ""); };
  auto max_tokens_of = [](int i) { return 8 + (i * 5) % 24; };
  for (int i = 0; i < kRequests; ++i) {
    alone[i] = Generate(prompt_of(i), max_tokens_of(i), nullptr, /*logprobs=*/true);
    ASSERT_TRUE(alone[i].is_object()) << i;
    ASSERT_EQ(alone[i]["logprobs"].size(), alone[i]["tokens"].size()) << i;
  }
  std::vector<CommandResult> raw(kRequests);
  std::vector<std::future<json>> together;
  for (int i = 0; i < kRequests; ++i) {
    together.push_back(std::async(std::launch::async, [&, i] {
      return Generate(prompt_of(i), max_tokens_of(i), &raw[i], /*logprobs=*/true);
    }));
  }
  int ties = 0;
  for (int i = 0; i < kRequests; ++i) {
    json r = together[i].get();
    ASSERT_TRUE(r.is_object()) << "request " << i << " failed (exit " << raw[i].exit_code
                               << "): " << raw[i].err;
    const json& a = alone[i];
    ASSERT_EQ(r["logprobs"].size(), r["tokens"].size()) << i;
    const size_t n = std::min(r["tokens"].size(), a["tokens"].size());
    size_t k = 0;
    for (; k < n && r["tokens"][k] == a["tokens"][k]; ++k) {
      EXPECT_NEAR(r["logprobs"][k].get<double>(), a["logprobs"][k].get<double>(),
                  kLogprobTolerance)
          << "request " << i << " token " << k;
    }
    if (k == n) {
      EXPECT_EQ(r["tokens"], a["tokens"]) << "request " << i;
      continue;
    }
    // The first differing token: the two choices must be a tie.
    ++ties;
    EXPECT_NEAR(r["logprobs"][k].get<double>(), a["logprobs"][k].get<double>(), kLogprobTolerance)
        << "request " << i << " differs at token " << k << " (" << r["tokens"][k] << " vs "
        << a["tokens"][k] << " alone), and not by a tie";
  }
  // A tie is rare; most requests must match token for token.
  EXPECT_LE(ties, kRequests / 4);
}

TEST_F(ClusterTest, KilledNodeFailsInFlightRequestsAndCoordinatorSurvives) {
  Start(2);
  WaitReady();
  // Long requests (greedy on a random model, so some run to max_tokens).
  std::vector<std::future<CommandResult>> pending;
  for (int i = 0; i < 8; ++i) {
    pending.push_back(std::async(std::launch::async, [&, i] {
      CommandResult raw;
      Generate(kPrompts[i], 3000, &raw);
      return raw;
    }));
  }
  bool running = false;
  for (int i = 0; i < 200 && !running; ++i) {
    json s = Status();
    running = s.is_object() && s["requests"].value("running", 0) > 0;
    if (!running) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(running) << "no request was running";
  nodes_[1]->Stop(SIGKILL);
  int failed = 0;
  for (auto& p : pending) {
    CommandResult r = p.get();
    if (r.exit_code != 0) {
      ++failed;
      EXPECT_NE(r.err.find("error"), std::string::npos) << r.err;
    }
  }
  EXPECT_GT(failed, 0) << "no in-flight request ended with an error";
  EXPECT_TRUE(coordinator_->Running());
  json status = Status();
  ASSERT_TRUE(status.is_object()) << coordinator_->Log();
  EXPECT_NE(status.value("state", ""), "ready");
  // New requests are refused with a reason while the pipeline is broken.
  CommandResult refused;
  Generate("Hello", 4, &refused);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("down"), std::string::npos) << refused.err;
}

TEST_F(ClusterTest, SurvivorsCarryOnWithMinNodes) {
  Start(3, "", "", {"--min-nodes", "2"});
  WaitReady();
  json before = Generate(kPrompts[3], 12);
  ASSERT_TRUE(before.is_object());
  nodes_[2]->Stop(SIGKILL);
  // Down, then re-planned over the two live nodes.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  json status;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    status = Status();
  } while (std::chrono::steady_clock::now() < deadline &&
           !(status.is_object() && status.value("state", "") == "ready" &&
             std::count_if(status["nodes"].begin(), status["nodes"].end(), [](const json& n) {
               return n.value("state", "") == "down";
             }) == 1));
  ASSERT_EQ(status.value("state", ""), "ready") << coordinator_->Log();
  json after = Generate(kPrompts[3], 12);
  ASSERT_TRUE(after.is_object());
  EXPECT_EQ(after["tokens"], before["tokens"]);
}

TEST_F(ClusterTest, NodesReconnectWhenTheCoordinatorRestarts) {
  Start(2);
  WaitReady();
  json before = Generate(kPrompts[0], 12);
  ASSERT_TRUE(before.is_object());
  coordinator_->Stop(SIGKILL);
  // A new coordinator on the same address: the nodes register again, are
  // assigned their layers again, and the cluster serves the same answers.
  coordinator_ = std::make_unique<Process>(
      std::vector<std::string>{BinaryPath("tandem-coordinator"), "--model", Model(), "--listen",
                               coordinator_addr_, "--nodes", "2"},
      (*dir_ / "coordinator2.log").string());
  WaitReady();
  json after = Generate(kPrompts[0], 12);
  ASSERT_TRUE(after.is_object()) << coordinator_->Log();
  EXPECT_EQ(after["tokens"], before["tokens"]);
  for (auto& node : nodes_) EXPECT_TRUE(node->Running());
}

// The shipped demo model speaks: its greedy answer is pinned, in one process
// and across two nodes.
TEST_F(ClusterTest, DemoModelGivesItsPinnedAnswerAloneAndAcrossTwoNodes) {
  const std::string demo = SourcePath("models/kjv-llama-7m");
  const std::string pinned =
      ", and the man of the LORD, and the LORD of Israel, and the LORD of Israel, and the LORD "
      "of Israel, and the LORD of Israel,";
  json local = RunLocal("In the beginning", 32, demo);
  EXPECT_EQ(local["text"], pinned);
  Start(2, "", demo);
  WaitReady();
  CommandResult raw;
  json remote = Generate("In the beginning", 32, &raw);
  ASSERT_TRUE(remote.is_object()) << raw.err;
  EXPECT_EQ(remote["text"], pinned);
  EXPECT_EQ(remote["tokens"], local["tokens"]);
}

TEST_F(ClusterTest, RefusesWrongTokenOtherModelAndDuplicateName) {
  Start(1, "secret");
  WaitReady();
  auto wrong_token = StartNode("intruder", "not-the-secret");
  EXPECT_NE(wrong_token->Wait(60), 0);
  EXPECT_NE(wrong_token->Log().find("token"), std::string::npos) << wrong_token->Log();

  auto other_model = StartNode("stranger", "secret", Model("other-model"));
  EXPECT_NE(other_model->Wait(60), 0);
  EXPECT_NE(other_model->Log().find("fingerprint"), std::string::npos) << other_model->Log();

  auto duplicate = StartNode("node0", "secret");
  EXPECT_NE(duplicate->Wait(60), 0);
  EXPECT_NE(duplicate->Log().find("node0"), std::string::npos) << duplicate->Log();
  EXPECT_TRUE(coordinator_->Running());
}

}  // namespace
}  // namespace tandem::testing
