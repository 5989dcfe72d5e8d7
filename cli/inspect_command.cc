// `tandem inspect --model DIR [--layers B:E] [--json]`: prints a model
// folder's spec and the sizes the planner derives from it. With --layers it
// reads every byte of the tensors of layers [B, E) through the mmapped
// checkpoint and reports the bytes read and the process's resident memory
// before and after, which shows that only those tensors were touched.
#include <cstdio>
#include <fstream>
#include <string>

#include "config/value_parsers.h"
#include "core/cli.h"
#include "core/command.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "model/tensor_names.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

struct InspectOptions {
  std::string model;
  std::string layers;
  bool json = false;
};

// Resident set size of this process in bytes (VmRSS of /proc/self/status); 0 if unknown.
uint64_t ResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
    }
  }
  return 0;
}

StatusOr<std::pair<int, int>> ParseLayerRange(const std::string& text, int num_layers) {
  size_t colon = text.find(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("--layers: expected B:E, got '", text, "'"));
  }
  auto begin = ParseInteger(std::string_view(text).substr(0, colon), 0, num_layers - 1);
  auto end = ParseInteger(std::string_view(text).substr(colon + 1), 1, num_layers);
  if (!begin.ok() || !end.ok() || *end <= *begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--layers: expected B:E with 0 <= B < E <= ", num_layers, ", got '", text, "'"));
  }
  return std::make_pair(static_cast<int>(*begin), static_cast<int>(*end));
}

// Reads every byte of `view` (so each of its pages is faulted in).
uint64_t TouchAll(const TensorView& view) {
  const auto* p = static_cast<const uint8_t*>(view.data);
  const size_t n = view.NumBytes();
  uint64_t sum = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    sum += w;
  }
  for (; i < n; ++i) sum += p[i];
  return sum;
}

std::string_view RopeName(RopeScaling::Type t) {
  switch (t) {
    case RopeScaling::Type::kNone:
      return "none";
    case RopeScaling::Type::kLinear:
      return "linear";
    case RopeScaling::Type::kLlama3:
      return "llama3";
  }
  return "none";
}

Status Inspect(const InspectOptions& opt) {
  ASSIGN_OR_RETURN(ModelSpec spec, LoadModelSpec(opt.model));
  ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(opt.model));
  ASSIGN_OR_RETURN(TensorInfo embed, ckpt.Info(kEmbedTokensName));
  const DType wdt = embed.dtype;

  nlohmann::ordered_json j;
  j["model"] = opt.model;
  j["architecture"] = spec.architecture;
  j["fingerprint"] = spec.Fingerprint();
  j["hidden_size"] = spec.hidden_size;
  j["intermediate_size"] = spec.intermediate_size;
  j["num_layers"] = spec.num_layers;
  j["num_heads"] = spec.num_heads;
  j["num_kv_heads"] = spec.num_kv_heads;
  j["head_dim"] = spec.head_dim;
  j["vocab_size"] = spec.vocab_size;
  j["max_position_embeddings"] = spec.max_position_embeddings;
  j["rope_theta"] = spec.rope_theta;
  j["rope_scaling"] = {
      {"type", std::string(RopeName(spec.rope_scaling.type))},
      {"factor", spec.rope_scaling.factor},
      {"low_freq_factor", spec.rope_scaling.low_freq_factor},
      {"high_freq_factor", spec.rope_scaling.high_freq_factor},
      {"original_max_position_embeddings", spec.rope_scaling.original_max_position_embeddings}};
  j["rms_norm_eps"] = spec.rms_norm_eps;
  j["tie_word_embeddings"] = spec.tie_word_embeddings;
  j["attention_bias"] = spec.attention_bias;
  j["torch_dtype"] = std::string(DTypeName(spec.torch_dtype));
  if (spec.bos_token_id) j["bos_token_id"] = *spec.bos_token_id;
  j["eos_token_ids"] = spec.eos_token_ids;
  j["weights"] = {
      {"dtype", std::string(DTypeName(wdt))},
      {"files", ckpt.num_shards()},
      {"tensors", ckpt.Names().size()},
      {"layer_bytes", spec.LayerWeightBytes(wdt)},
      {"embedding_bytes", spec.EmbeddingBytes(wdt)},
      {"head_bytes", spec.HeadBytes(wdt)},
      {"total_bytes", spec.LayerWeightBytes(wdt) * spec.num_layers + spec.EmbeddingBytes(wdt) +
                          spec.HeadBytes(wdt)},
      {"kv_bytes_per_token_per_layer_bf16", spec.KvBytesPerTokenPerLayer(DType::kBF16)},
      {"kv_bytes_per_token_bf16", spec.KvBytesPerTokenPerLayer(DType::kBF16) * spec.num_layers}};

  if (!opt.layers.empty()) {
    ASSIGN_OR_RETURN(auto range, ParseLayerRange(opt.layers, spec.num_layers));
    std::vector<ExpectedTensor> tensors;
    for (int l = range.first; l < range.second; ++l) {
      auto layer = LayerTensors(spec, l);
      tensors.insert(tensors.end(), layer.begin(), layer.end());
    }
    RETURN_IF_ERROR(CheckTensors(ckpt, tensors));
    const uint64_t rss_before = ResidentBytes();
    uint64_t bytes = 0, checksum = 0;
    for (const ExpectedTensor& t : tensors) {
      ASSIGN_OR_RETURN(TensorView view, ckpt.Get(t.name));
      checksum += TouchAll(view);
      bytes += view.NumBytes();
    }
    const uint64_t rss_after = ResidentBytes();
    j["layers_read"] = {
        {"begin", range.first},
        {"end", range.second},
        {"tensors", tensors.size()},
        {"bytes_read", bytes},
        {"expected_bytes", spec.LayerWeightBytes(wdt) * (range.second - range.first)},
        {"rss_before", rss_before},
        {"rss_after", rss_after},
        {"rss_growth", rss_after - rss_before},
        {"open_files", ckpt.num_open_shards()},
        {"checksum", checksum}};
  }

  if (opt.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return absl::OkStatus();
  }
  const auto& w = j["weights"];
  std::printf("model          %s\n", opt.model.c_str());
  std::printf("architecture   %s (fingerprint %s)\n", spec.architecture.c_str(),
              spec.Fingerprint().c_str());
  std::printf(
      "shape          hidden %d, intermediate %d, layers %d, heads %d/%d, head_dim %d, "
      "vocab %d\n",
      spec.hidden_size, spec.intermediate_size, spec.num_layers, spec.num_heads, spec.num_kv_heads,
      spec.head_dim, spec.vocab_size);
  std::printf("rope           theta %g, scaling %s (factor %g)\n", spec.rope_theta,
              std::string(RopeName(spec.rope_scaling.type)).c_str(), spec.rope_scaling.factor);
  std::printf("other          rms_norm_eps %g, %s, %s, max positions %d, torch_dtype %s\n",
              spec.rms_norm_eps, spec.tie_word_embeddings ? "tied embeddings" : "untied lm_head",
              spec.attention_bias ? "q/k/v bias" : "no bias", spec.max_position_embeddings,
              std::string(DTypeName(spec.torch_dtype)).c_str());
  std::printf("weights        %s in %d file(s), %zu tensors\n", std::string(DTypeName(wdt)).c_str(),
              ckpt.num_shards(), ckpt.Names().size());
  std::printf("  per layer    %s\n", FormatByteSize(w["layer_bytes"].get<uint64_t>()).c_str());
  std::printf("  embedding    %s\n", FormatByteSize(w["embedding_bytes"].get<uint64_t>()).c_str());
  std::printf("  head         %s\n", FormatByteSize(w["head_bytes"].get<uint64_t>()).c_str());
  std::printf("  total        %s\n", FormatByteSize(w["total_bytes"].get<uint64_t>()).c_str());
  std::printf("kv cache       %s per token per layer, %s per token (bf16)\n",
              FormatByteSize(w["kv_bytes_per_token_per_layer_bf16"].get<uint64_t>()).c_str(),
              FormatByteSize(w["kv_bytes_per_token_bf16"].get<uint64_t>()).c_str());
  if (j.contains("layers_read")) {
    const auto& r = j["layers_read"];
    std::printf("read layers    [%d, %d): %zu tensors, %s (%llu bytes; spec says %llu)\n",
                r["begin"].get<int>(), r["end"].get<int>(), r["tensors"].get<size_t>(),
                FormatByteSize(r["bytes_read"].get<uint64_t>()).c_str(),
                static_cast<unsigned long long>(r["bytes_read"].get<uint64_t>()),
                static_cast<unsigned long long>(r["expected_bytes"].get<uint64_t>()));
    std::printf("resident       before %s, after %s, growth %s\n",
                FormatByteSize(r["rss_before"].get<uint64_t>()).c_str(),
                FormatByteSize(r["rss_after"].get<uint64_t>()).c_str(),
                FormatByteSize(r["rss_growth"].get<uint64_t>()).c_str());
  }
  return absl::OkStatus();
}

std::function<int()> SetupInspect(CLI::App& sub) {
  auto opt = std::make_shared<InspectOptions>();
  sub.add_option("--model", opt->model, "Hugging Face model folder")->required();
  sub.add_option("--layers", opt->layers,
                 "B:E: read every byte of layers [B, E) and report resident memory");
  sub.add_flag("--json", opt->json, "print JSON");
  return [opt]() {
    Status s = Inspect(*opt);
    return s.ok() ? 0 : ReportError("tandem inspect", s);
  };
}

const bool kRegistered = RegisterCommand(
    {.name = "inspect", .summary = "show a model folder's spec and sizes", .setup = &SetupInspect});

}  // namespace
}  // namespace tandem
