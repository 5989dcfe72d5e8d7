// `tandem generate`: sends a prompt (or a chat turn) to a coordinator and
// streams the answer to stdout; --json prints one object at the end (with
// --logprobs, each generated token's log-probability too).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/cli.h"
#include "core/command.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "proto/grpc_channel.h"
#include "proto/hello.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem {
namespace {

struct GenerateFlags {
  std::string coordinator = "127.0.0.1:7100";
  std::optional<std::string> prompt;
  std::optional<std::string> tokens;
  bool chat = false;
  std::optional<std::string> system;
  int max_tokens = 256;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool logprobs = false;
  bool json = false;
};

StatusOr<v1::GenerateRequest> BuildRequest(const GenerateFlags& f) {
  v1::GenerateRequest r;
  HelloParams hello;
  hello.role = v1::ROLE_CLIENT;
  hello.node_id = "tandem-generate";
  *r.mutable_hello() = MakeHello(hello);
  if (f.prompt.has_value() + f.tokens.has_value() > 1) {
    return absl::InvalidArgumentError("give one of --prompt and --tokens");
  }
  if (f.tokens.has_value()) {
    if (f.chat) return absl::InvalidArgumentError("--chat takes --prompt, not --tokens");
    for (absl::string_view part : absl::StrSplit(*f.tokens, ',')) {
      uint32_t id = 0;
      if (!absl::SimpleAtoi(part, &id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tokens: '", std::string(part), "' is not a token id"));
      }
      r.add_prompt_token_ids(id);
    }
  } else if (f.chat) {
    std::string user;
    if (f.prompt.has_value()) {
      user = *f.prompt;
    } else {
      user.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    }
    if (f.system.has_value()) {
      v1::ChatMessage* m = r.add_messages();
      m->set_role("system");
      m->set_content(*f.system);
    }
    v1::ChatMessage* m = r.add_messages();
    m->set_role("user");
    m->set_content(user);
  } else if (f.prompt.has_value()) {
    r.set_prompt(*f.prompt);
  } else {
    return absl::InvalidArgumentError("give --prompt TEXT, --chat or --tokens IDS");
  }
  if (f.system.has_value() && !f.chat) return absl::InvalidArgumentError("--system needs --chat");
  if (f.max_tokens < 1) return absl::InvalidArgumentError("--max-tokens must be at least 1");
  r.set_max_tokens(static_cast<uint32_t>(f.max_tokens));
  if (f.top_k < 0) return absl::InvalidArgumentError("--top-k must be >= 0");
  v1::SamplingParams* s = r.mutable_sampling();
  s->set_temperature(f.temperature);
  s->set_top_p(f.top_p);
  s->set_top_k(static_cast<uint32_t>(f.top_k));
  s->set_min_p(f.min_p);
  s->set_repetition_penalty(f.repetition_penalty);
  s->set_presence_penalty(f.presence_penalty);
  s->set_frequency_penalty(f.frequency_penalty);
  if (f.seed.has_value()) {
    s->set_seed(*f.seed);
    s->set_has_seed(true);
  }
  if (f.logprobs && !f.json) return absl::InvalidArgumentError("--logprobs needs --json");
  s->set_want_logprob(f.logprobs);
  for (const std::string& stop : f.stop) r.add_stop(stop);
  return r;
}

Status Generate(const GenerateFlags& f) {
  ASSIGN_OR_RETURN(v1::GenerateRequest request, BuildRequest(f));
  auto stub = v1::Coordinator::NewStub(MakeChannel(f.coordinator));
  grpc::ClientContext context;
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse response;
  uint32_t prompt_tokens = 0;
  std::vector<uint32_t> tokens;
  std::vector<float> logprobs;
  std::string text;
  std::string finish_reason;
  std::string error;
  std::optional<Clock::time_point> first, last;
  while (reader->Read(&response)) {
    if (response.prompt_tokens() > 0) prompt_tokens = response.prompt_tokens();
    if (response.token_ids_size() > 0) {
      if (!first) first = Clock::now();
      last = Clock::now();
      tokens.insert(tokens.end(), response.token_ids().begin(), response.token_ids().end());
      logprobs.insert(logprobs.end(), response.logprobs().begin(), response.logprobs().end());
    }
    text += response.text();
    if (!f.json && !response.text().empty()) {
      std::fwrite(response.text().data(), 1, response.text().size(), stdout);
      std::fflush(stdout);
    }
    if (!response.finish_reason().empty()) {
      finish_reason = response.finish_reason();
      error = response.error();
    }
  }
  grpc::Status s = reader->Finish();
  if (!f.json && !text.empty()) std::printf("\n");
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                        absl::StrCat("coordinator ", f.coordinator, ": ", s.error_message()));
  }
  if (finish_reason == "error") return absl::UnavailableError(error);
  if (finish_reason.empty()) {
    return absl::UnavailableError("the coordinator ended the answer without a finish reason");
  }
  const double ttft_ms =
      first ? std::chrono::duration<double, std::milli>(*first - start).count() : 0.0;
  const double decode_s = first ? std::chrono::duration<double>(*last - *first).count() : 0.0;
  const double decode_tps =
      tokens.size() > 1 && decode_s > 0 ? static_cast<double>(tokens.size() - 1) / decode_s : 0.0;
  if (f.json) {
    nlohmann::json out = {{"prompt_tokens", prompt_tokens},
                          {"tokens", tokens},
                          {"text", text},
                          {"finish_reason", finish_reason},
                          {"timing", {{"ttft_ms", ttft_ms}, {"decode_tokens_per_s", decode_tps}}}};
    if (f.logprobs) {
      if (logprobs.size() != tokens.size()) {
        return absl::UnavailableError(absl::StrCat("the coordinator sent ", logprobs.size(),
                                                   " logprobs for ", tokens.size(), " tokens"));
      }
      out["logprobs"] = logprobs;
    }
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("\n");  // the streamed text ends its line
    std::fflush(stdout);
    std::fprintf(stderr,
                 "prompt %u tokens, generated %zu (%s); ttft %.1f ms, decode %.2f tokens/s\n",
                 prompt_tokens, tokens.size(), finish_reason.c_str(), ttft_ms, decode_tps);
  }
  return absl::OkStatus();
}

std::function<int()> SetupGenerate(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  app.add_option("--coordinator", f->coordinator, "coordinator address host:port")
      ->capture_default_str();
  app.add_option("--prompt", f->prompt, "prompt text (with --chat: the user message)");
  app.add_option("--tokens", f->tokens, "prompt as comma-separated token ids, e.g. 1,2,3");
  app.add_flag("--chat", f->chat,
               "send the prompt as a user message through the model's chat template "
               "(without --prompt: read it from stdin)");
  app.add_option("--system", f->system, "system message for --chat");
  app.add_option("--max-tokens", f->max_tokens, "tokens to generate at most")->capture_default_str();
  app.add_option("--temperature", f->temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-p", f->top_p, "1 = off")->capture_default_str();
  app.add_option("--top-k", f->top_k, "0 = off")->capture_default_str();
  app.add_option("--min-p", f->min_p, "0 = off")->capture_default_str();
  app.add_option("--repetition-penalty", f->repetition_penalty)->capture_default_str();
  app.add_option("--presence-penalty", f->presence_penalty)->capture_default_str();
  app.add_option("--frequency-penalty", f->frequency_penalty)->capture_default_str();
  app.add_option("--seed", f->seed, "seed for reproducible sampling");
  app.add_option("--stop", f->stop, "stop string (repeatable); not included in the output");
  app.add_flag("--logprobs", f->logprobs,
               "with --json: add \"logprobs\", each generated token's log-probability under "
               "the model's raw logits (before temperature and penalties)");
  app.add_flag("--json", f->json, "print one JSON object at the end");
  return [f] {
    Status status = Generate(*f);
    return status.ok() ? 0 : ReportError("tandem generate", status);
  };
}

const bool kRegistered = RegisterCommand(
    {.name = "generate", .summary = "generate text through a coordinator",
     .setup = &SetupGenerate});

}  // namespace
}  // namespace tandem
