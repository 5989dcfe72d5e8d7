// Chat prompts equal the reference apply_chat_template on multi-turn
// conversations with a system message, for every family; detection and the
// errors that name the override.
#include <string>
#include <vector>

#include "coordinator/chat_template.h"
#include "coordinator/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/oracle.h"

namespace tandem {
namespace {

using json = nlohmann::json;
using testing::OracleDir;
using testing::OracleInstalled;
using testing::OracleModelDir;
using testing::ReadFileOrEmpty;
using testing::RunOracle;
using testing::SourceDir;

std::string ConversationsPath() {
  return (SourceDir() / "tests" / "coordinator" / "chat_conversations.json").string();
}

std::vector<std::vector<ChatMessage>> Conversations() {
  std::vector<std::vector<ChatMessage>> out;
  for (const json& conv : json::parse(ReadFileOrEmpty(ConversationsPath()))) {
    std::vector<ChatMessage> messages;
    for (const json& m : conv) messages.push_back({m["role"], m["content"]});
    out.push_back(std::move(messages));
  }
  return out;
}

// Compares `chat` with the reference rendering `template_arg` ("model" or a
// .jinja file under tests/oracle/templates) with `model`'s special tokens.
void ExpectMatchesReference(const ChatTemplate& chat, const std::string& model,
                            const std::string& template_arg) {
  const std::string out = RunOracle(
      "chat_reference.js", model + " '" + template_arg + "' '" + ConversationsPath() + "'");
  ASSERT_FALSE(out.empty());
  const json reference = json::parse(out);
  const auto conversations = Conversations();
  ASSERT_EQ(reference.size(), conversations.size());
  for (size_t i = 0; i < conversations.size(); ++i) {
    for (int gen = 0; gen < 2; ++gen) {
      auto rendered = chat.Render(conversations[i], gen == 0);
      ASSERT_TRUE(rendered.ok()) << rendered.status();
      EXPECT_EQ(*rendered, reference[i][gen].get<std::string>())
          << chat.name() << " conversation " << i << " generation prompt " << (gen == 0);
    }
  }
}

std::string TemplateFile(const std::string& name) {
  return (OracleDir() / "templates" / (name + ".jinja")).string();
}

TEST(ChatTemplateTest, Llama3DetectedFromModelMatchesReference) {
  ASSERT_TRUE(OracleInstalled("llama3"));
  auto tokenizer = Tokenizer::Load(OracleModelDir("llama3"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto chat = ChatTemplate::ForTokenizer(**tokenizer, "");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->family(), ChatTemplateFamily::kLlama3);
  ExpectMatchesReference(*chat, "llama3", "model");
}

TEST(ChatTemplateTest, Llama2MatchesReference) {
  ASSERT_TRUE(OracleInstalled("llama2"));
  auto tokenizer = Tokenizer::Load(OracleModelDir("llama2"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(ChatTemplate::Detect(ReadFileOrEmpty(TemplateFile("llama2"))),
            ChatTemplateFamily::kLlama2);
  auto chat = ChatTemplate::ForTokenizer(**tokenizer, "llama2");
  ASSERT_TRUE(chat.ok()) << chat.status();
  ExpectMatchesReference(*chat, "llama2", TemplateFile("llama2"));
}

TEST(ChatTemplateTest, MistralMatchesReference) {
  ASSERT_TRUE(OracleInstalled("llama2"));
  auto tokenizer = Tokenizer::Load(OracleModelDir("llama2"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(ChatTemplate::Detect(ReadFileOrEmpty(TemplateFile("mistral"))),
            ChatTemplateFamily::kMistral);
  auto chat = ChatTemplate::ForTokenizer(**tokenizer, "mistral");
  ASSERT_TRUE(chat.ok()) << chat.status();
  ExpectMatchesReference(*chat, "llama2", TemplateFile("mistral"));
}

TEST(ChatTemplateTest, ChatmlMatchesReference) {
  ASSERT_TRUE(OracleInstalled("qwen3"));
  EXPECT_EQ(ChatTemplate::Detect(ReadFileOrEmpty(TemplateFile("chatml"))),
            ChatTemplateFamily::kChatml);
  ExpectMatchesReference(ChatTemplate(ChatTemplateFamily::kChatml, "", ""), "qwen3",
                         TemplateFile("chatml"));
}

TEST(ChatTemplateTest, Qwen3TemplateIsDetectedWithReasoningBlocks) {
  ASSERT_TRUE(OracleInstalled("qwen3"));
  auto tokenizer = Tokenizer::Load(OracleModelDir("qwen3"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto chat = ChatTemplate::ForTokenizer(**tokenizer, "");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->family(), ChatTemplateFamily::kChatml);
  // Earlier turns lose their reasoning; the final assistant turn after the
  // last user query keeps it (the Qwen3 template's rules).
  const std::vector<ChatMessage> messages = {
      {"user", "a"}, {"assistant", "<think>\nx\n</think>\n\nb"}, {"user", "c"},
      {"assistant", "<think>y</think>d"}};
  auto rendered = chat->Render(messages, false);
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  EXPECT_EQ(*rendered,
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
            "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n<think>\ny\n</think>\n\n"
            "d<|im_end|>\n");
}

TEST(ChatTemplateTest, MissingTemplateNamesTheOverride) {
  ASSERT_TRUE(OracleInstalled("llama2"));
  auto tokenizer = Tokenizer::Load(OracleModelDir("llama2"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto chat = ChatTemplate::ForTokenizer(**tokenizer, "");
  ASSERT_FALSE(chat.ok());
  EXPECT_NE(chat.status().message().find("--chat-template"), std::string::npos);
  EXPECT_NE(chat.status().message().find("chat_template"), std::string::npos);
  auto unknown = ChatTemplate::ForTokenizer(**tokenizer, "vicuna");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("--chat-template"), std::string::npos);
}

TEST(ChatTemplateTest, UnknownTemplateTextIsReported) {
  EXPECT_FALSE(ChatTemplate::Detect("{{ messages[0]['content'] }}").has_value());
}

TEST(ChatTemplateTest, RolesMustAlternateForLlama2) {
  ChatTemplate chat(ChatTemplateFamily::kLlama2, "<s>", "</s>");
  const std::vector<ChatMessage> messages = {{"user", "a"}, {"user", "b"}};
  auto rendered = chat.Render(messages, true);
  ASSERT_FALSE(rendered.ok());
  EXPECT_NE(rendered.status().message().find("alternate"), std::string::npos);
}

}  // namespace
}  // namespace tandem
