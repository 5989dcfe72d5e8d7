#pragma once
// Hugging Face tokenizers (tokenizer.json + tokenizer_config.json), encoded and
// decoded the way the reference implementation does:
//   added/special tokens split out first (longest match, lstrip/rstrip),
//   normalizer (NFC, Prepend, Replace, Sequence),
//   pre-tokenizer (Split with a PCRE2 regex, ByteLevel, Metaspace, Sequence),
//   BPE (ranked merges, ignore_merges, byte fallback <0xNN>, unk),
//   post-processor (TemplateProcessing adds BOS/EOS, ByteLevel adds nothing),
//   decoder (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace) and
//   clean_up_tokenization_spaces from tokenizer_config.json.
// Input that is not valid UTF-8 is first repaired with U+FFFD per maximal
// invalid subpart (coordinator/utf8.h), which is what the reference sees when
// the same bytes are decoded into a string.
//
// After Load(), every method is const and thread-safe.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tandem {

class Tokenizer {
 public:
  // Reads `model_dir`/tokenizer.json and, when present, tokenizer_config.json
  // and generation_config.json. Every unsupported component is an error that
  // names the file and the component.
  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::filesystem::path& model_dir);
  // The same from the JSON texts (tokenizer_config may be empty).
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                       std::string_view tokenizer_config_json,
                                                       std::string_view source_name);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Without `add_special`: like encode(text, add_special_tokens=False) (added
  // and special tokens written in the text are still recognised). With it the
  // post-processor's tokens (e.g. BOS) are added.
  std::vector<int32_t> Encode(std::string_view text, bool add_special) const;
  // Ids outside [0, vocab_size()) are a bug of the caller (check with
  // IsValidId first when they come from outside). `skip_special` leaves out
  // special tokens.
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const;

  std::optional<int32_t> bos_id() const { return bos_id_; }
  // Tokens that end a generation: eos_token, generation_config.json's
  // eos_token_id and the end-of-turn token of the chat format when present.
  std::vector<int32_t> eos_ids() const { return eos_ids_; }
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token_.size()); }
  bool IsValidId(int32_t id) const { return id >= 0 && id < vocab_size(); }
  bool IsSpecial(int32_t id) const;
  // The token's string in the vocabulary (byte-level or ▁ form); empty for
  // ids that no token uses.
  std::string_view TokenText(int32_t id) const;
  std::optional<int32_t> TokenId(std::string_view token_text) const;
  // Special token strings from tokenizer_config.json ("" when unset).
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  // tokenizer_config.json's chat_template ("" when absent).
  const std::string& chat_template() const { return chat_template_; }

  // Building blocks of Decode, shared with StreamingDetokenizer: decoding is
  //   text = Cleanup(StripLeading(Lossy(concat(TokenBytes(id_i, i)))))
  // over the ids that are not skipped, i counting those ids from 0.
  bool Skips(int32_t id, bool skip_special) const;
  void AppendTokenBytes(int32_t id, int64_t index, std::string* out) const;
  // The decoder's Strip step: up to `count` leading `ch` are removed from the
  // decoded text (count 0 when there is none).
  char strip_leading_char() const { return strip_char_; }
  int strip_leading_count() const { return strip_count_; }
  bool cleans_up_spaces() const { return clean_up_spaces_; }
  // clean_up_tokenization_spaces: " ." -> "." and friends, as the reference.
  static std::string CleanUpSpaces(std::string_view text);

 private:
  struct Impl;
  Tokenizer();

  std::unique_ptr<Impl> impl_;
  std::vector<std::string> id_to_token_;
  std::optional<int32_t> bos_id_;
  std::vector<int32_t> eos_ids_;
  std::string bos_token_, eos_token_, chat_template_;
  char strip_char_ = ' ';
  int strip_count_ = 0;
  bool clean_up_spaces_ = false;
};

}  // namespace tandem
