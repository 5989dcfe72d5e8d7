// `tandem tokenize`, `tandem detokenize` and `tandem chat-template`: the
// model's tokenizer and chat format, offline.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "coordinator/chat_template.h"
#include "coordinator/tokenizer.h"
#include "core/cli.h"
#include "core/command.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

using json = nlohmann::json;

std::string IdsToJson(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(ids[i]);
  }
  return out + "]";
}

StatusOr<std::string> ReadAll(std::istream& in) {
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int Fail(const Status& status) { return ReportError("tandem", status); }

struct TokenizeFlags {
  std::string model;
  std::string text;
  bool add_special = false;
  bool jsonl = false;
};

int RunTokenize(const TokenizeFlags& f) {
  auto tokenizer = Tokenizer::Load(f.model);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  if (f.jsonl) {
    // One JSON string per input line, one JSON array per output line.
    std::string line;
    for (int line_no = 1; std::getline(std::cin, line); ++line_no) {
      if (line.empty()) continue;
      const json v = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (v.is_discarded() || !v.is_string()) {
        return Fail(absl::InvalidArgumentError(
            absl::StrCat("stdin line ", line_no, ": expected one JSON string per line")));
      }
      const std::string text = v.get<std::string>();
      std::printf("%s\n", IdsToJson((*tokenizer)->Encode(text, f.add_special)).c_str());
    }
    return 0;
  }
  std::string text = f.text;
  if (text == "-") {
    auto all = ReadAll(std::cin);
    if (!all.ok()) return Fail(all.status());
    text = *all;
  }
  std::printf("%s\n", IdsToJson((*tokenizer)->Encode(text, f.add_special)).c_str());
  return 0;
}

// Parses "1,2,3" (also with spaces or surrounding brackets).
StatusOr<std::vector<int32_t>> ParseIds(const std::string& text, const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  std::string token;
  auto flush = [&]() -> Status {
    if (token.empty()) return absl::OkStatus();
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != token.size()) {
      return absl::InvalidArgumentError(absl::StrCat("'", token, "' is not a token id"));
    }
    if (v < 0 || v >= tokenizer.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", v, " is out of range [0, ",
                                                     tokenizer.vocab_size(), ")"));
    }
    ids.push_back(static_cast<int32_t>(v));
    token.clear();
    return absl::OkStatus();
  };
  for (char c : text) {
    if (c == ',' || c == ' ' || c == '[' || c == ']' || c == '\n' || c == '\t') {
      RETURN_IF_ERROR(flush());
    } else {
      token += c;
    }
  }
  RETURN_IF_ERROR(flush());
  return ids;
}

std::function<int()> SetupTokenize(CLI::App& sub) {
  auto f = std::make_shared<TokenizeFlags>();
  sub.add_option("--model", f->model, "model folder with tokenizer.json")->required();
  sub.add_flag("--add-special", f->add_special, "add BOS/EOS as the post-processor says");
  sub.add_flag("--jsonl", f->jsonl, "read one JSON string per stdin line, print one array per line");
  sub.add_option("text", f->text, "text to tokenize, or - for stdin");
  return [f, &sub]() -> int {
    if (f->jsonl == !f->text.empty()) {
      return Fail(absl::InvalidArgumentError("tokenize needs either TEXT (or -) or --jsonl"));
    }
    (void)sub;
    return RunTokenize(*f);
  };
}

std::function<int()> SetupDetokenize(CLI::App& sub) {
  struct Flags {
    std::string model, ids;
    bool skip_special = false;
  };
  auto f = std::make_shared<Flags>();
  sub.add_option("--model", f->model, "model folder with tokenizer.json")->required();
  sub.add_flag("--skip-special", f->skip_special, "leave special tokens out");
  sub.add_option("ids", f->ids, "comma-separated token ids, e.g. 1,2,3")->required();
  return [f]() -> int {
    auto tokenizer = Tokenizer::Load(f->model);
    if (!tokenizer.ok()) return Fail(tokenizer.status());
    auto ids = ParseIds(f->ids, **tokenizer);
    if (!ids.ok()) return Fail(ids.status());
    std::printf("%s\n", (*tokenizer)->Decode(*ids, f->skip_special).c_str());
    return 0;
  };
}

// Reads [{"role": ..., "content": ...}, ...] (or {"messages": [...]}).
StatusOr<std::vector<ChatMessage>> ReadMessages(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  ASSIGN_OR_RETURN(std::string text, ReadAll(in));
  json v = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (v.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  if (v.is_object() && v.contains("messages")) v = v["messages"];
  if (!v.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected an array of messages"));
  }
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& m = v[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
        !m.contains("content") || !m["content"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": message ", i, " needs string fields \"role\" and \"content\""));
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

std::function<int()> SetupChatTemplate(CLI::App& sub) {
  struct Flags {
    std::string model, messages, template_name;
    bool no_generation_prompt = false;
  };
  auto f = std::make_shared<Flags>();
  sub.add_option("--model", f->model, "model folder with tokenizer_config.json")->required();
  sub.add_option("--messages", f->messages, "JSON file: [{\"role\":..., \"content\":...}]")
      ->required();
  sub.add_option("--template,--chat-template", f->template_name,
                 "chat format instead of the detected one: llama3, llama2, chatml, mistral");
  sub.add_flag("--no-generation-prompt", f->no_generation_prompt,
               "do not open an assistant turn at the end");
  return [f]() -> int {
    auto tokenizer = Tokenizer::Load(f->model);
    if (!tokenizer.ok()) return Fail(tokenizer.status());
    auto messages = ReadMessages(f->messages);
    if (!messages.ok()) return Fail(messages.status());
    auto chat = ChatTemplate::ForTokenizer(**tokenizer, f->template_name);
    if (!chat.ok()) return Fail(chat.status());
    auto prompt = chat->Render(*messages, !f->no_generation_prompt);
    if (!prompt.ok()) return Fail(prompt.status());
    std::fwrite(prompt->data(), 1, prompt->size(), stdout);
    return 0;
  };
}

const bool kRegistered =
    RegisterCommand({.name = "tokenize",
                     .summary = "print the token ids of a text as a JSON array",
                     .setup = &SetupTokenize}) &&
    RegisterCommand({.name = "detokenize",
                     .summary = "print the text of comma-separated token ids",
                     .setup = &SetupDetokenize}) &&
    RegisterCommand({.name = "chat-template",
                     .summary = "print the prompt the model's chat format makes of messages",
                     .setup = &SetupChatTemplate});

}  // namespace
}  // namespace tandem
