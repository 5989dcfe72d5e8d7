#include "tests/http/fake_http_backend.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace tandem {

FakeHttpBackend::FakeHttpBackend(FakeBackendOptions options)
    : options_(std::move(options)), token_delay_ms_(options_.token_delay_ms) {
  thread_ = std::thread([this] { Loop(); });
}

FakeHttpBackend::~FakeHttpBackend() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::vector<std::string> FakeHttpBackend::AnswerTokens(int prompt_tokens) {
  std::vector<std::string> out = {"Hello", "!", " You", " sent", absl::StrCat(" ", prompt_tokens),
                                  " tokens", ".", " Ünïcödé", " ✓", " 🙂", " \"quoted\"",
                                  " line\nbreak", " The", " end", "."};
  return out;
}

std::string FakeHttpBackend::Answer(int prompt_tokens) {
  std::string text;
  for (const std::string& t : AnswerTokens(prompt_tokens)) text += t;
  return text;
}

StatusOr<std::vector<int32_t>> FakeHttpBackend::EncodePrompt(const std::string& text) const {
  std::vector<int32_t> ids = {256};  // BOS
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

StatusOr<std::vector<int32_t>> FakeHttpBackend::EncodeChat(
    std::span<const ChatMessage> messages) const {
  std::string text;
  for (const ChatMessage& m : messages) {
    if (m.role == "tool") return absl::InvalidArgumentError("this template has no tool role");
    text += m.role + ": " + m.content + "\n";
  }
  text += "assistant: ";
  return EncodePrompt(text);
}

std::string FakeHttpBackend::TokenBytes(int32_t id) const {
  return id < 256 ? std::string(1, static_cast<char>(id)) : "<s>";
}

v1::ClusterStatusResponse FakeHttpBackend::ClusterStatus() const {
  v1::ClusterStatusResponse s;
  s.set_state(ready_.load() ? "ready" : "waiting");
  s.set_model_name(options_.model_name);
  s.set_model_fingerprint("fake0123");
  s.set_num_layers(16);
  s.set_requests_waiting(static_cast<uint32_t>(queue_length_.load()));
  s.set_requests_running(static_cast<uint32_t>(active()));
  const uint64_t tokens = next_id_.load() * 1000;
  const char* names[] = {"alpha", "beta"};
  for (int i = 0; i < 2; ++i) {
    v1::NodeStatus* n = s.add_nodes();
    n->set_node_id(names[i]);
    n->set_address(absl::StrCat("127.0.0.1:", 7201 + i));
    n->set_first_layer(i * 8);
    n->set_last_layer(i * 8 + 8);
    n->set_healthy(true);
    n->set_state("ready");
    n->set_stage_index(i);
    v1::DeviceInfo* d = n->add_devices();
    d->set_kind("cpu");
    d->set_name(i == 0 ? "Test CPU 8 cores" : "Test CPU 4 cores");
    d->set_memory_bytes(uint64_t{16} << 30);
    n->set_kv_total_blocks(1024);
    n->set_kv_free_blocks(1024 - 100 * (i + 1));
    n->set_busy_fraction(0.4 + 0.2 * i);
    n->set_compute_ms_per_step(5.0 + i);
    n->set_link_raw_bytes(tokens * 4096);
    n->set_link_wire_bytes(tokens * 2048);
    n->set_link_codec(i == 0 ? "shuffle-lz4" : "none");
  }
  return s;
}

uint64_t FakeHttpBackend::Submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) {
  const uint64_t id = next_id_.fetch_add(1);
  std::string prompt;
  for (int32_t t : request.prompt) {
    if (t < 256) prompt += static_cast<char>(t);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_ = request;
    if (prompt.find("FAIL_EARLY") != std::string::npos) {
      v1::GenerateResponse r;
      r.set_finish_reason("error");
      r.set_error("no pipeline: the test said so");
      sink->Send(std::move(r));
      return id;
    }
    Live live;
    live.tokens = AnswerTokens(static_cast<int>(request.prompt.size()));
    live.fail_late = prompt.find("FAIL_LATE") != std::string::npos;
    live.request = std::move(request);
    live.sink = std::move(sink);
    live_.emplace(id, std::move(live));
  }
  cv_.notify_all();
  return id;
}

void FakeHttpBackend::Cancel(uint64_t request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.insert(request_id);
  live_.erase(request_id);
}

GenerationRequest FakeHttpBackend::last_request() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_;
}

std::set<uint64_t> FakeHttpBackend::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

int FakeHttpBackend::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(live_.size());
}

bool FakeHttpBackend::Step(uint64_t /*id*/, Live& live) {
  v1::GenerateResponse r;
  if (live.next == 0) r.set_prompt_tokens(static_cast<uint32_t>(live.request.prompt.size()));
  if (live.fail_late && live.next == 2) {
    r.set_finish_reason("error");
    r.set_error("stage beta went down");
    live.sink->Send(std::move(r));
    return true;
  }
  const std::string& token = live.tokens[live.next];
  const size_t before = live.text.size();
  live.text += token;
  ++live.next;
  r.add_token_ids(static_cast<uint32_t>(static_cast<unsigned char>(token[0])));
  if (live.request.sampling.want_logprobs) r.add_logprobs(-0.25f * static_cast<float>(live.next));
  // Stop strings end the text before them.
  for (const std::string& stop : live.request.stop) {
    const size_t at = live.text.find(stop);
    if (at != std::string::npos) {
      r.set_text(at > before ? live.text.substr(before, at - before) : "");
      r.set_finish_reason("stop");
      live.sink->Send(std::move(r));
      return true;
    }
  }
  r.set_text(token);
  if (static_cast<int>(live.next) >= live.request.max_tokens) {
    r.set_finish_reason("length");
  } else if (live.next == live.tokens.size()) {
    r.set_finish_reason("stop");
  }
  const bool last = !r.finish_reason().empty();
  live.sink->Send(std::move(r));
  return last;
}

void FakeHttpBackend::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !live_.empty(); });
    if (stop_) break;
    for (auto it = live_.begin(); it != live_.end();) {
      if (Step(it->first, it->second)) {
        it = live_.erase(it);
      } else {
        ++it;
      }
    }
    const int delay = token_delay_ms_.load();
    if (delay > 0) {
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(delay));
      lock.lock();
    }
  }
  // Like the engine: requests still running end with an error.
  for (auto& [id, live] : live_) {
    v1::GenerateResponse r;
    r.set_finish_reason("error");
    r.set_error("the backend is shutting down");
    live.sink->Send(std::move(r));
  }
  live_.clear();
}

}  // namespace tandem
