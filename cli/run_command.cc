// `tandem run`: runs a model in this process, optionally split into pipeline
// stages and tensor-parallel ranks, and generates from a prompt or token ids.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/cli.h"
#include "core/command.h"
#include "coordinator/chat_template.h"
#include "coordinator/tokenizer.h"
#include "nlohmann/json.hpp"
#include "config/node_config.h"
#include "node/local_pipeline.h"
#include "node/sampler.h"

namespace tandem {
namespace {

struct RunFlags {
  std::string model;
  std::optional<std::string> prompt;
  std::optional<std::string> tokens;
  bool chat = false;
  std::optional<std::string> system;
  int max_tokens = 64;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;
  std::string quantize = "none";
  int threads = 0;
  int stages = 1;
  int tp = 1;
  int max_batch_tokens = 512;
  double kv_budget_mb = 256;
  std::string codec = "none";
  std::string device = "cpu";
  bool ignore_eos = false;
  bool json = false;
  std::optional<std::string> logits_out;
};

// --device and --tp: "cpu" -> no GPUs, `tp` ranks on threads; "cuda:0,1" ->
// those GPUs, one tensor-parallel rank each.
StatusOr<std::vector<int>> ParseRunDevices(const std::string& text, int* tp) {
  ASSIGN_OR_RETURN(std::vector<DeviceId> devices, ParseDevices({text}));
  std::vector<int> gpus = CudaOrdinals(devices);
  StatusOr<int> ranks = StageRanks(*tp, gpus);
  if (!ranks.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--device ", text, ": ",
                                                   ranks.status().message(),
                                                   " (leave out --tp)"));
  }
  *tp = *ranks;
  return gpus;
}

StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tokens: '", std::string(part), "' is not an integer token id"));
    }
    ids.push_back(id);
  }
  return ids;
}

Status WriteLogits(const std::string& path, std::span<const float> logits) {
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot open ", path, " for writing"));
  // The format is little-endian float32; every supported host is little-endian.
  out.write(reinterpret_cast<const char*>(logits.data()),
            static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) return absl::InternalError(absl::StrCat("writing ", path, " failed"));
  return absl::OkStatus();
}

Status Run(const RunFlags& f) {
  if (f.prompt.has_value() == f.tokens.has_value()) {
    return absl::InvalidArgumentError("give exactly one of --prompt and --tokens");
  }
  if (f.max_tokens < 0) return absl::InvalidArgumentError("--max-tokens must be >= 0");
  if (f.kv_budget_mb <= 0) return absl::InvalidArgumentError("--kv-budget-mb must be > 0");
  ASSIGN_OR_RETURN(WeightQuantization quantize, ParseWeightQuantization(f.quantize));
  ASSIGN_OR_RETURN(Codec codec, ParseCodec(f.codec));
  SamplingParams sampling{.temperature = f.temperature,
                          .top_k = f.top_k,
                          .top_p = f.top_p,
                          .min_p = f.min_p,
                          .repetition_penalty = f.repetition_penalty,
                          .presence_penalty = f.presence_penalty,
                          .frequency_penalty = f.frequency_penalty,
                          .seed = f.seed};
  RETURN_IF_ERROR(ValidateSamplingParams(sampling));

  // The tokenizer is needed for --prompt; with --tokens it only turns the
  // output into text when the folder has one.
  std::unique_ptr<Tokenizer> tokenizer;
  {
    auto loaded = Tokenizer::Load(f.model);
    if (loaded.ok()) {
      tokenizer = std::move(loaded).value();
    } else if (f.prompt.has_value()) {
      return loaded.status();
    }
  }
  std::vector<int32_t> prompt;
  if (f.chat && !f.prompt.has_value()) {
    return absl::InvalidArgumentError("--chat needs --prompt");
  }
  if (f.chat) {
    // As Hugging Face apply_chat_template: the rendered text carries its own
    // special tokens, so none are added when encoding it.
    ASSIGN_OR_RETURN(ChatTemplate chat_template, ChatTemplate::ForTokenizer(*tokenizer, ""));
    std::vector<ChatMessage> messages;
    if (f.system.has_value()) messages.push_back({.role = "system", .content = *f.system});
    messages.push_back({.role = "user", .content = *f.prompt});
    ASSIGN_OR_RETURN(std::string text, chat_template.Render(messages, true));
    prompt = tokenizer->Encode(text, /*add_special=*/false);
  } else if (f.prompt.has_value()) {
    prompt = tokenizer->Encode(*f.prompt, /*add_special=*/true);
  } else {
    ASSIGN_OR_RETURN(prompt, ParseTokenList(*f.tokens));
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");

  int tp = f.tp;
  ASSIGN_OR_RETURN(std::vector<int> cuda_devices, ParseRunDevices(f.device, &tp));
  PipelineOptions options{
      .stages = f.stages,
      .stage = StageOptions{.tp = tp,
                            .threads = f.threads,
                            .max_batch_tokens = f.max_batch_tokens,
                            .max_batch_sequences = 1,
                            .kv_budget_bytes = static_cast<size_t>(f.kv_budget_mb * 1048576.0),
                            .quantize = quantize},
      .codec = codec,
      .cuda_devices = std::move(cuda_devices)};
  ASSIGN_OR_RETURN(std::unique_ptr<LocalPipeline> pipeline, LocalPipeline::Create(f.model, options));
  const ModelSpec& spec = pipeline->spec();
  for (int32_t id : prompt) {
    if (id < 0 || id >= spec.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", spec.vocab_size, ")"));
    }
  }

  using Clock = std::chrono::steady_clock;
  const uint64_t kSeq = 1;
  const auto start = Clock::now();
  // The last stage samples (on the GPU when there is one); only
  // --logits-out takes the logits of the prompt's last position instead.
  SequenceSampler sampler(sampling, spec.vocab_size);
  sampler.SetPrompt(prompt);
  SequenceSampler* const samplers[] = {&sampler};
  int32_t next = -1;
  for (size_t begin = 0; begin < prompt.size(); begin += static_cast<size_t>(f.max_batch_tokens)) {
    const size_t n = std::min(prompt.size() - begin, static_cast<size_t>(f.max_batch_tokens));
    SequenceStep step{.seq_id = kSeq, .start = static_cast<int64_t>(begin),
                      .count = static_cast<int64_t>(n)};
    const std::span<const int32_t> chunk = std::span<const int32_t>(prompt).subspan(begin, n);
    if (begin + n < prompt.size()) {
      RETURN_IF_ERROR(pipeline->Step({&step, 1}, chunk).status());
    } else if (f.logits_out.has_value()) {
      ASSIGN_OR_RETURN(std::span<const float> logits, pipeline->Step({&step, 1}, chunk));
      return WriteLogits(*f.logits_out, logits);
    } else {
      ASSIGN_OR_RETURN(std::span<const SampledToken> sampled,
                       pipeline->StepAndSample({&step, 1}, chunk, samplers));
      next = sampled[0].token;
    }
  }

  std::vector<int32_t> eos(spec.eos_token_ids.begin(), spec.eos_token_ids.end());
  if (tokenizer) {
    for (int32_t id : tokenizer->eos_ids()) eos.push_back(id);
  }
  std::vector<int32_t> generated;
  double ttft_ms = 0;
  auto decode_start = Clock::now();
  for (int i = 0; i < f.max_tokens; ++i) {
    const int32_t token = next;
    generated.push_back(token);
    if (i == 0) {
      decode_start = Clock::now();
      ttft_ms = std::chrono::duration<double, std::milli>(decode_start - start).count();
    }
    const bool stop = !f.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end();
    if (stop || i + 1 == f.max_tokens) break;
    SequenceStep step{.seq_id = kSeq,
                      .start = static_cast<int64_t>(prompt.size() + generated.size() - 1),
                      .count = 1};
    ASSIGN_OR_RETURN(std::span<const SampledToken> sampled,
                     pipeline->StepAndSample({&step, 1}, {&generated.back(), 1}, samplers));
    next = sampled[0].token;
  }
  const double decode_s = std::chrono::duration<double>(Clock::now() - decode_start).count();
  const double decode_tps =
      generated.size() > 1 && decode_s > 0 ? static_cast<double>(generated.size() - 1) / decode_s : 0;
  // The model's vocabulary may be larger than the tokenizer's (padding rows):
  // ids the tokenizer does not know have no text.
  std::string text;
  if (tokenizer) {
    std::vector<int32_t> known;
    for (int32_t id : generated) {
      if (tokenizer->IsValidId(id)) known.push_back(id);
    }
    text = tokenizer->Decode(known, /*skip_special=*/true);
  }

  if (f.json) {
    nlohmann::ordered_json out = {{"prompt_tokens", prompt.size()},
                          {"tokens", generated},
                          {"text", text},
                          {"timing", {{"ttft_ms", ttft_ms}, {"decode_tokens_per_s", decode_tps}}}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
  } else {
    if (tokenizer) {
      std::printf("%s\n", text.c_str());
    } else {
      std::string ids;
      for (size_t i = 0; i < generated.size(); ++i) absl::StrAppend(&ids, i ? "," : "", generated[i]);
      std::printf("%s\n", ids.c_str());
    }
    std::fprintf(stderr, "prompt %zu tokens, generated %zu; ttft %.1f ms, decode %.2f tokens/s\n",
                 prompt.size(), generated.size(), ttft_ms, decode_tps);
  }
  return absl::OkStatus();
}

std::function<int()> SetupRun(CLI::App& app) {
  auto f = std::make_shared<RunFlags>();
  app.add_option("--model", f->model, "model folder (Hugging Face layout)")->required();
  app.add_option("--prompt", f->prompt, "prompt text (needs the folder's tokenizer)");
  app.add_option("--tokens", f->tokens, "prompt as comma-separated token ids, e.g. 1,2,3");
  app.add_flag("--chat", f->chat, "send --prompt as a user message through the chat template");
  app.add_option("--system", f->system, "system message for --chat");
  app.add_option("--max-tokens", f->max_tokens, "tokens to generate")->capture_default_str();
  app.add_option("--temperature", f->temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-k", f->top_k, "0 = off")->capture_default_str();
  app.add_option("--top-p", f->top_p, "1 = off")->capture_default_str();
  app.add_option("--min-p", f->min_p, "0 = off")->capture_default_str();
  app.add_option("--repetition-penalty", f->repetition_penalty)->capture_default_str();
  app.add_option("--presence-penalty", f->presence_penalty)->capture_default_str();
  app.add_option("--frequency-penalty", f->frequency_penalty)->capture_default_str();
  app.add_option("--seed", f->seed, "seed for reproducible sampling");
  app.add_option("--quantize", f->quantize, "quantize weights at load: none, int8 or int4")
      ->capture_default_str();
  app.add_option("--threads", f->threads, "threads in all (0 = every core)")->capture_default_str();
  app.add_option("--stages", f->stages, "pipeline stages in this process")->capture_default_str();
  app.add_option("--tp", f->tp, "tensor-parallel ranks per stage (on GPUs: one per --device)")
      ->capture_default_str();
  app.add_option("--max-batch-tokens", f->max_batch_tokens,
                 "tokens per step; longer prompts are prefilled in chunks of this size")
      ->capture_default_str();
  app.add_option("--kv-budget-mb", f->kv_budget_mb, "KV cache memory of the whole model, MiB")
      ->capture_default_str();
  app.add_option("--codec", f->codec, "lossless codec for hidden states between stages")
      ->capture_default_str();
  app.add_option("--device", f->device,
                 "where every stage computes: cpu, or GPUs such as cuda:0 or cuda:0,1 (tensor "
                 "parallelism over NCCL) in a build with the CUDA backend")
      ->capture_default_str();
  app.add_flag("--ignore-eos", f->ignore_eos, "keep generating after an end-of-sequence token");
  app.add_flag("--json", f->json, "print one JSON object");
  app.add_option("--logits-out", f->logits_out,
                 "write the last prompt position's logits (little-endian float32) and exit");
  return [f] {
    Status status = Run(*f);
    return status.ok() ? 0 : ReportError("tandem run", status);
  };
}

const bool kRegistered = RegisterCommand(
    {.name = "run", .summary = "run a model in this process", .setup = &SetupRun});

}  // namespace
}  // namespace tandem
