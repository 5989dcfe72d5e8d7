// Generation end to end over real gRPC on loopback: an in-process
// coordinator and two fake stages (fake_node.h) whose last stage answers
// (last input token + 1) mod vocab.
#include <future>
#include <thread>

#include "coordinator_test_util.h"
#include "fake_node.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tandem::testing {
namespace {

constexpr int kVocab = 1000;
constexpr uint32_t kEos = 999;  // TinySpec's eos_token_id

struct Answer {
  std::vector<uint32_t> tokens;
  std::string finish_reason;
  std::string error;
  uint32_t prompt_tokens = 0;
  grpc::Status status;
};

class EngineTest : public ::testing::Test {
 protected:
  void Start(int step_delay_ms = 0) {
    server_ = StartCoordinator(/*nodes=*/2);
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(server_->port());
    for (const char* name : {"s0", "s1"}) {
      nodes_.push_back(std::make_unique<FakeNode>(FakeNodeOptions{
          .name = name, .fingerprint = TinySpec().Fingerprint(), .vocab = kVocab,
          .step_delay_ms = step_delay_ms}));
      ASSERT_TRUE(nodes_.back()->Join(address_));
    }
    ASSERT_TRUE(WaitForState(address_, "ready"));
  }

  FakeNode* Stage(int i) {
    for (auto& n : nodes_) {
      if (n->assignment().stage_index() == static_cast<uint32_t>(i)) return n.get();
    }
    return nullptr;
  }

  v1::GenerateRequest Request(const std::vector<uint32_t>& prompt, uint32_t max_tokens) {
    v1::GenerateRequest r;
    for (uint32_t t : prompt) r.add_prompt_token_ids(t);
    r.set_max_tokens(max_tokens);
    return r;
  }

  // Reads the whole answer; `on_first` runs after the first response.
  Answer Generate(const v1::GenerateRequest& request,
                  const std::function<void()>& on_first = nullptr,
                  grpc::ClientContext* context = nullptr) {
    auto stub = v1::Coordinator::NewStub(MakeChannel(address_));
    grpc::ClientContext own;
    if (context == nullptr) context = &own;
    auto reader = stub->Generate(context, request);
    Answer a;
    v1::GenerateResponse r;
    bool first = true;
    while (reader->Read(&r)) {
      if (r.prompt_tokens() > 0) a.prompt_tokens = r.prompt_tokens();
      a.tokens.insert(a.tokens.end(), r.token_ids().begin(), r.token_ids().end());
      if (!r.finish_reason().empty()) {
        a.finish_reason = r.finish_reason();
        a.error = r.error();
      }
      if (first && on_first) on_first();
      first = false;
    }
    a.status = reader->Finish();
    return a;
  }

  // What the fake pipeline answers: successors of the last prompt token.
  static std::vector<uint32_t> Expected(const std::vector<uint32_t>& prompt, uint32_t max_tokens) {
    std::vector<uint32_t> out;
    uint32_t t = prompt.back();
    while (out.size() < max_tokens) {
      t = (t + 1) % kVocab;
      out.push_back(t);
      if (t == kEos) break;
    }
    return out;
  }

  std::unique_ptr<CoordinatorServer> server_;
  std::string address_;
  std::vector<std::unique_ptr<FakeNode>> nodes_;
};

TEST_F(EngineTest, PlansTwoStagesAndGenerates) {
  Start();
  ASSERT_NE(Stage(0), nullptr);
  ASSERT_NE(Stage(1), nullptr);
  const v1::ShardAssignment a0 = Stage(0)->assignment();
  const v1::ShardAssignment a1 = Stage(1)->assignment();
  EXPECT_EQ(a0.first_layer(), 0u);
  EXPECT_EQ(a0.last_layer(), a1.first_layer());
  EXPECT_EQ(a1.last_layer(), 4u);
  EXPECT_TRUE(a0.has_embedding());
  EXPECT_TRUE(a1.has_lm_head());
  EXPECT_EQ(a0.next_stage(), Stage(1)->address());
  EXPECT_TRUE(a1.next_stage().empty());

  const std::vector<uint32_t> prompt = {5, 6, 7};
  Answer a = Generate(Request(prompt, 8));
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  EXPECT_EQ(a.finish_reason, "length") << a.error;
  EXPECT_EQ(a.prompt_tokens, prompt.size());
  EXPECT_EQ(a.tokens, Expected(prompt, 8));
  EXPECT_TRUE(Stage(0)->errors().empty());
  EXPECT_TRUE(Stage(1)->errors().empty());
}

TEST_F(EngineTest, StopsAtEndOfSequence) {
  Start();
  const std::vector<uint32_t> prompt = {996};
  Answer a = Generate(Request(prompt, 50));
  EXPECT_EQ(a.finish_reason, "stop") << a.error;
  EXPECT_EQ(a.tokens, (std::vector<uint32_t>{997, 998, 999}));
}

TEST_F(EngineTest, ConcurrentRequestsMatchTheSameRequestsAlone) {
  Start();
  // Different lengths, some long enough to be prefilled in several chunks.
  std::vector<v1::GenerateRequest> requests;
  std::vector<std::vector<uint32_t>> prompts;
  for (int i = 0; i < 16; ++i) {
    std::vector<uint32_t> prompt;
    const int length = 1 + (i * 97) % 700;
    for (int k = 0; k < length; ++k) prompt.push_back(static_cast<uint32_t>((i * 31 + k * 7) % 900));
    prompts.push_back(prompt);
    requests.push_back(Request(prompt, static_cast<uint32_t>(4 + (i * 5) % 23)));
  }
  std::vector<Answer> alone;
  for (const auto& r : requests) alone.push_back(Generate(r));
  std::vector<std::future<Answer>> together;
  for (const auto& r : requests) {
    together.push_back(std::async(std::launch::async, [this, r] { return Generate(r); }));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    Answer a = together[i].get();
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    EXPECT_EQ(a.finish_reason, alone[i].finish_reason) << a.error;
    EXPECT_EQ(a.tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(a.tokens, Expected(prompts[i], requests[i].max_tokens())) << "request " << i;
    EXPECT_EQ(a.prompt_tokens, prompts[i].size());
  }
  EXPECT_TRUE(Stage(0)->errors().empty()) << Stage(0)->errors().front();
  EXPECT_TRUE(Stage(1)->errors().empty()) << Stage(1)->errors().front();
  // Every finished sequence is released on every stage.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline &&
         (Stage(0)->released().size() < 32 || Stage(1)->released().size() < 32)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Stage(0)->released().size(), 32u);
  EXPECT_EQ(Stage(0)->released(), Stage(1)->released());
}

TEST_F(EngineTest, RefusesBadRequests) {
  Start();
  Answer a = Generate(Request({5, kVocab + 3}, 4));
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(a.status.error_message().find("outside the vocabulary"), std::string::npos);
  v1::GenerateRequest text;
  text.set_prompt("hello");
  a = Generate(text);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(a.status.error_message().find("no tokenizer"), std::string::npos);
  v1::GenerateRequest r = Request({1, 2}, 4);
  r.mutable_sampling()->set_temperature(-1);
  a = Generate(r);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(a.status.error_message().find("temperature"), std::string::npos);
  // The coordinator still serves.
  EXPECT_EQ(Generate(Request({1, 2}, 3)).tokens, (std::vector<uint32_t>{3, 4, 5}));
}

TEST_F(EngineTest, AClientThatGoesAwayIsReleasedOnEveryStage) {
  Start(/*step_delay_ms=*/2);
  grpc::ClientContext context;
  Answer a = Generate(Request({1}, 5000), [&] { context.TryCancel(); }, &context);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(a.tokens.size(), 5000u);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline &&
         (Stage(0)->released().empty() || Stage(1)->released().empty())) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Stage(0)->released().size(), 1u);
  EXPECT_EQ(Stage(1)->released().size(), 1u);
}

TEST_F(EngineTest, ANodeThatDiesFailsInFlightRequestsAndTheCoordinatorLivesOn) {
  Start(/*step_delay_ms=*/2);
  FakeNode* last = Stage(1);
  ASSERT_NE(last, nullptr);
  std::vector<std::future<Answer>> running;
  std::promise<void> started;
  auto started_future = started.get_future();
  running.push_back(std::async(std::launch::async, [&] {
    return Generate(Request({1}, 100000), [&] { started.set_value(); });
  }));
  for (int i = 0; i < 3; ++i) {
    running.push_back(
        std::async(std::launch::async, [this] { return Generate(Request({7, 8}, 100000)); }));
  }
  if (started_future.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    last->Kill();  // ends the requests, so that the futures can be read
    const Answer a = running[0].get();
    FAIL() << "the first request had no answer in 10 s; it ended with status "
           << a.status.error_code() << " '" << a.status.error_message() << "', finish reason '"
           << a.finish_reason << "', error '" << a.error << "'";
  }
  last->Kill();
  for (auto& f : running) {
    Answer a = f.get();
    EXPECT_EQ(a.finish_reason, "error")
        << "status " << a.status.error_code() << " '" << a.status.error_message() << "'";
    EXPECT_FALSE(a.error.empty());
    EXPECT_LT(a.tokens.size(), 100000u);
  }
  // Still serving status: the cluster is degraded and the node is down.
  ASSERT_TRUE(WaitForState(address_, "degraded"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::string state;
  while (std::chrono::steady_clock::now() < deadline && state != "down") {
    const v1::ClusterStatusResponse st = GetStatus(address_);
    for (const v1::NodeStatus& n : st.nodes()) {
      if (n.node_id() == "s1") state = n.state();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(state, "down");
  Answer late = Generate(Request({1, 2}, 3));
  EXPECT_EQ(late.finish_reason, "error");
  EXPECT_NE(late.error.find("no pipeline"), std::string::npos) << late.error;
  EXPECT_NE(late.error.find("node 's1' is down"), std::string::npos) << late.error;

  // The node comes back: the cluster is planned again and serves.
  nodes_.push_back(std::make_unique<FakeNode>(
      FakeNodeOptions{.name = "s1", .fingerprint = TinySpec().Fingerprint(), .vocab = kVocab}));
  ASSERT_TRUE(nodes_.back()->Join(address_));
  ASSERT_TRUE(WaitForState(address_, "ready"));
  EXPECT_EQ(Generate(Request({1, 2}, 3)).tokens, (std::vector<uint32_t>{3, 4, 5}));
}

TEST_F(EngineTest, StatusShowsStagesAndHeartbeatFigures) {
  Start(/*step_delay_ms=*/1);
  Generate(Request({1, 2, 3}, 40));
  // Heartbeats carry the counters; wait until both stages reported work.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  v1::ClusterStatusResponse st;
  auto reported = [&] {
    st = GetStatus(address_);
    if (st.nodes_size() != 2) return false;
    for (const v1::NodeStatus& n : st.nodes()) {
      if (n.link_raw_bytes() == 0 || n.compute_ms_per_step() <= 0) return false;
    }
    return true;
  };
  while (!reported() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(reported());
  EXPECT_EQ(st.state(), "ready");
  EXPECT_EQ(st.num_layers(), 4u);
  EXPECT_GT(st.predicted_tokens_per_s(), 0);
  EXPECT_EQ(st.nodes(0).stage_index(), 0u);
  EXPECT_EQ(st.nodes(1).stage_index(), 1u);
  EXPECT_EQ(st.nodes(0).first_layer(), 0u);
  EXPECT_EQ(st.nodes(1).last_layer(), 4u);
  for (const v1::NodeStatus& n : st.nodes()) {
    EXPECT_EQ(n.state(), "ready");
    EXPECT_EQ(n.link_codec(), "none");
    EXPECT_EQ(n.link_wire_bytes() * 2, n.link_raw_bytes());
    EXPECT_GE(n.busy_fraction(), 0.0);
    EXPECT_LE(n.busy_fraction(), 1.0);
  }
}

// Text prompts and answers through a tokenizer whose tokens are the printable
// ASCII characters (id = code - 32) plus <eos> (95), for a model whose
// vocabulary is padded to 100: the fake last stage answers the next id.
class TextEngineTest : public ::testing::Test {
 protected:
  static constexpr int kTextVocab = 100;

  void SetUp() override {
    nlohmann::json vocab = nlohmann::json::object();
    for (int i = 0; i < 95; ++i) vocab[std::string(1, static_cast<char>(32 + i))] = i;
    nlohmann::json tokenizer = {
        {"added_tokens", {{{"id", 95}, {"content", "<eos>"}, {"special", true}}}},
        {"normalizer", nullptr},
        {"pre_tokenizer", nullptr},
        {"post_processor", nullptr},
        {"decoder", {{"type", "Fuse"}}},
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
    auto t = Tokenizer::FromJson(tokenizer.dump(), "", "ascii tokenizer");
    ASSERT_TRUE(t.ok()) << t.status();
    auto reference = Tokenizer::FromJson(tokenizer.dump(), "", "ascii tokenizer");
    ASSERT_TRUE(reference.ok()) << reference.status();
    reference_ = std::move(reference).value();
    auto spec = ParseModelSpec(R"({
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
      "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
      "eos_token_id": 95})",
                               "");
    ASSERT_TRUE(spec.ok()) << spec.status();
    CoordinatorServerOptions o;
    o.config.listen = "127.0.0.1:0";
    o.config.nodes = 2;
    o.spec = *spec;
    o.tokenizer = std::move(t).value();
    o.heartbeat_interval_ms = 100;
    auto server = CoordinatorServer::Start(std::move(o));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    address_ = "127.0.0.1:" + std::to_string(server_->port());
    for (const char* name : {"s0", "s1"}) {
      nodes_.push_back(std::make_unique<FakeNode>(FakeNodeOptions{
          .name = name, .fingerprint = spec->Fingerprint(), .vocab = kTextVocab}));
      ASSERT_TRUE(nodes_.back()->Join(address_));
    }
    ASSERT_TRUE(WaitForState(address_, "ready"));
  }

  struct TextAnswer {
    std::string text;
    std::vector<std::string> pieces;
    std::vector<uint32_t> tokens;
    std::string finish_reason;
    uint32_t prompt_tokens = 0;
    grpc::Status status;
  };
  TextAnswer Generate(const std::string& prompt, uint32_t max_tokens,
                      const std::vector<std::string>& stop = {},
                      const std::vector<uint32_t>& prompt_ids = {}) {
    v1::GenerateRequest request;
    if (prompt_ids.empty()) request.set_prompt(prompt);
    for (uint32_t id : prompt_ids) request.add_prompt_token_ids(id);
    request.set_max_tokens(max_tokens);
    for (const std::string& s : stop) request.add_stop(s);
    auto stub = v1::Coordinator::NewStub(MakeChannel(address_));
    grpc::ClientContext context;
    auto reader = stub->Generate(&context, request);
    TextAnswer a;
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
      if (r.prompt_tokens() > 0) a.prompt_tokens = r.prompt_tokens();
      a.text += r.text();
      if (!r.text().empty()) a.pieces.push_back(r.text());
      a.tokens.insert(a.tokens.end(), r.token_ids().begin(), r.token_ids().end());
      if (!r.finish_reason().empty()) a.finish_reason = r.finish_reason();
    }
    a.status = reader->Finish();
    return a;
  }

  std::unique_ptr<Tokenizer> reference_;  // the coordinator's tokenizer, for expectations
  std::unique_ptr<CoordinatorServer> server_;
  std::string address_;
  std::vector<std::unique_ptr<FakeNode>> nodes_;
};

TEST_F(TextEngineTest, StreamsDetokenizedText) {
  TextAnswer a = Generate("abc", 5);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  EXPECT_EQ(a.prompt_tokens, 3u);
  EXPECT_EQ(a.text, "defgh");
  EXPECT_EQ(a.finish_reason, "length");
  EXPECT_GT(a.pieces.size(), 1u) << "the answer is streamed, not sent at the end";
}

TEST_F(TextEngineTest, EndOfSequenceEndsTheTextWithoutShowingIt) {
  TextAnswer a = Generate("xyz", 50);
  EXPECT_EQ(a.text, "{|}~");
  EXPECT_EQ(a.finish_reason, "stop");
  ASSERT_FALSE(a.tokens.empty());
  EXPECT_EQ(a.tokens.back(), 95u);  // <eos> is reported as a token, not as text
}

TEST_F(TextEngineTest, IdsPastTheTokenizerHaveNoText) {
  TextAnswer a = Generate("", 5, {}, {96});
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  EXPECT_EQ(a.tokens, (std::vector<uint32_t>{97, 98, 99, 0, 1}));
  const std::vector<int32_t> known = {0, 1};
  EXPECT_EQ(a.text, reference_->Decode(known, /*skip_special=*/true));
  EXPECT_FALSE(a.text.empty());
  EXPECT_EQ(a.finish_reason, "length");
}

TEST_F(TextEngineTest, StopStringsEndTheAnswerBeforeThem) {
  TextAnswer a = Generate("abc", 50, {"fg", "zz"});
  EXPECT_EQ(a.text, "de");
  EXPECT_EQ(a.finish_reason, "stop");
  // A prefix of a stop string that does not complete is released.
  a = Generate("abc", 4, {"gX"});
  EXPECT_EQ(a.text, "defg");
  EXPECT_EQ(a.finish_reason, "length");
  // The stage was told to release the stopped sequences.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline && nodes_[1]->released().size() < 2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(nodes_[1]->released().size(), 2u);
}

}  // namespace
}  // namespace tandem::testing
