#include "coordinator/generate_request.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace tandem {

namespace {

Status CheckRange(const char* name, float v, float lo, float hi) {
  if (!std::isfinite(v) || v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.", name, " must be in [", lo, ", ", hi, "], got ", v));
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<GenerationRequest> PrepareGeneration(const v1::GenerateRequest& request,
                                              const PromptTools& tools) {
  const int given = (request.prompt().empty() ? 0 : 1) +
                    (request.prompt_token_ids().empty() ? 0 : 1) +
                    (request.messages().empty() ? 0 : 1);
  if (given != 1) {
    return absl::InvalidArgumentError(
        "give exactly one of prompt, prompt_token_ids and messages");
  }
  GenerationRequest out;
  if (!request.prompt_token_ids().empty()) {
    for (uint32_t id : request.prompt_token_ids()) {
      if (id >= static_cast<uint32_t>(tools.spec->vocab_size)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "prompt token id ", id, " is outside the vocabulary [0, ", tools.spec->vocab_size, ")"));
      }
      out.prompt.push_back(static_cast<int32_t>(id));
    }
  } else if (tools.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "this coordinator has no tokenizer (no tokenizer.json in its model folder): send "
        "prompt_token_ids");
  } else if (!request.prompt().empty()) {
    out.prompt = tools.tokenizer->Encode(request.prompt(), /*add_special=*/true);
  } else {
    if (tools.chat_template == nullptr) {
      return absl::FailedPreconditionError("this coordinator has no chat template for its model");
    }
    std::vector<ChatMessage> messages;
    for (const v1::ChatMessage& m : request.messages()) {
      messages.push_back({.role = m.role(), .content = m.content()});
    }
    ASSIGN_OR_RETURN(std::string text, tools.chat_template->Render(messages, true));
    // The rendered text carries its own special tokens.
    out.prompt = tools.tokenizer->Encode(text, /*add_special=*/false);
  }
  if (out.prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");

  if (request.max_tokens() > (1u << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be at most ", 1 << 20, ", got ", request.max_tokens()));
  }
  out.max_tokens = request.max_tokens() > 0
                       ? static_cast<int>(request.max_tokens())
                       : tools.spec->generation.max_new_tokens.value_or(kDefaultMaxTokens);

  const v1::SamplingParams& p = request.sampling();
  RETURN_IF_ERROR(CheckRange("temperature", p.temperature(), 0, 100));
  RETURN_IF_ERROR(CheckRange("top_p", p.top_p(), 0, 1));
  RETURN_IF_ERROR(CheckRange("min_p", p.min_p(), 0, 1));
  RETURN_IF_ERROR(CheckRange("presence_penalty", p.presence_penalty(), -100, 100));
  RETURN_IF_ERROR(CheckRange("frequency_penalty", p.frequency_penalty(), -100, 100));
  RETURN_IF_ERROR(CheckRange("repetition_penalty", p.repetition_penalty(), 0, 100));
  if (p.top_k() > static_cast<uint32_t>(tools.spec->vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.top_k must be at most the vocabulary size ", tools.spec->vocab_size));
  }
  out.sampling = {.temperature = p.temperature(),
                  .top_p = p.top_p() == 0 ? 1.0f : p.top_p(),  // unset reads as off
                  .top_k = static_cast<int>(p.top_k()),
                  .min_p = p.min_p(),
                  .presence_penalty = p.presence_penalty(),
                  .frequency_penalty = p.frequency_penalty(),
                  .repetition_penalty = p.repetition_penalty() == 0 ? 1.0f : p.repetition_penalty(),
                  .seed = p.seed(),
                  .has_seed = p.has_seed(),
                  .want_logprobs = p.want_logprob()};

  if (request.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", kMaxStopStrings, " stop strings, got ", request.stop_size()));
  }
  for (const std::string& s : request.stop()) {
    if (s.size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("a stop string is ", s.size(), " bytes; at most ", kMaxStopStringBytes));
    }
    out.stop.push_back(s);
  }
  return out;
}

}  // namespace tandem
