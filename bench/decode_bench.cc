// `tandem-bench decode`: prefill and decode speed of one stage holding the
// whole model, on the CPU (against this machine's memory bandwidth and peak
// FLOP rate measured in the same run) or on GPUs, one tensor-parallel rank
// each (against their device-to-device copy bandwidth and cuBLAS's own bf16
// GEMM rate, summed over the GPUs, measured the same way).
//
// A decode step must read every weight once (whatever the batch) and, for
// each sequence, the keys and values of all its cached positions: the
// roofline is the bandwidth over those bytes. Both are reported, and the
// fraction with the weights alone as well.
//
// On the CPU a shared machine's bandwidth swings by a quarter from one 40 ms
// read to the next, so the decode is compared with reads of the bandwidth
// probe taken beside it: every decode step right after one read, in rounds,
// and the roofline fraction is the median over rounds of (the round's GB/s
// over the GB/s of its reads), bytes over seconds summed on each side. A
// figure taken once at the start would compare the decode with another
// moment's machine, and the fastest of a few reads with a lucky moment: the
// burst bandwidth (the fastest of 7 reads before each round) is printed
// beside it, with the fraction against that.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench/stats.h"
#include "core/cli.h"
#include "core/command.h"
#include "kernels/cpu/roofline.h"
#include "kernels/cpu/thread_pool.h"
#include "nlohmann/json.hpp"
#include "config/node_config.h"
#include "node/cuda_backend.h"
#include "node/local_pipeline.h"
#include "node/sampler.h"

namespace tandem {
namespace {

struct DecodeFlags {
  std::string model;
  int prompt = 512;
  int gen = 64;
  int batch = 1;
  int rounds = 8;
  int threads = 0;
  int tp = 1;
  std::string quantize = "none";
  int int4_group = 32;
  double kv_budget_mb = 256;
  std::string device = "cpu";
  bool json = false;
};

// Resident set size of this process in bytes (0 when unknown).
size_t ResidentBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// Multiply-add FLOPs of the matrices one token passes through (lm_head
// excluded: it runs once per sequence).
double LayerFlopsPerToken(const ModelSpec& s) {
  const double h = s.hidden_size;
  const double per_layer = 2.0 * h * (2.0 * s.q_size() + 2.0 * s.kv_size()) +
                           2.0 * 3.0 * h * s.intermediate_size;
  return per_layer * s.num_layers;
}

Status RunDecodeBench(const DecodeFlags& f) {
  if (f.prompt < 1 || f.gen < 1) {
    return absl::InvalidArgumentError("--prompt and --gen must be at least 1");
  }
  if (f.batch < 1 || f.batch > 256) {
    return absl::InvalidArgumentError(absl::StrCat("--batch ", f.batch, ": must be in [1, 256]"));
  }
  if (f.rounds < 1 || f.rounds > f.gen) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rounds ", f.rounds, ": must be in [1, --gen = ", f.gen, "]"));
  }
  ASSIGN_OR_RETURN(WeightQuantization quantize, ParseWeightQuantization(f.quantize));
  ASSIGN_OR_RETURN(std::vector<DeviceId> devices, ParseDevices({f.device}));
  const std::vector<int> gpus = CudaOrdinals(devices);
  StatusOr<int> ranks = StageRanks(f.tp, gpus);
  if (!ranks.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--devices ", f.device, ": ",
                                                   ranks.status().message(),
                                                   " (leave out --tp)"));
  }
  const int tp = *ranks;
  // The roofline and the peak: the CPU's, or the sum over the stage's GPUs
  // (every rank streams its own shard at once).
  double roofline_gbps = 0, peak_gflops = 0;
  std::string simd;
  int threads = 0;
  // CPU: the probe's own pool sleeps while the stage's pool decodes.
  std::optional<cpu::ThreadPool> probe_pool;
  std::optional<cpu::BandwidthProbe> probe;
  if (gpus.empty()) {
    probe_pool.emplace(f.threads);
    threads = probe_pool->size();
    probe.emplace(*probe_pool);
    roofline_gbps = probe->ChooseStreaming(5);
    peak_gflops = cpu::MeasurePeakGflops(*probe_pool);
    simd = cpu::SimdTargetName();
  } else {
    StatusOr<const CudaBackend*> cuda = LoadCudaBackend();
    if (!cuda.ok()) {
      return Status(cuda.status().code(),
                    absl::StrCat("--devices ", f.device, ": ", cuda.status().message()));
    }
    const std::vector<cuda::DeviceInfo> present = (*cuda)->list_devices();
    for (int gpu : gpus) {
      if (static_cast<size_t>(gpu) >= present.size()) {
        return absl::NotFoundError(absl::StrCat("--devices ", f.device, ": no GPU ", gpu,
                                                " (this machine has ", present.size(), ")"));
      }
      StatusOr<double> gbps = (*cuda)->memory_bandwidth_gbps(gpu);
      StatusOr<double> gflops = gbps.ok() ? (*cuda)->gemm_peak_gflops(gpu) : gbps;
      if (!gflops.ok()) {
        return absl::UnavailableError(
            absl::StrCat("--devices ", f.device, ": ", gflops.status().message()));
      }
      roofline_gbps += *gbps;
      peak_gflops += *gflops;
      absl::StrAppend(&simd, simd.empty() ? "" : ", ", "cuda:", gpu, " ",
                      present[static_cast<size_t>(gpu)].name);
    }
    threads = 1;
  }
  const size_t rss_before = ResidentBytes();
  PipelineOptions options{
      .stages = 1,
      .stage = StageOptions{.tp = tp,
                            .threads = threads,
                            .max_batch_tokens = std::max(f.prompt, f.batch),
                            .max_batch_sequences = f.batch,
                            .kv_budget_bytes = static_cast<size_t>(f.kv_budget_mb * 1048576.0),
                            .quantize = quantize,
                            .int4_group_size = f.int4_group},
      .cuda_devices = gpus};
  auto load_start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<LocalPipeline> pipeline, LocalPipeline::Create(f.model, options));
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  const ModelSpec& spec = pipeline->spec();
  // Each sequence holds prompt + 1 + gen tokens, in whole blocks.
  const int64_t blocks_per_seq = (f.prompt + 1 + f.gen + kKvBlockSize - 1) / kKvBlockSize;
  if (blocks_per_seq * f.batch > static_cast<int64_t>(pipeline->stage(0).kv_cache().num_blocks())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--batch ", f.batch, " x (--prompt + --gen + 1 = ", f.prompt + f.gen + 1,
        " tokens) do not fit the KV budget of ", f.kv_budget_mb, " MiB; raise --kv-budget-mb"));
  }

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token_dist(0, spec.vocab_size - 1);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(f.batch));
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(f.prompt));
    for (int32_t& t : p) t = token_dist(rng);
  }
  const std::vector<int32_t>& prompt = prompts[0];

  using Clock = std::chrono::steady_clock;
  // Prefill once to warm caches and pages, release, then measure.
  SequenceStep step{.seq_id = 1, .start = 0, .count = f.prompt};
  RETURN_IF_ERROR(pipeline->Step({&step, 1}, prompt).status());
  pipeline->Release(1);
  auto t0 = Clock::now();
  ASSIGN_OR_RETURN(std::span<const float> logits, pipeline->Step({&step, 1}, prompt));
  const double prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();

  // The other sequences of the batch, prefilled untimed.
  std::vector<int32_t> tokens(static_cast<size_t>(f.batch));
  auto argmax = [&](std::span<const float> l) {
    return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  };
  tokens[0] = argmax(logits);
  for (int b = 1; b < f.batch; ++b) {
    step = SequenceStep{.seq_id = static_cast<uint64_t>(b + 1), .start = 0, .count = f.prompt};
    ASSIGN_OR_RETURN(logits, pipeline->Step({&step, 1}, prompts[static_cast<size_t>(b)]));
    tokens[static_cast<size_t>(b)] = argmax(logits);
  }
  // One decode step of every sequence together: `batch` tokens at `pos`,
  // sampled greedily by the last stage as a node does (on a GPU only the
  // ids come back).
  std::vector<SequenceStep> steps(static_cast<size_t>(f.batch));
  std::vector<std::unique_ptr<SequenceSampler>> samplers;
  std::vector<SequenceSampler*> sampler_ptrs;
  for (int b = 0; b < f.batch; ++b) {
    samplers.push_back(std::make_unique<SequenceSampler>(SamplingParams{}, spec.vocab_size));
    sampler_ptrs.push_back(samplers.back().get());
  }
  auto decode_step = [&](int64_t pos) -> Status {
    for (int b = 0; b < f.batch; ++b) {
      steps[static_cast<size_t>(b)] =
          SequenceStep{.seq_id = static_cast<uint64_t>(b + 1), .start = pos, .count = 1};
    }
    ASSIGN_OR_RETURN(std::span<const SampledToken> out,
                     pipeline->StepAndSample(steps, tokens, sampler_ptrs));
    for (size_t b = 0; b < tokens.size(); ++b) tokens[b] = out[b].token;
    return absl::OkStatus();
  };
  // One untimed decode step, then `gen` timed ones in `rounds` rounds.
  RETURN_IF_ERROR(decode_step(f.prompt));
  // Weights are read once per step, whatever the batch; the step at
  // position pos reads pos + 1 positions of K and V for each sequence.
  const double bytes_per_step = static_cast<double>(pipeline->weight_bytes_per_step());
  const double kv_position_bytes = static_cast<double>(pipeline->kv_position_bytes());
  double decode_s = 0, kv_read = 0;
  std::vector<double> round_rooflines, round_fractions, round_weight_fractions, round_bursts,
      round_burst_fractions;
  for (int r = 0, done = 0; r < f.rounds; ++r) {
    const int n = static_cast<int>(int64_t{f.gen} * (r + 1) / f.rounds) - done;
    const double burst = probe ? probe->Measure(1) : roofline_gbps;
    double s = 0, read_s = 0, round_kv = 0;
    for (int i = 0; i < n; ++i, ++done) {
      if (probe) read_s += probe->TimeRead();
      const int64_t pos = f.prompt + 1 + done;
      t0 = Clock::now();
      RETURN_IF_ERROR(decode_step(pos));
      s += std::chrono::duration<double>(Clock::now() - t0).count();
      round_kv += kv_position_bytes * static_cast<double>(pos + 1) * f.batch;
    }
    const double roofline =
        probe ? static_cast<double>(probe->bytes()) * n / read_s / 1e9 : roofline_gbps;
    const double round_gbps = (bytes_per_step * n + round_kv) / s / 1e9;
    decode_s += s;
    kv_read += round_kv;
    round_rooflines.push_back(roofline);
    round_fractions.push_back(round_gbps / roofline);
    round_weight_fractions.push_back(bytes_per_step * n / s / 1e9 / roofline);
    round_bursts.push_back(burst);
    round_burst_fractions.push_back(round_gbps / burst);
  }
  // The probe's buffer is not part of the stage.
  const size_t rss = ResidentBytes() - (probe ? probe->bytes() : 0);

  const double steps_per_s = f.gen / decode_s;
  const double decode_tps = steps_per_s * f.batch;
  const double bytes_per_token = bytes_per_step / f.batch;
  const double kv_bytes_per_token = kv_read / (static_cast<double>(f.gen) * f.batch);
  const double prefill_tps = f.prompt / prefill_s;
  const double weights_gbps = bytes_per_step * steps_per_s / 1e9;
  const double achieved_gbps = weights_gbps + kv_read / decode_s / 1e9;
  roofline_gbps = bench::Median(round_rooflines);
  const double roofline_fraction = bench::Median(round_fractions);
  const double weights_roofline_fraction = bench::Median(round_weight_fractions);
  const double burst_gbps = bench::Median(round_bursts);
  const double burst_fraction = bench::Median(round_burst_fractions);
  const double n = f.prompt;
  const double prefill_flops =
      LayerFlopsPerToken(spec) * n +
      2.0 * spec.num_layers * spec.num_heads * static_cast<double>(spec.head_dim) * n * n +
      2.0 * spec.hidden_size * static_cast<double>(spec.vocab_size);
  const double prefill_gflops = prefill_flops / prefill_s / 1e9;
  const size_t weight_bytes = pipeline->stage(0).weight_bytes();
  const size_t kv_bytes = pipeline->kv_bytes();

  if (f.json) {
    nlohmann::ordered_json out = {
        {"decode_tokens_per_s", decode_tps},
        {"prefill_tokens_per_s", prefill_tps},
        {"bytes_per_token", bytes_per_token},
        {"kv_bytes_per_token", kv_bytes_per_token},
        {"achieved_gbps", achieved_gbps},
        {"weights_gbps", weights_gbps},
        {"roofline_gbps", roofline_gbps},
        {"roofline_fraction", roofline_fraction},
        {"weights_roofline_fraction", weights_roofline_fraction},
        {"round_roofline_gbps", round_rooflines},
        {"round_roofline_fractions", round_fractions},
        {"burst_roofline_gbps", burst_gbps},
        {"burst_roofline_fraction", burst_fraction},
        {"prefill_gflops", prefill_gflops},
        {"peak_gflops", peak_gflops},
        {"prefill_peak_fraction", peak_gflops > 0 ? prefill_gflops / peak_gflops : 0.0},
        {"resident_bytes", rss},
        {"resident_bytes_before_load", rss_before},
        {"weight_bytes", weight_bytes},
        {"kv_bytes", kv_bytes},
        {"resident_over_weights_kv", static_cast<double>(rss) / (weight_bytes + kv_bytes)},
        {"load_s", load_s},
        {"threads", threads},
        {"tp", tp},
        {"simd", simd},
        {"device", f.device},
        {"quantize", f.quantize},
        {"prompt", f.prompt},
        {"gen", f.gen},
        {"batch", f.batch}};
    std::printf("%s\n", out.dump().c_str());
    return absl::OkStatus();
  }
  std::printf("model      %s\n", spec.ToString().c_str());
  std::printf("machine    %d threads, %s, memory bandwidth %.1f GB/s, peak %.1f GFLOP/s\n",
              threads, simd.c_str(), roofline_gbps, peak_gflops);
  std::printf("weights    %s, %.1f MB per decoded token, load %.2f s\n", f.quantize.c_str(),
              bytes_per_token / 1e6, load_s);
  std::printf("KV         %.1f MB read per decoded token (mean over the steps)\n",
              kv_bytes_per_token / 1e6);
  std::printf("prefill    %d tokens: %.1f tokens/s, %.1f GFLOP/s", f.prompt, prefill_tps,
              prefill_gflops);
  if (peak_gflops > 0) std::printf(" (%.0f%% of peak)", 100.0 * prefill_gflops / peak_gflops);
  std::printf("\n");
  std::printf("decode     %d steps of %d sequence%s: %.2f tokens/s, %.1f GB/s of weights and KV "
              "(%.0f%% of the roofline; the weights alone %.1f GB/s, %.0f%%)\n",
              f.gen, f.batch, f.batch == 1 ? "" : "s", decode_tps, achieved_gbps,
              100.0 * roofline_fraction, weights_gbps, 100.0 * weights_roofline_fraction);
  if (probe) {
    const auto [lo, hi] = std::minmax_element(round_fractions.begin(), round_fractions.end());
    std::printf(
        "           %d rounds, each step after a read of %.2f GB: median %.0f%%, range "
        "%.0f-%.0f%%; bandwidth median %.1f GB/s (burst %.1f GB/s: %.0f%%)\n",
        f.rounds, static_cast<double>(probe->bytes()) / 1e9, 100.0 * roofline_fraction, 100.0 * *lo,
        100.0 * *hi, roofline_gbps, burst_gbps, 100.0 * burst_fraction);
  }
  std::printf("memory     resident %.1f MB = %.2f x (weights %.1f MB + KV %.1f MB)\n", rss / 1e6,
              static_cast<double>(rss) / (weight_bytes + kv_bytes), weight_bytes / 1e6,
              kv_bytes / 1e6);
  return absl::OkStatus();
}

std::function<int()> SetupDecode(CLI::App& app) {
  auto f = std::make_shared<DecodeFlags>();
  app.add_option("--model", f->model, "model folder (Hugging Face layout)")->required();
  app.add_option("--prompt", f->prompt, "prompt tokens (random ids)")->capture_default_str();
  app.add_option("--gen", f->gen, "decode steps (tokens per sequence)")->capture_default_str();
  app.add_option("--batch", f->batch,
                 "sequences decoded together, each with its own random prompt; tokens/s counts "
                 "all of them")
      ->capture_default_str();
  app.add_option("--rounds", f->rounds,
                 "CPU: decode in this many rounds, each step after a read of the bandwidth "
                 "probe; the roofline fraction is the median over rounds")
      ->capture_default_str();
  app.add_option("--threads", f->threads, "threads (0 = every core)")->capture_default_str();
  app.add_option("--tp", f->tp, "tensor-parallel ranks (on GPUs: one per device)")
      ->capture_default_str();
  app.add_option("--quantize", f->quantize, "none, int8 or int4")->capture_default_str();
  app.add_option("--int4-group", f->int4_group, "int4 group size (32 or 128)")
      ->capture_default_str();
  app.add_option("--kv-budget-mb", f->kv_budget_mb, "KV cache memory, MiB")->capture_default_str();
  app.add_option("--devices,--device", f->device,
                 "cpu, or GPUs such as cuda:0 or cuda:0,1 (tensor parallelism over NCCL) in a "
                 "build with the CUDA backend")
      ->capture_default_str();
  app.add_flag("--json", f->json, "print one JSON object");
  return [f] {
    Status status = RunDecodeBench(*f);
    return status.ok() ? 0 : ReportError("tandem-bench decode", status);
  };
}

const bool kRegistered = RegisterCommand(
    {.name = "decode",
     .summary = "prefill and decode speed against the memory-bandwidth roofline (the weights "
                "and KV a step reads)",
     .setup = &SetupDecode});

}  // namespace
}  // namespace tandem
