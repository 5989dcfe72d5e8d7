// `tandem-bench tokenize --model DIR [--file F]`: encode throughput of one
// core, in MB/s of input text.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "coordinator/tokenizer.h"
#include "core/cli.h"
#include "core/command.h"

namespace tandem {
namespace {

// English prose with numbers and punctuation, used when no --file is given.
constexpr char kDefaultText[] =
    "The committee met on Tuesday to review the quarterly results. Revenue grew by 12.5 percent "
    "to $4,210 million, driven mostly by services; hardware sales were flat. \"We're pleased, "
    "but there's more to do,\" said the chair, who'd joined in 2019. Questions followed about "
    "supply chains, hiring plans and the new office in Denver, which opens next spring.\n";

int RunTokenizeBench(const std::string& model, const std::string& file, double min_seconds) {
  auto tokenizer = Tokenizer::Load(model);
  if (!tokenizer.ok()) return ReportError("tandem-bench", tokenizer.status());
  std::string text;
  if (file.empty()) {
    // Vary the text so the word cache sees a realistic mix, not one paragraph.
    for (int i = 0; i < 2000; ++i) text += std::to_string(i * 7919) + ". " + kDefaultText;
  } else {
    std::ifstream in(file, std::ios::binary);
    if (!in) return ReportError("tandem-bench", absl::NotFoundError("cannot read " + file));
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  // Split into documents of ~4 KB as a server would see them.
  constexpr size_t kDoc = 4096;
  size_t tokens = 0, bytes = 0;
  int passes = 0;
  const auto start = std::chrono::steady_clock::now();
  double seconds = 0;
  while (seconds < min_seconds) {
    for (size_t pos = 0; pos < text.size(); pos += kDoc) {
      tokens += (*tokenizer)->Encode(std::string_view(text).substr(pos, kDoc), false).size();
    }
    bytes += text.size();
    ++passes;
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  std::printf("tokenize: %zu bytes x %d passes, %zu tokens, %.3f s: %.2f MB/s, %.2f M tokens/s "
              "(one core, %.2f bytes/token)\n",
              text.size(), passes, tokens, seconds, bytes / seconds / 1e6, tokens / seconds / 1e6,
              static_cast<double>(bytes) / tokens);
  return 0;
}

std::function<int()> SetupTokenizeBench(CLI::App& sub) {
  struct Flags {
    std::string model, file;
    double seconds = 3.0;
  };
  auto f = std::make_shared<Flags>();
  sub.add_option("--model", f->model, "model folder with tokenizer.json")->required();
  sub.add_option("--file", f->file, "text file to encode (default: built-in English prose)");
  sub.add_option("--seconds", f->seconds, "minimum measuring time")->capture_default_str();
  return [f]() { return RunTokenizeBench(f->model, f->file, f->seconds); };
}

const bool kRegistered = RegisterCommand(
    {.name = "tokenize", .summary = "encode throughput (MB/s) on one core", .setup = &SetupTokenizeBench});

}  // namespace
}  // namespace tandem
