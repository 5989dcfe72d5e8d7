#include "coordinator/tokenizer.h"

#include <algorithm>
#include <array>
#include <deque>
#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_replace.h"
#include "coordinator/bpe_model.h"
#include "coordinator/regex_splitter.h"
#include "coordinator/unicode_nfc.h"
#include "coordinator/utf8.h"
#include "core/check.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

// Debian's Abseil has its own string_view type.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

using json = nlohmann::json;

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // ▁ U+2581
// GPT-2's split, used by a ByteLevel pre-tokenizer with use_regex.
constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// GPT-2's reversible byte <-> printable character map.
struct ByteLevelMap {
  std::array<std::string, 256> byte_to_text;
  absl::flat_hash_map<char32_t, uint8_t> char_to_byte;
  ByteLevelMap() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? b : 256 + extra++;
      AppendUtf8(cp, &byte_to_text[b]);
      char_to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteLevelMap& ByteLevel() {
  static const ByteLevelMap* map = new ByteLevelMap;
  return *map;
}

Status Unsupported(std::string_view source, std::string_view what, const json& node) {
  return absl::InvalidArgumentError(absl::StrCat(Av(source), ": unsupported ", Av(what), ": ",
                                                 node.dump().substr(0, 200)));
}

std::string TokenString(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  absl::flat_hash_map<std::string, int32_t> token_to_id;
  std::vector<bool> is_special;
  std::vector<bool> is_added;

  // Added tokens, matched longest-first at each position.
  struct AddedToken {
    std::string content;
    int32_t id;
    bool lstrip, rstrip;
  };
  std::vector<AddedToken> added;                          // longest first
  std::array<std::vector<int>, 256> added_by_first_byte;  // indices into `added`

  struct NormStep {
    enum Kind { kNfc, kPrepend, kReplace } kind;
    std::string a, b;
  };
  std::vector<NormStep> normalizer;

  struct PreStep {
    enum Kind { kSplit, kMetaspace, kByteLevel } kind;
    std::unique_ptr<RegexSplitter> regex;
    enum Behavior { kIsolated, kRemoved, kInvert } behavior = kIsolated;
    std::string replacement;
    bool prepend_always = false, prepend_first = false, split = false;
    bool add_prefix_space = false;
  };
  std::vector<PreStep> pre_tokenizer;
  bool byte_level = false;  // pieces enter BPE as bytes through the byte map

  BpeModel bpe;
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  std::optional<int32_t> unk_id;
  std::array<int32_t, 256> byte_ids;  // byte-level symbol or <0xNN> id per byte, -1 if none

  // Post-processor template for a single sequence: -1 marks the text.
  std::vector<int32_t> post_template{-1};

  struct DecStep {
    enum Kind { kReplace, kByteFallback, kMetaspace, kByteLevel } kind;
    std::string a, b;
    bool strip_first = false;
  };
  std::vector<DecStep> decoder;
  bool has_decoder = true;
  bool byte_level_decoder = false;

  Status ParseNormalizer(const json& n);
  Status ParsePreTokenizer(const json& p);
  Status ParseDecoder(const json& d, bool* fused, Tokenizer* t);
  Status ParsePostProcessor(const json& p);

  void SplitAddedTokens(std::string_view text,
                        std::vector<std::pair<std::string_view, int32_t>>* sections) const;
  std::string Normalize(std::string_view text) const;
  void PreTokenize(std::string_view text, int section_index, std::deque<std::string>* storage,
                   std::vector<std::string_view>* pieces) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
};

Status Tokenizer::Impl::ParseNormalizer(const json& n) {
  if (n.is_null()) return absl::OkStatus();
  const std::string type = n.value("type", "");
  if (type == "Sequence") {
    for (const json& c : n.at("normalizers")) RETURN_IF_ERROR(ParseNormalizer(c));
  } else if (type == "NFC") {
    normalizer.push_back({NormStep::kNfc, "", ""});
  } else if (type == "Prepend") {
    normalizer.push_back({NormStep::kPrepend, n.at("prepend").get<std::string>(), ""});
  } else if (type == "Replace" && n.at("pattern").contains("String")) {
    normalizer.push_back({NormStep::kReplace, n["pattern"]["String"].get<std::string>(),
                          n.at("content").get<std::string>()});
  } else {
    return Unsupported(source, "normalizer", n);
  }
  return absl::OkStatus();
}

Status Tokenizer::Impl::ParsePreTokenizer(const json& p) {
  if (p.is_null()) return absl::OkStatus();
  const std::string type = p.value("type", "");
  if (byte_level) {
    return Unsupported(source, "pre-tokenizer after ByteLevel", p);
  }
  if (type == "Sequence") {
    for (const json& c : p.at("pretokenizers")) RETURN_IF_ERROR(ParsePreTokenizer(c));
    return absl::OkStatus();
  }
  PreStep step;
  if (type == "Split") {
    step.kind = PreStep::kSplit;
    if (!p.at("pattern").contains("Regex")) return Unsupported(source, "Split pattern", p);
    ASSIGN_OR_RETURN(step.regex, RegexSplitter::Compile(p["pattern"]["Regex"].get<std::string>()));
    const std::string behavior = p.value("behavior", "Isolated");
    if (p.value("invert", false)) {
      step.behavior = PreStep::kInvert;
    } else if (behavior == "Isolated") {
      step.behavior = PreStep::kIsolated;
    } else if (behavior == "Removed") {
      step.behavior = PreStep::kRemoved;
    } else {
      return Unsupported(source, "Split behavior", p);
    }
  } else if (type == "ByteLevel") {
    step.kind = PreStep::kByteLevel;
    step.add_prefix_space = p.value("add_prefix_space", false);
    if (p.value("use_regex", true)) {
      ASSIGN_OR_RETURN(step.regex, RegexSplitter::Compile(kGpt2Pattern));
    }
    byte_level = true;
  } else if (type == "Metaspace") {
    step.kind = PreStep::kMetaspace;
    step.replacement = p.value("replacement", std::string(kMetaspace));
    const std::string scheme = p.value("prepend_scheme", "");
    if (scheme.empty()) {
      step.prepend_always = p.value("add_prefix_space", true);
    } else {
      step.prepend_always = scheme == "always";
      step.prepend_first = scheme == "first";
    }
    step.split = p.value("split", true);
  } else {
    return Unsupported(source, "pre-tokenizer", p);
  }
  pre_tokenizer.push_back(std::move(step));
  return absl::OkStatus();
}

Status Tokenizer::Impl::ParseDecoder(const json& d, bool* fused, Tokenizer* t) {
  const std::string type = d.value("type", "");
  if (type == "Sequence") {
    for (const json& c : d.at("decoders")) RETURN_IF_ERROR(ParseDecoder(c, fused, t));
  } else if (type == "ByteLevel") {
    decoder.push_back({DecStep::kByteLevel, "", "", false});
    byte_level_decoder = true;
  } else if (type == "Replace" && d.at("pattern").contains("String")) {
    decoder.push_back({DecStep::kReplace, d["pattern"]["String"].get<std::string>(),
                       d.at("content").get<std::string>(), false});
  } else if (type == "ByteFallback") {
    decoder.push_back({DecStep::kByteFallback, "", "", false});
  } else if (type == "Fuse") {
    *fused = true;
  } else if (type == "Strip") {
    const std::string content = d.value("content", " ");
    if (!*fused || content.size() != 1 || d.value("stop", 0) != 0) {
      return Unsupported(source, "Strip decoder (only a leading strip after Fuse)", d);
    }
    t->strip_char_ = content[0];
    t->strip_count_ = d.value("start", 0);
  } else if (type == "Metaspace") {
    const std::string scheme = d.value("prepend_scheme", "");
    const bool strip = scheme.empty() ? d.value("add_prefix_space", true) : scheme != "never";
    decoder.push_back(
        {DecStep::kMetaspace, d.value("replacement", std::string(kMetaspace)), " ", strip});
  } else {
    return Unsupported(source, "decoder", d);
  }
  return absl::OkStatus();
}

Status Tokenizer::Impl::ParsePostProcessor(const json& p) {
  if (p.is_null()) return absl::OkStatus();
  const std::string type = p.value("type", "");
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "Sequence") {
    for (const json& c : p.at("processors")) RETURN_IF_ERROR(ParsePostProcessor(c));
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") return Unsupported(source, "post-processor", p);
  post_template.clear();
  const json& specials = p.value("special_tokens", json::object());
  for (const json& item : p.at("single")) {
    if (item.contains("Sequence")) {
      post_template.push_back(-1);
    } else if (item.contains("SpecialToken")) {
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      if (!specials.contains(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": post-processor names special token '", name,
                         "' that its special_tokens do not define"));
      }
      for (const json& id : specials[name].at("ids")) post_template.push_back(id.get<int32_t>());
    } else {
      return Unsupported(source, "post-processor template item", item);
    }
  }
  return absl::OkStatus();
}

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::filesystem::path& model_dir) {
  const auto tokenizer_path = model_dir / "tokenizer.json";
  ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFile(tokenizer_path));
  std::string config_json;
  if (std::filesystem::exists(model_dir / "tokenizer_config.json")) {
    ASSIGN_OR_RETURN(config_json, ReadFile(model_dir / "tokenizer_config.json"));
  }
  ASSIGN_OR_RETURN(auto tokenizer, FromJson(tokenizer_json, config_json, tokenizer_path.string()));
  const auto generation_path = model_dir / "generation_config.json";
  if (std::filesystem::exists(generation_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(generation_path));
    const json g = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (g.is_discarded()) {
      return absl::InvalidArgumentError(
          absl::StrCat(generation_path.string(), ": not valid JSON"));
    }
    const json eos = g.value("eos_token_id", json());
    for (const json& e : eos.is_array() ? eos : json::array({eos})) {
      if (!e.is_number_integer()) continue;
      const int32_t id = e.get<int32_t>();
      if (tokenizer->IsValidId(id) && std::find(tokenizer->eos_ids_.begin(),
                                                tokenizer->eos_ids_.end(),
                                                id) == tokenizer->eos_ids_.end()) {
        tokenizer->eos_ids_.push_back(id);
      }
    }
  }
  return tokenizer;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                         std::string_view tokenizer_config_json,
                                                         std::string_view source_name) {
  std::unique_ptr<Tokenizer> t(new Tokenizer);
  Impl& m = *t->impl_;
  m.source = std::string(source_name);
  const json tj = json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (tj.is_discarded() || !tj.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(Av(source_name), ": not valid JSON"));
  }
  json config = json::object();
  if (!tokenizer_config_json.empty()) {
    config = json::parse(tokenizer_config_json, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Av(source_name), ": tokenizer_config.json is not a valid JSON object"));
    }
  }
  try {
    const json& model = tj.at("model");
    if (model.value("type", "BPE") != "BPE" || !model.contains("merges")) {
      return Unsupported(source_name, "model (only BPE)", json(model.value("type", "?")));
    }
    // Vocabulary and added tokens.
    int32_t max_id = -1;
    for (const auto& [token, id] : model.at("vocab").items()) {
      const int32_t i = id.get<int32_t>();
      if (i < 0) return absl::InvalidArgumentError(absl::StrCat(Av(source_name), ": negative id"));
      m.token_to_id[token] = i;
      max_id = std::max(max_id, i);
    }
    std::vector<Impl::AddedToken> added;
    std::vector<std::pair<int32_t, bool>> added_special;
    for (const json& a : tj.value("added_tokens", json::array())) {
      Impl::AddedToken token{a.at("content").get<std::string>(), a.at("id").get<int32_t>(),
                             a.value("lstrip", false), a.value("rstrip", false)};
      if (token.id < 0 || token.content.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(Av(source_name), ": added token with a bad id or empty content"));
      }
      m.token_to_id[token.content] = token.id;
      max_id = std::max(max_id, token.id);
      added_special.emplace_back(token.id, a.value("special", false));
      added.push_back(std::move(token));
    }
    t->id_to_token_.assign(max_id + 1, "");
    for (const auto& [token, id] : m.token_to_id) t->id_to_token_[id] = token;
    m.is_special.assign(max_id + 1, false);
    m.is_added.assign(max_id + 1, false);
    for (const auto& [id, special] : added_special) {
      m.is_added[id] = true;
      if (special) m.is_special[id] = true;
    }
    for (const json& s : config.value("additional_special_tokens", json::array())) {
      auto it = m.token_to_id.find(TokenString(s));
      if (it != m.token_to_id.end()) m.is_special[it->second] = true;
    }
    std::stable_sort(added.begin(), added.end(), [](const auto& a, const auto& b) {
      return a.content.size() > b.content.size();
    });
    m.added = std::move(added);
    for (size_t i = 0; i < m.added.size(); ++i) {
      m.added_by_first_byte[static_cast<uint8_t>(m.added[i].content[0])].push_back(
          static_cast<int>(i));
    }

    // Merges: "a b" strings or [a, b] pairs; rank is the position (a later
    // duplicate wins, as in the reference).
    const json& merges = model.at("merges");
    int32_t rank = 0;
    for (const json& merge : merges) {
      std::string a, b;
      if (merge.is_string()) {
        const std::string s = merge.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat(Av(source_name), ": merge '", s, "' has no space"));
        }
        a = s.substr(0, space);
        b = s.substr(space + 1);
      } else {
        a = merge.at(0).get<std::string>();
        b = merge.at(1).get<std::string>();
      }
      auto ia = m.token_to_id.find(a), ib = m.token_to_id.find(b),
           im = m.token_to_id.find(a + b);
      if (ia != m.token_to_id.end() && ib != m.token_to_id.end() && im != m.token_to_id.end()) {
        m.bpe.AddMerge(ia->second, ib->second, rank, im->second);
      }
      ++rank;
    }
    m.ignore_merges = model.value("ignore_merges", false);
    m.byte_fallback = model.value("byte_fallback", false);
    m.fuse_unk = model.value("fuse_unk", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      auto it = m.token_to_id.find(model["unk_token"].get<std::string>());
      if (it != m.token_to_id.end()) m.unk_id = it->second;
    }

    RETURN_IF_ERROR(m.ParseNormalizer(tj.value("normalizer", json())));
    RETURN_IF_ERROR(m.ParsePreTokenizer(tj.value("pre_tokenizer", json())));
    RETURN_IF_ERROR(m.ParsePostProcessor(tj.value("post_processor", json())));
    const json decoder = tj.value("decoder", json());
    if (decoder.is_null()) {
      m.has_decoder = false;
    } else {
      bool fused = false;
      RETURN_IF_ERROR(m.ParseDecoder(decoder, &fused, t.get()));
    }
    for (int b = 0; b < 256; ++b) {
      std::string symbol;
      if (m.byte_level) {
        symbol = ByteLevel().byte_to_text[b];
      } else {
        static constexpr char kHex[] = "0123456789ABCDEF";
        symbol = std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
      }
      auto it = m.token_to_id.find(symbol);
      m.byte_ids[b] = it == m.token_to_id.end() ? -1 : it->second;
    }

    // tokenizer_config.json: BOS/EOS, chat template, decode clean-up.
    t->bos_token_ = TokenString(config.value("bos_token", json()));
    t->eos_token_ = TokenString(config.value("eos_token", json()));
    if (!t->bos_token_.empty()) t->bos_id_ = t->TokenId(t->bos_token_);
    if (auto eos = t->TokenId(t->eos_token_)) t->eos_ids_.push_back(*eos);
    const json tmpl = config.value("chat_template", json());
    if (tmpl.is_string()) {
      t->chat_template_ = tmpl.get<std::string>();
    } else if (tmpl.is_array()) {
      for (const json& named : tmpl) {
        if (named.value("name", "") == "default") t->chat_template_ = named.value("template", "");
      }
    }
    for (std::string_view end_of_turn : {"<|eot_id|>", "<|im_end|>", "<|eom_id|>"}) {
      auto id = t->TokenId(end_of_turn);
      if (id && t->chat_template_.find(end_of_turn) != std::string::npos &&
          std::find(t->eos_ids_.begin(), t->eos_ids_.end(), *id) == t->eos_ids_.end()) {
        t->eos_ids_.push_back(*id);
      }
    }
    t->clean_up_spaces_ = config.value("clean_up_tokenization_spaces", true);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(Av(source_name), ": malformed tokenizer description: ", e.what()));
  }
  return t;
}

bool Tokenizer::IsSpecial(int32_t id) const { return IsValidId(id) && impl_->is_special[id]; }

std::string_view Tokenizer::TokenText(int32_t id) const {
  return IsValidId(id) ? std::string_view(id_to_token_[id]) : std::string_view();
}

std::optional<int32_t> Tokenizer::TokenId(std::string_view token_text) const {
  auto it = impl_->token_to_id.find(Av(token_text));
  if (it == impl_->token_to_id.end()) return std::nullopt;
  return it->second;
}

void Tokenizer::Impl::SplitAddedTokens(
    std::string_view text, std::vector<std::pair<std::string_view, int32_t>>* sections) const {
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const std::vector<int>& candidates = added_by_first_byte[static_cast<uint8_t>(text[i])];
    int match = -1;
    for (int c : candidates) {  // longest first
      if (text.substr(i).starts_with(added[c].content)) {
        match = c;
        break;
      }
    }
    if (match < 0) {
      ++i;
      continue;
    }
    if (i > start) sections->emplace_back(text.substr(start, i - start), -1);
    sections->emplace_back(text.substr(i, added[match].content.size()), match);
    i += added[match].content.size();
    start = i;
  }
  if (start < text.size()) sections->emplace_back(text.substr(start), -1);
  // lstrip / rstrip trim the whitespace of the neighbouring text.
  for (size_t s = 0; s < sections->size(); ++s) {
    const int a = (*sections)[s].second;
    if (a < 0) continue;
    if (added[a].lstrip && s > 0 && (*sections)[s - 1].second < 0) {
      (*sections)[s - 1].first = TrimJsWhitespaceEnd((*sections)[s - 1].first);
    }
    if (added[a].rstrip && s + 1 < sections->size() && (*sections)[s + 1].second < 0) {
      (*sections)[s + 1].first = TrimJsWhitespaceStart((*sections)[s + 1].first);
    }
  }
}

std::string Tokenizer::Impl::Normalize(std::string_view text) const {
  std::string s(text);
  for (const NormStep& step : normalizer) {
    switch (step.kind) {
      case NormStep::kNfc:
        s = NormalizeNfc(s);
        break;
      case NormStep::kPrepend:
        s = step.a + s;
        break;
      case NormStep::kReplace:
        s = absl::StrReplaceAll(s, {{step.a, step.b}});
        break;
    }
  }
  return s;
}

void Tokenizer::Impl::PreTokenize(std::string_view text, int section_index,
                                  std::deque<std::string>* storage,
                                  std::vector<std::string_view>* pieces) const {
  pieces->push_back(text);
  std::vector<std::string_view> next;
  std::vector<RegexSplitter::Span> spans;
  for (const PreStep& step : pre_tokenizer) {
    next.clear();
    for (std::string_view piece : *pieces) {
      switch (step.kind) {
        case PreStep::kSplit: {
          spans.clear();
          step.regex->FindAll(piece, &spans);
          size_t prev = 0;
          for (const auto& span : spans) {
            if (step.behavior != PreStep::kInvert && span.begin > prev) {
              next.push_back(piece.substr(prev, span.begin - prev));
            }
            if (step.behavior != PreStep::kRemoved) {
              next.push_back(piece.substr(span.begin, span.end - span.begin));
            }
            prev = span.end;
          }
          if (step.behavior != PreStep::kInvert && prev < piece.size()) {
            next.push_back(piece.substr(prev));
          }
          break;
        }
        case PreStep::kByteLevel: {
          std::string_view p = piece;
          if (step.add_prefix_space && !p.starts_with(' ')) {
            storage->push_back(absl::StrCat(" ", Av(p)));
            p = storage->back();
          }
          if (step.regex == nullptr) {
            next.push_back(p);
            break;
          }
          spans.clear();
          step.regex->FindAll(p, &spans);
          for (const auto& span : spans) next.push_back(p.substr(span.begin, span.end - span.begin));
          break;
        }
        case PreStep::kMetaspace: {
          std::string s = absl::StrReplaceAll(Av(piece), {{" ", step.replacement}});
          if (!s.starts_with(step.replacement) &&
              (step.prepend_always || (step.prepend_first && section_index == 0))) {
            s = step.replacement + s;
          }
          storage->push_back(std::move(s));
          std::string_view p = storage->back();
          if (!step.split) {
            next.push_back(p);
            break;
          }
          // Each piece starts at a replacement character.
          size_t start = 0;
          for (size_t pos = p.find(step.replacement, 1); pos != std::string_view::npos;
               pos = p.find(step.replacement, pos + step.replacement.size())) {
            if (pos > start) next.push_back(p.substr(start, pos - start));
            start = pos;
          }
          if (start < p.size()) next.push_back(p.substr(start));
          break;
        }
      }
    }
    pieces->swap(next);
  }
}

void Tokenizer::Impl::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (bpe.CacheLookup(word, ids)) return;
  std::vector<int32_t> symbols;
  if (byte_level) {
    if (ignore_merges) {
      std::string mapped;
      for (char c : word) mapped += ByteLevel().byte_to_text[static_cast<uint8_t>(c)];
      auto it = token_to_id.find(mapped);
      if (it != token_to_id.end()) {
        ids->push_back(it->second);
        bpe.CacheStore(word, std::span<const int32_t>(&it->second, 1));
        return;
      }
    }
    symbols.reserve(word.size());
    for (char c : word) {
      const int32_t id = byte_ids[static_cast<uint8_t>(c)];
      if (id >= 0) {
        symbols.push_back(id);
      } else if (unk_id) {
        symbols.push_back(*unk_id);
      }
    }
  } else {
    if (ignore_merges) {
      auto it = token_to_id.find(Av(word));
      if (it != token_to_id.end()) {
        ids->push_back(it->second);
        return;
      }
    }
    bool last_unk = false;
    for (size_t pos = 0; pos < word.size();) {
      const size_t begin = pos;
      NextCodePoint(word, &pos);
      const std::string_view ch = word.substr(begin, pos - begin);
      auto it = token_to_id.find(Av(ch));
      if (it != token_to_id.end()) {
        symbols.push_back(it->second);
        last_unk = false;
        continue;
      }
      bool all_bytes = byte_fallback;
      for (char c : ch) all_bytes = all_bytes && byte_ids[static_cast<uint8_t>(c)] >= 0;
      if (all_bytes) {
        for (char c : ch) symbols.push_back(byte_ids[static_cast<uint8_t>(c)]);
        last_unk = false;
      } else if (unk_id && !(fuse_unk && last_unk)) {
        symbols.push_back(*unk_id);
        last_unk = true;
      }
    }
  }
  bpe.MergeSymbols(&symbols);
  bpe.CacheStore(word, symbols);
  ids->insert(ids->end(), symbols.begin(), symbols.end());
}

std::vector<int32_t> Tokenizer::Encode(std::string_view input, bool add_special) const {
  const Impl& m = *impl_;
  std::string repaired;
  std::string_view text = input;
  if (!IsValidUtf8(input)) {
    repaired = SanitizeUtf8(input);
    text = repaired;
  }
  std::vector<std::pair<std::string_view, int32_t>> sections;
  m.SplitAddedTokens(text, &sections);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::deque<std::string> storage;
  std::vector<std::string_view> pieces;
  for (size_t s = 0; s < sections.size(); ++s) {
    const auto& [section, added] = sections[s];
    if (added >= 0) {
      ids.push_back(m.added[added].id);
      continue;
    }
    if (section.empty()) continue;
    std::string_view normalized = section;
    if (!m.normalizer.empty()) {
      storage.push_back(m.Normalize(section));
      normalized = storage.back();
      if (normalized.empty()) continue;
    }
    pieces.clear();
    m.PreTokenize(normalized, static_cast<int>(s), &storage, &pieces);
    for (std::string_view piece : pieces) m.EncodeWord(piece, &ids);
    storage.clear();
  }
  if (!add_special || m.post_template == std::vector<int32_t>{-1}) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + m.post_template.size());
  for (int32_t item : m.post_template) {
    if (item < 0) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.push_back(item);
    }
  }
  return out;
}

bool Tokenizer::Skips(int32_t id, bool skip_special) const {
  return skip_special && impl_->is_special[id];
}

void Tokenizer::AppendTokenBytes(int32_t id, int64_t index, std::string* out) const {
  CHECK(IsValidId(id));
  const Impl& m = *impl_;
  const std::string& token = id_to_token_[id];
  if (!m.has_decoder) {
    if (index > 0) out->push_back(' ');
    out->append(token);
    return;
  }
  if (m.byte_level_decoder && m.is_added[id]) {
    out->append(token);
    return;
  }
  std::string text = token;
  for (const Impl::DecStep& step : m.decoder) {
    switch (step.kind) {
      case Impl::DecStep::kReplace:
        text = absl::StrReplaceAll(text, {{step.a, step.b}});
        break;
      case Impl::DecStep::kByteFallback:
        if (text.size() == 6 && text.starts_with("<0x") && text[5] == '>' &&
            std::isxdigit(static_cast<unsigned char>(text[3])) &&
            std::isxdigit(static_cast<unsigned char>(text[4]))) {
          text = std::string(1, static_cast<char>(std::stoi(text.substr(3, 2), nullptr, 16)));
        }
        break;
      case Impl::DecStep::kMetaspace:
        text = absl::StrReplaceAll(text, {{step.a, step.b}});
        if (step.strip_first && index == 0 && text.starts_with(' ')) text.erase(0, 1);
        break;
      case Impl::DecStep::kByteLevel: {
        std::string bytes;
        bytes.reserve(text.size());
        const auto& map = ByteLevel().char_to_byte;
        for (size_t pos = 0; pos < text.size();) {
          const size_t begin = pos;
          const char32_t cp = NextCodePoint(text, &pos);
          auto it = map.find(cp);
          if (it != map.end()) {
            bytes.push_back(static_cast<char>(it->second));
          } else {
            bytes.append(text, begin, pos - begin);
          }
        }
        text.swap(bytes);
        break;
      }
    }
  }
  out->append(text);
}

std::string Tokenizer::CleanUpSpaces(std::string_view text) {
  // Sequential global replacements, in the reference's order.
  std::string s(text);
  for (const auto& [from, to] : std::initializer_list<std::pair<std::string_view, std::string_view>>{
           {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
           {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}}) {
    if (s.find(from) != std::string::npos) s = absl::StrReplaceAll(s, {{Av(from), Av(to)}});
  }
  return s;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  int64_t index = 0;
  for (int32_t id : ids) {
    CHECK(IsValidId(id));
    if (Skips(id, skip_special)) continue;
    AppendTokenBytes(id, index++, &bytes);
  }
  std::string text = SanitizeUtf8(bytes);
  size_t cut = 0;
  while (cut < static_cast<size_t>(strip_count_) && cut < text.size() && text[cut] == strip_char_) {
    ++cut;
  }
  text.erase(0, cut);
  return clean_up_spaces_ ? CleanUpSpaces(text) : text;
}

}  // namespace tandem
