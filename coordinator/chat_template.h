#pragma once
// Chat prompts rendered natively for the template families in use, since no
// C++ Jinja engine is available: the family is detected from
// tokenizer_config.json's `chat_template`, or chosen by name (command-line
// `--chat-template`, YAML key `chat_template`).
//
//   llama3   <|start_header_id|>role<|end_header_id|>\n\n text <|eot_id|>
//   llama2   <s>[INST] <<SYS>>\n sys \n<</SYS>>\n\n user [/INST] answer </s>
//   chatml   <|im_start|>role\n text <|im_end|>\n   (Qwen2/2.5/3)
//   mistral  <s> [INST] user [/INST] answer</s>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tandem {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (chatml also "tool")
  std::string content;
};

enum class ChatTemplateFamily { kLlama3, kLlama2, kChatml, kMistral };

class ChatTemplate {
 public:
  // Names accepted by the override: "llama3", "llama2", "chatml", "mistral".
  static std::vector<std::string> FamilyNames();
  static StatusOr<ChatTemplateFamily> ParseFamily(std::string_view name);
  // The family a Jinja template text belongs to, if recognised.
  static std::optional<ChatTemplateFamily> Detect(std::string_view template_text);

  // The template for `tokenizer`: the family named by `override_name` when not
  // empty, otherwise detected from its chat_template. Variants of a family
  // seen in the template text (Qwen's default system prompt and reasoning
  // blocks, a generation prompt that is always added) are honoured.
  static StatusOr<ChatTemplate> ForTokenizer(const Tokenizer& tokenizer,
                                             std::string_view override_name);
  // A family with explicit special-token strings, variants off.
  ChatTemplate(ChatTemplateFamily family, std::string bos_token, std::string eos_token);

  // Renders the conversation. Errors: roles the family cannot express, or
  // turns that do not alternate where the family requires it.
  StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                               bool add_generation_prompt) const;

  ChatTemplateFamily family() const { return family_; }
  std::string_view name() const;

 private:
  StatusOr<std::string> RenderLlama3(std::span<const ChatMessage> m, bool gen) const;
  StatusOr<std::string> RenderLlama2(std::span<const ChatMessage> m) const;
  StatusOr<std::string> RenderMistral(std::span<const ChatMessage> m) const;
  StatusOr<std::string> RenderChatml(std::span<const ChatMessage> m, bool gen) const;

  ChatTemplateFamily family_;
  std::string bos_token_, eos_token_;
  bool always_generation_prompt_ = false;  // llama3 templates without the switch
  std::string default_system_;             // chatml: used when no system message
  bool reasoning_blocks_ = false;          // chatml: Qwen3 <think> handling
};

}  // namespace tandem
