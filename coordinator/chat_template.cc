#include "coordinator/chat_template.h"

#include "absl/strings/str_join.h"
#include "coordinator/tokenizer.h"
#include "coordinator/utf8.h"

namespace tandem {
namespace {

// Debian's Abseil has its own string_view type.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr std::string_view kQwenDefaultSystem =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

std::string_view TrimNewlinesStart(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
std::string_view TrimNewlinesEnd(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

std::string OverrideHint() {
  return absl::StrCat("choose one with --chat-template or the YAML key chat_template (",
                      absl::StrJoin(ChatTemplate::FamilyNames(), ", "), ")");
}

Status AlternationError(std::string_view family) {
  return absl::InvalidArgumentError(absl::StrCat(
      "the ", Av(family),
      " chat format needs turns that alternate user/assistant/user/... after an optional "
      "first system message"));
}

}  // namespace

std::vector<std::string> ChatTemplate::FamilyNames() {
  return {"llama3", "llama2", "chatml", "mistral"};
}

StatusOr<ChatTemplateFamily> ChatTemplate::ParseFamily(std::string_view name) {
  if (name == "llama3") return ChatTemplateFamily::kLlama3;
  if (name == "llama2") return ChatTemplateFamily::kLlama2;
  if (name == "chatml" || name == "qwen") return ChatTemplateFamily::kChatml;
  if (name == "mistral") return ChatTemplateFamily::kMistral;
  return absl::InvalidArgumentError(absl::StrCat("unknown chat template '", Av(name), "'; ",
                                                 OverrideHint()));
}

std::optional<ChatTemplateFamily> ChatTemplate::Detect(std::string_view t) {
  if (t.find("<|start_header_id|>") != std::string_view::npos) return ChatTemplateFamily::kLlama3;
  if (t.find("<|im_start|>") != std::string_view::npos) return ChatTemplateFamily::kChatml;
  if (t.find("<<SYS>>") != std::string_view::npos) return ChatTemplateFamily::kLlama2;
  if (t.find("[INST]") != std::string_view::npos) return ChatTemplateFamily::kMistral;
  return std::nullopt;
}

ChatTemplate::ChatTemplate(ChatTemplateFamily family, std::string bos_token,
                           std::string eos_token)
    : family_(family), bos_token_(std::move(bos_token)), eos_token_(std::move(eos_token)) {}

StatusOr<ChatTemplate> ChatTemplate::ForTokenizer(const Tokenizer& tokenizer,
                                                  std::string_view override_name) {
  const std::string& text = tokenizer.chat_template();
  ChatTemplateFamily family;
  if (!override_name.empty()) {
    ASSIGN_OR_RETURN(family, ParseFamily(override_name));
  } else if (text.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "the model's tokenizer_config.json has no chat_template; ", OverrideHint()));
  } else if (auto detected = Detect(text)) {
    family = *detected;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "the chat_template in the model's tokenizer_config.json is not one tandem knows; ",
        OverrideHint()));
  }
  ChatTemplate t(family, tokenizer.bos_token(), tokenizer.eos_token());
  if (!text.empty() && Detect(text) == family) {
    t.always_generation_prompt_ = family == ChatTemplateFamily::kLlama3 &&
                                  text.find("add_generation_prompt") == std::string::npos;
    if (family == ChatTemplateFamily::kChatml) {
      if (text.find(kQwenDefaultSystem) != std::string::npos) {
        t.default_system_ = std::string(kQwenDefaultSystem);
      }
      t.reasoning_blocks_ = text.find("</think>") != std::string::npos;
    }
  }
  return t;
}

std::string_view ChatTemplate::name() const {
  switch (family_) {
    case ChatTemplateFamily::kLlama3: return "llama3";
    case ChatTemplateFamily::kLlama2: return "llama2";
    case ChatTemplateFamily::kChatml: return "chatml";
    case ChatTemplateFamily::kMistral: return "mistral";
  }
  return "";
}

StatusOr<std::string> ChatTemplate::Render(std::span<const ChatMessage> messages,
                                           bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("a chat needs at least one message");
  for (const ChatMessage& m : messages) {
    if (!IsValidUtf8(m.role) || !IsValidUtf8(m.content)) {
      return absl::InvalidArgumentError("chat messages must be valid UTF-8");
    }
  }
  switch (family_) {
    case ChatTemplateFamily::kLlama3: return RenderLlama3(messages, add_generation_prompt);
    case ChatTemplateFamily::kLlama2: return RenderLlama2(messages);
    case ChatTemplateFamily::kChatml: return RenderChatml(messages, add_generation_prompt);
    case ChatTemplateFamily::kMistral: return RenderMistral(messages);
  }
  return absl::InternalError("unknown chat template family");
}

StatusOr<std::string> ChatTemplate::RenderLlama3(std::span<const ChatMessage> messages,
                                                 bool gen) const {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += bos_token_;
    absl::StrAppend(&out, "<|start_header_id|>", messages[i].role, "<|end_header_id|>\n\n",
                    Av(TrimJsWhitespace(messages[i].content)), "<|eot_id|>");
  }
  if (gen || always_generation_prompt_) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

StatusOr<std::string> ChatTemplate::RenderLlama2(std::span<const ChatMessage> messages) const {
  std::optional<std::string_view> system;
  if (messages[0].role == "system") {
    system = messages[0].content;
    messages = messages.subspan(1);
  }
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if ((m.role == "user") != (i % 2 == 0)) return AlternationError("llama2");
    std::string content = m.content;
    if (i == 0 && system) content = absl::StrCat("<<SYS>>\n", Av(*system), "\n<</SYS>>\n\n", content);
    if (m.role == "user") {
      absl::StrAppend(&out, bos_token_, "[INST] ", Av(TrimJsWhitespace(content)), " [/INST]");
    } else if (m.role == "assistant") {
      absl::StrAppend(&out, " ", Av(TrimJsWhitespace(content)), " ", eos_token_);
    }
  }
  return out;
}

StatusOr<std::string> ChatTemplate::RenderMistral(std::span<const ChatMessage> messages) const {
  std::optional<std::string_view> system;
  if (messages[0].role == "system") {
    system = messages[0].content;
    messages = messages.subspan(1);
  }
  std::string out = bos_token_;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if ((m.role == "user") != (i % 2 == 0)) return AlternationError("mistral");
    if (m.role == "user") {
      if (i == 0 && system) {
        absl::StrAppend(&out, " [INST] ", Av(*system), "\n\n", m.content, " [/INST]");
      } else {
        absl::StrAppend(&out, " [INST] ", m.content, " [/INST]");
      }
    } else if (m.role == "assistant") {
      absl::StrAppend(&out, " ", m.content, eos_token_);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "the mistral chat format has no role '", m.role,
          "' (only user and assistant, after an optional first system message)"));
    }
  }
  return out;
}

StatusOr<std::string> ChatTemplate::RenderChatml(std::span<const ChatMessage> messages,
                                                 bool gen) const {
  std::string out;
  size_t first = 0;
  if (messages[0].role == "system") {
    absl::StrAppend(&out, "<|im_start|>system\n", messages[0].content, "<|im_end|>\n");
    first = 1;
  } else if (!default_system_.empty()) {
    absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
  }
  // Reasoning of earlier turns is dropped; only assistant turns after the
  // last real user query keep their <think> block.
  size_t last_query = messages.size() - 1;
  for (size_t i = messages.size(); i-- > 0;) {
    const std::string& c = messages[i].content;
    if (messages[i].role == "user" &&
        !(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))) {
      last_query = i;
      break;
    }
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == messages.size();
    if (m.role == "user" || m.role == "system") {
      absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      std::string_view reasoning;
      const size_t end_think = content.rfind("</think>");
      if (reasoning_blocks_ && end_think != std::string_view::npos) {
        const std::string_view all = m.content;
        content = TrimNewlinesStart(all.substr(end_think + 8));
        std::string_view before = TrimNewlinesEnd(all.substr(0, all.find("</think>")));
        const size_t open = before.rfind("<think>");
        if (open != std::string_view::npos) before = before.substr(open + 7);
        reasoning = TrimNewlinesStart(before);
      }
      out += "<|im_start|>assistant\n";
      if (reasoning_blocks_ && i > last_query && (last || !reasoning.empty())) {
        absl::StrAppend(&out, "<think>\n", Av(TrimNewlinesEnd(TrimNewlinesStart(reasoning))),
                        "\n</think>\n\n", Av(TrimNewlinesStart(content)));
      } else {
        out += content;
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      absl::StrAppend(&out, "\n<tool_response>\n", m.content, "\n</tool_response>");
      if (last || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("the chatml chat format has no role '", m.role, "'"));
    }
  }
  if (gen) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace tandem
