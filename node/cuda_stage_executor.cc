#include "node/cuda_stage_executor.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <unordered_map>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/sampling.h"
#include "node/model_weights.h"

namespace tandem {
namespace {

size_t MatrixBytes(const cpu::WeightMatrix& w) {
  switch (w.dtype) {
    case DType::kF32: return static_cast<size_t>(w.rows * w.cols) * 4;
    case DType::kF16:
    case DType::kBF16: return static_cast<size_t>(w.rows * w.cols) * 2;
    case DType::kI8: return static_cast<size_t>(w.rows * w.cols);
    case DType::kI4: return static_cast<size_t>(w.rows * cpu::Int4RowBytes(w.cols));
    default: return 0;
  }
}

size_t ScaleCount(const cpu::WeightMatrix& w) {
  if (w.dtype == DType::kI8) return static_cast<size_t>(w.rows);
  if (w.dtype == DType::kI4) {
    return static_cast<size_t>(w.rows * cpu::Int4NumGroups(w.cols, w.group_size));
  }
  return 0;
}

cuda::DeviceMatrix View(const cpu::WeightMatrix& w) {
  return {.dtype = w.dtype, .rows = w.rows, .cols = w.cols, .data = w.data, .scales = w.scales,
          .group_size = w.group_size};
}

}  // namespace

// Everything that lives on the GPU, and the pinned staging buffers.
struct CudaStageExecutor::Device {
  int index = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::deque<cuda::DeviceBuffer> weight_buffers;
  StageWeights w;  // the rank's weight views, pointing at device memory
  size_t weight_bytes = 0;
  size_t bytes_per_step = 0;  // LoadedStageWeights::bytes_per_step of the host copy

  cuda::DeviceBuffer kv_storage;
  std::vector<cuda::DevicePagedKv> kv_layers;
  cuda::DeviceBuffer inv_freq;  // [head_dim / 2] double

  // Activations, for the largest batch.
  cuda::DeviceBuffer residual, normed, q, k, v, attn, proj, gate, up, last_hidden, logits,
      gemm_scratch;
  // The step's inputs: token ids, and per row its position and block-table
  // offset; the block tables themselves (at most every block of the cache).
  cuda::DeviceBuffer tokens, positions, table_offsets, block_tables;
  cuda::PinnedBuffer h_tokens, h_positions, h_table_offsets, h_block_tables, h_hidden, h_out;
  // Attention: the rows of prefill chunks go to the tiled kernel in tiles
  // (at most one per row); the row kernel sees them at position -1.
  cuda::DeviceBuffer attention_positions, tiles, attention_scratch;
  cuda::PinnedBuffer h_attention_positions, h_tiles;
  size_t activation_bytes = 0;
  cuda::GemmContext gemm;  // cublas + gemm_scratch, for every MatMul
  // Host scratch of Forward, [max_batch_sequences] each.
  std::vector<KvReservation> reservations;
  std::vector<int64_t> last_rows;
  // Last stage, GPU sampling: per sequence its parameters and result; the
  // penalty tokens of every sequence of a step (at most the tokens the KV
  // cache holds, plus each sequence's newest output); the raw logits.
  cuda::DeviceBuffer sampling_params, sampled, penalty_tokens, penalty_counts, penalty_in_prompt,
      raw_logits;
  cuda::PinnedBuffer h_sampling_params, h_sampled, h_penalty_tokens, h_penalty_counts,
      h_penalty_in_prompt;
  size_t penalty_capacity = 0;
  // Host scratch of ForwardAndSample, reserved at Create().
  std::vector<int32_t> penalty_tokens_scratch, penalty_counts_scratch;
  std::vector<uint8_t> penalty_in_prompt_scratch;
  std::vector<std::pair<int32_t, int32_t>> penalty_ranges;  // per sequence: (first, count)
  std::vector<SampledToken> sampled_tokens;
  // Captured decode steps, by batch size (index T, 1..kMaxDecodeTokens):
  // those that return logits and those that sample.
  std::vector<cudaGraphExec_t> graphs = std::vector<cudaGraphExec_t>(cuda::kMaxDecodeTokens + 1);
  std::vector<cudaGraphExec_t> sampling_graphs =
      std::vector<cudaGraphExec_t>(cuda::kMaxDecodeTokens + 1);

  ~Device() {
    for (cudaGraphExec_t g : graphs) {
      if (g != nullptr) cudaGraphExecDestroy(g);
    }
    for (cudaGraphExec_t g : sampling_graphs) {
      if (g != nullptr) cudaGraphExecDestroy(g);
    }
    if (cublas != nullptr) cublasDestroy(cublas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  cuda::DeviceBuffer Floats(int64_t n) {
    cuda::DeviceBuffer b(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float));
    activation_bytes += b.bytes();
    return b;
  }
};

StatusOr<std::unique_ptr<CudaStageExecutor>> CudaStageExecutor::Create(
    const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
    const StageOptions& options, int device) {
  if (options.tp != 1) {
    return absl::UnimplementedError(absl::StrCat(
        "tensor parallelism across GPUs (tp ", options.tp,
        ") is not available on the CUDA path yet; run one GPU per node process"));
  }
  if (options.max_batch_tokens < 1 || options.max_batch_sequences < 1) {
    return absl::InvalidArgumentError("max batch tokens and sequences must be at least 1");
  }
  if (spec.head_dim > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", spec.head_dim, " is above the 256 the GPU attention supports"));
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    cudaGetLastError();
    return absl::NotFoundError(
        absl::StrCat("no CUDA device ", device, " (this machine has ", count, ")"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LoadedStageWeights> host,
                   LoadStageWeights(spec, std::move(checkpoint),
                                    WeightLoadOptions{.range = options.range,
                                                      .tp = 1,
                                                      .quantize = options.quantize,
                                                      .int4_group_size = options.int4_group_size,
                                                      .load_threads = options.threads}));
  const int layers = options.range.layer_end - options.range.layer_begin;
  PagedKvCacheOptions kv_options{.num_layers = layers,
                                 .tp = 1,
                                 .kv_heads_per_rank = spec.num_kv_heads,
                                 .head_dim = spec.head_dim,
                                 .budget_bytes = options.kv_budget_bytes,
                                 .host_storage = false};
  ASSIGN_OR_RETURN(PagedKvCache kv, PagedKvCache::Create(kv_options));

  auto dev = std::make_unique<Device>();
  try {
    dev->index = device;
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&dev->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&dev->cublas));
    CUBLAS_CHECK(cublasSetStream(dev->cublas, dev->stream));

    // Weights: walk the one description and copy each tensor once (a tied
    // lm_head shares the embedding's copy).
    dev->w = host->rank(0);
    dev->bytes_per_step = host->bytes_per_step();
    std::unordered_map<const void*, const void*> uploaded;
    auto upload = [&](const void* src, size_t bytes) -> const void* {
      if (src == nullptr || bytes == 0) return src;
      auto it = uploaded.find(src);
      if (it != uploaded.end()) return it->second;
      cuda::DeviceBuffer& b = dev->weight_buffers.emplace_back(bytes);
      b.CopyFromHost(src, bytes);
      dev->weight_bytes += bytes;
      uploaded.emplace(src, b.data());
      return b.data();
    };
    dev->w.ForEachTensor([&](TensorSlot& slot) {
      if (slot.matrix != nullptr) {
        cpu::WeightMatrix& m = *slot.matrix;
        m.data = upload(m.data, MatrixBytes(m));
        m.scales = static_cast<const float*>(upload(m.scales, ScaleCount(m) * sizeof(float)));
      } else if (slot.vector != nullptr) {
        *slot.vector = static_cast<const float*>(upload(*slot.vector, static_cast<size_t>(slot.rows) * sizeof(float)));
      }
    });

    // KV cache: K then V of each layer, laid out as the host cache would be.
    const int64_t per_layer = int64_t{kv.num_blocks()} * kKvBlockSize * spec.num_kv_heads *
                              spec.head_dim;  // floats, K or V
    dev->kv_storage = cuda::DeviceBuffer(static_cast<size_t>(2 * per_layer * layers) * sizeof(float));
    for (int l = 0; l < layers; ++l) {
      float* base = dev->kv_storage.As<float>() + 2 * per_layer * l;
      dev->kv_layers.push_back({.k = base, .v = base + per_layer, .num_blocks = kv.num_blocks(),
                                .block_size = kKvBlockSize, .num_kv_heads = spec.num_kv_heads,
                                .head_dim = spec.head_dim});
    }
    const cpu::RopeTable rope(RopeParamsFor(spec));
    dev->inv_freq = cuda::DeviceBuffer::FromHost(std::span<const double>(rope.inv_freq));

    const int64_t max_t = options.max_batch_tokens, max_s = options.max_batch_sequences;
    const int64_t H = spec.hidden_size, inter = spec.intermediate_size;
    dev->residual = dev->Floats(max_t * H);
    dev->normed = dev->Floats(max_t * H);
    dev->q = dev->Floats(max_t * spec.q_size());
    dev->k = dev->Floats(max_t * spec.kv_size());
    dev->v = dev->Floats(max_t * spec.kv_size());
    dev->attn = dev->Floats(max_t * spec.q_size());
    dev->proj = dev->Floats(max_t * H);
    dev->gate = dev->Floats(max_t * inter);
    dev->up = dev->Floats(max_t * inter);
    const bool last = options.range.last(spec);
    if (last) {
      dev->last_hidden = dev->Floats(max_s * H);
      dev->logits = dev->Floats(max_s * spec.vocab_size);
      dev->raw_logits = dev->Floats(max_s * spec.vocab_size);
      const size_t params_bytes = static_cast<size_t>(max_s) * sizeof(cuda::DeviceSamplingParams);
      const size_t sampled_bytes = static_cast<size_t>(max_s) * sizeof(cuda::DeviceSampled);
      dev->sampling_params = cuda::DeviceBuffer(params_bytes);
      dev->h_sampling_params = cuda::PinnedBuffer(params_bytes);
      dev->sampled = cuda::DeviceBuffer(sampled_bytes);
      dev->h_sampled = cuda::PinnedBuffer(sampled_bytes);
      // Each sequence's distinct earlier tokens are among those its KV
      // blocks hold, plus its newest output (not yet fed back).
      dev->penalty_capacity =
          std::min(static_cast<size_t>(kv.num_blocks()) * kKvBlockSize + static_cast<size_t>(max_s),
                   static_cast<size_t>(max_s) * static_cast<size_t>(spec.vocab_size));
      const size_t cap = std::max<size_t>(dev->penalty_capacity, 1);
      dev->penalty_tokens = cuda::DeviceBuffer(cap * sizeof(int32_t));
      dev->penalty_counts = cuda::DeviceBuffer(cap * sizeof(int32_t));
      dev->penalty_in_prompt = cuda::DeviceBuffer(cap);
      dev->h_penalty_tokens = cuda::PinnedBuffer(cap * sizeof(int32_t));
      dev->h_penalty_counts = cuda::PinnedBuffer(cap * sizeof(int32_t));
      dev->h_penalty_in_prompt = cuda::PinnedBuffer(cap);
      dev->penalty_tokens_scratch.reserve(cap);
      dev->penalty_counts_scratch.reserve(cap);
      dev->penalty_in_prompt_scratch.reserve(cap);
      dev->penalty_ranges.reserve(static_cast<size_t>(max_s));
      dev->sampled_tokens.reserve(static_cast<size_t>(max_s));
    }
    const int64_t widest = std::max<int64_t>({H, inter, spec.q_size()});
    dev->gemm_scratch = cuda::DeviceBuffer(cuda::PrefillScratchBytes(max_t, widest));
    dev->reservations.resize(static_cast<size_t>(max_s));
    dev->last_rows.resize(static_cast<size_t>(max_s));
    dev->gemm = {.cublas = dev->cublas, .scratch = dev->gemm_scratch.data(),
                 .scratch_bytes = dev->gemm_scratch.bytes()};
    dev->tokens = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    dev->positions = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    dev->table_offsets = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(int64_t));
    const size_t table_entries = static_cast<size_t>(std::max(kv.num_blocks(), 1));
    dev->block_tables = cuda::DeviceBuffer(table_entries * sizeof(int32_t));
    dev->attention_positions = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    dev->attention_scratch = dev->Floats(static_cast<int64_t>(
        cuda::PagedAttentionScratchFloats(max_t, spec.num_heads, spec.head_dim)));
    dev->h_attention_positions = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    dev->tiles = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(cuda::DeviceAttentionTile));
    dev->h_tiles = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(cuda::DeviceAttentionTile));
    dev->h_tokens = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    dev->h_positions = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    dev->h_table_offsets = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(int64_t));
    dev->h_block_tables = cuda::PinnedBuffer(table_entries * sizeof(int32_t));
    dev->h_hidden = cuda::PinnedBuffer(static_cast<size_t>(max_t * H) * sizeof(float));
    const int64_t out_floats = last ? max_s * spec.vocab_size : max_t * H;
    dev->h_out = cuda::PinnedBuffer(static_cast<size_t>(out_floats) * sizeof(float));
    CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const cuda::CudaError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot set up the stage on CUDA device ", device, ": ", e.what()));
  }
  return std::unique_ptr<CudaStageExecutor>(
      new CudaStageExecutor(spec, options, std::move(kv), std::move(dev)));
}

CudaStageExecutor::CudaStageExecutor(const ModelSpec& spec, const StageOptions& options,
                                     PagedKvCache kv, std::unique_ptr<Device> device)
    : spec_(spec), options_(options), kv_(std::move(kv)), dev_(std::move(device)) {}

CudaStageExecutor::~CudaStageExecutor() {
  if (dev_ != nullptr) cudaSetDevice(dev_->index);
}

std::string CudaStageExecutor::device_name() const { return absl::StrCat("cuda:", dev_->index); }

size_t CudaStageExecutor::weight_bytes_per_step() const { return dev_->bytes_per_step; }

size_t CudaStageExecutor::weight_bytes() const { return dev_->weight_bytes; }

size_t CudaStageExecutor::device_bytes() const {
  return dev_->weight_bytes + dev_->kv_storage.bytes() + dev_->activation_bytes;
}

StatusOr<int64_t> CudaStageExecutor::PrepareStep(std::span<const SequenceStep> seqs,
                                                 std::span<const int32_t> tokens,
                                                 std::span<const float> hidden) {
  RETURN_IF_ERROR(ValidateStageStep(spec_, options_, seqs, tokens, hidden));
  Device& d = *dev_;
  for (size_t i = 0; i < seqs.size(); ++i) {
    d.reservations[i] = {.seq_id = seqs[i].seq_id, .start = seqs[i].start,
                         .length = seqs[i].start + seqs[i].count};
  }
  RETURN_IF_ERROR(kv_.Reserve(std::span<const KvReservation>(d.reservations.data(), seqs.size())));

  int32_t* positions = d.h_positions.As<int32_t>();
  int32_t* attention_positions = d.h_attention_positions.As<int32_t>();
  int64_t* offsets = d.h_table_offsets.As<int64_t>();
  int32_t* tables = d.h_block_tables.As<int32_t>();
  auto* tiles = d.h_tiles.As<cuda::DeviceAttentionTile>();
  const bool tiled = spec_.head_dim <= cuda::kPrefillMaxHeadDim;
  int64_t row = 0, table_size = 0, num_tiles = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const std::span<const int32_t> table = kv_.BlockTable(seqs[i].seq_id);
    std::memcpy(tables + table_size, table.data(), table.size_bytes());
    const bool chunk = tiled && seqs[i].count > 1;
    for (int64_t j = 0; j < seqs[i].count; ++j) {
      positions[row + j] = static_cast<int32_t>(seqs[i].start + j);
      attention_positions[row + j] = chunk ? -1 : positions[row + j];
      offsets[row + j] = table_size;
    }
    for (int64_t j = 0; chunk && j < seqs[i].count; j += cuda::kPrefillTileRows) {
      tiles[num_tiles++] = {.first_row = static_cast<int32_t>(row + j),
                            .count = static_cast<int32_t>(std::min<int64_t>(
                                cuda::kPrefillTileRows, seqs[i].count - j))};
    }
    table_size += static_cast<int64_t>(table.size());
    row += seqs[i].count;
    d.last_rows[i] = row - 1;
  }
  table_entries_ = table_size;
  num_tiles_ = num_tiles;
  if (is_first()) {
    std::memcpy(d.h_tokens.data(), tokens.data(), tokens.size_bytes());
  } else {
    std::memcpy(d.h_hidden.data(), hidden.data(), hidden.size_bytes());
  }
  return row;
}

void CudaStageExecutor::RunStep(int64_t T, int64_t S, bool sample) {
  Device& d = *dev_;
  const std::span<const int64_t> last_rows(d.last_rows.data(), static_cast<size_t>(S));
  // Decode-only steps of few sequences replay a captured graph: the same
  // kernels, launched at once. Only the metadata copies stay outside it
  // (the block tables change size from step to step).
  const bool graph = options_.cuda_graphs && T == S && T <= cuda::kMaxDecodeTokens;
  CUDA_CHECK(cudaSetDevice(d.index));
  cudaStream_t s = d.stream;
  CUDA_CHECK(cudaMemcpyAsync(d.positions.data(), d.h_positions.data(), T * sizeof(int32_t),
                             cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(d.table_offsets.data(), d.h_table_offsets.data(),
                             T * sizeof(int64_t), cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(d.block_tables.data(), d.h_block_tables.data(),
                             table_entries_ * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(d.attention_positions.data(), d.h_attention_positions.data(),
                             T * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  if (num_tiles_ > 0) {
    CUDA_CHECK(cudaMemcpyAsync(d.tiles.data(), d.h_tiles.data(),
                               num_tiles_ * sizeof(cuda::DeviceAttentionTile),
                               cudaMemcpyHostToDevice, s));
  }
  if (graph) {
    cudaGraphExec_t& exec = (sample ? d.sampling_graphs : d.graphs)[static_cast<size_t>(T)];
    if (exec == nullptr) {
      cudaGraph_t captured = nullptr;
      CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      try {
        EnqueueStep(T, S, last_rows, sample);
      } catch (const cuda::CudaError&) {
        cudaStreamEndCapture(s, &captured);
        if (captured != nullptr) cudaGraphDestroy(captured);
        throw;
      }
      CUDA_CHECK(cudaStreamEndCapture(s, &captured));
      const cudaError_t st = cudaGraphInstantiate(&exec, captured, 0);
      cudaGraphDestroy(captured);
      CUDA_CHECK(st);
    }
    CUDA_CHECK(cudaGraphLaunch(exec, s));
  } else {
    EnqueueStep(T, S, last_rows, sample);
  }
  CUDA_CHECK(cudaStreamSynchronize(s));
}

StatusOr<std::span<const float>> CudaStageExecutor::Forward(std::span<const SequenceStep> seqs,
                                                            std::span<const int32_t> tokens,
                                                            std::span<const float> hidden) {
  ASSIGN_OR_RETURN(const int64_t T, PrepareStep(seqs, tokens, hidden));
  const int64_t S = static_cast<int64_t>(seqs.size());
  try {
    RunStep(T, S, /*sample=*/false);
  } catch (const cuda::CudaError& e) {
    return absl::InternalError(absl::StrCat("CUDA device ", dev_->index, ": ", e.what()));
  }
  const size_t out_floats = static_cast<size_t>(is_last() ? S * spec_.vocab_size : T * spec_.hidden_size);
  return std::span<const float>(dev_->h_out.As<float>(), out_floats);
}

StatusOr<std::span<const SampledToken>> CudaStageExecutor::ForwardAndSample(
    std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
    std::span<const float> hidden, std::span<SequenceSampler* const> samplers) {
  RETURN_IF_ERROR(ValidateSamplers(seqs, samplers));
  Device& d = *dev_;
  // The penalty tokens first: a step whose tokens would not fit is refused
  // before the KV cache changes.
  d.penalty_tokens_scratch.clear();
  d.penalty_counts_scratch.clear();
  d.penalty_in_prompt_scratch.clear();
  std::vector<std::pair<int32_t, int32_t>>& penalty_ranges = d.penalty_ranges;
  penalty_ranges.clear();
  for (SequenceSampler* sampler : samplers) {
    const int32_t begin = static_cast<int32_t>(d.penalty_tokens_scratch.size());
    if (sampler != nullptr) {
      sampler->AppendPenaltyTokens(&d.penalty_tokens_scratch, &d.penalty_counts_scratch,
                                   &d.penalty_in_prompt_scratch);
    }
    penalty_ranges.emplace_back(begin,
                                static_cast<int32_t>(d.penalty_tokens_scratch.size()) - begin);
  }
  const size_t penalty_count = d.penalty_tokens_scratch.size();
  if (penalty_count > d.penalty_capacity) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the step's sequences have ", penalty_count,
                     " distinct earlier tokens to penalize, more than the ", d.penalty_capacity,
                     " this stage holds room for"));
  }
  ASSIGN_OR_RETURN(const int64_t T, PrepareStep(seqs, tokens, hidden));
  const int64_t S = static_cast<int64_t>(seqs.size());
  // Draws come after every check, so a refused step leaves the generators
  // as they were.
  auto* params = d.h_sampling_params.As<cuda::DeviceSamplingParams>();
  for (size_t i = 0; i < seqs.size(); ++i) {
    params[i] = cuda::DeviceSamplingParams{};  // no sampler: greedy, result unused
    if (samplers[i] == nullptr) continue;
    const SamplingParams& p = samplers[i]->params();
    params[i] = {.temperature = p.temperature,
                 .top_k = p.top_k,
                 .top_p = p.top_p,
                 .min_p = p.min_p,
                 .repetition_penalty = p.repetition_penalty,
                 .presence_penalty = p.presence_penalty,
                 .frequency_penalty = p.frequency_penalty,
                 .uniform = samplers[i]->Draw(),
                 .penalty_begin = penalty_ranges[i].first,
                 .penalty_count = penalty_ranges[i].second};
  }
  try {
    CUDA_CHECK(cudaSetDevice(d.index));
    cudaStream_t s = d.stream;
    CUDA_CHECK(cudaMemcpyAsync(d.sampling_params.data(), params,
                               S * sizeof(cuda::DeviceSamplingParams), cudaMemcpyHostToDevice, s));
    if (penalty_count > 0) {
      std::memcpy(d.h_penalty_tokens.data(), d.penalty_tokens_scratch.data(),
                  penalty_count * sizeof(int32_t));
      std::memcpy(d.h_penalty_counts.data(), d.penalty_counts_scratch.data(),
                  penalty_count * sizeof(int32_t));
      std::memcpy(d.h_penalty_in_prompt.data(), d.penalty_in_prompt_scratch.data(),
                  penalty_count);
      CUDA_CHECK(cudaMemcpyAsync(d.penalty_tokens.data(), d.h_penalty_tokens.data(),
                                 penalty_count * sizeof(int32_t), cudaMemcpyHostToDevice, s));
      CUDA_CHECK(cudaMemcpyAsync(d.penalty_counts.data(), d.h_penalty_counts.data(),
                                 penalty_count * sizeof(int32_t), cudaMemcpyHostToDevice, s));
      CUDA_CHECK(cudaMemcpyAsync(d.penalty_in_prompt.data(), d.h_penalty_in_prompt.data(),
                                 penalty_count, cudaMemcpyHostToDevice, s));
    }
    RunStep(T, S, /*sample=*/true);
  } catch (const cuda::CudaError& e) {
    return absl::InternalError(absl::StrCat("CUDA device ", d.index, ": ", e.what()));
  }
  const auto* got = d.h_sampled.As<cuda::DeviceSampled>();
  d.sampled_tokens.assign(seqs.size(), SampledToken{.token = -1, .logprob = 0.0f});
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (samplers[i] == nullptr) continue;
    d.sampled_tokens[i] = {.token = got[i].token, .logprob = got[i].logprob};
    samplers[i]->Record(got[i].token);
  }
  return std::span<const SampledToken>(d.sampled_tokens);
}

// Enqueues the whole step on the device stream, after the metadata copies:
// the inputs from pinned memory, every layer, the head on the last stage,
// and the output into pinned memory.
void CudaStageExecutor::EnqueueStep(int64_t T, int64_t S, std::span<const int64_t> last_rows,
                                    bool sample) {
  Device& d = *dev_;
  cudaStream_t s = d.stream;
  const int64_t H = spec_.hidden_size;
  if (is_first()) {
    CUDA_CHECK(cudaMemcpyAsync(d.tokens.data(), d.h_tokens.data(), T * sizeof(int32_t),
                               cudaMemcpyHostToDevice, s));
    cuda::EmbeddingLookup(View(d.w.embedding), d.tokens.As<int32_t>(), T, d.residual.As<float>(),
                          s);
  } else {
    CUDA_CHECK(cudaMemcpyAsync(d.residual.data(), d.h_hidden.data(), T * H * sizeof(float),
                               cudaMemcpyHostToDevice, s));
  }
  RunLayers(T);
  float* out = d.h_out.As<float>();
  if (!is_last()) {
    CUDA_CHECK(cudaMemcpyAsync(out, d.residual.data(), T * H * sizeof(float),
                               cudaMemcpyDeviceToHost, s));
    return;
  }
  float* last = d.last_hidden.As<float>();
  for (int64_t i = 0; i < S; ++i) {
    CUDA_CHECK(cudaMemcpyAsync(last + i * H, d.residual.As<float>() + last_rows[i] * H,
                               H * sizeof(float), cudaMemcpyDeviceToDevice, s));
  }
  cuda::RmsNorm(last, d.w.final_norm, static_cast<float>(spec_.rms_norm_eps), S, H, last, s);
  cuda::MatMul(d.gemm, last, S, View(d.w.lm_head), nullptr, d.logits.As<float>(), s);
  if (!sample) {
    CUDA_CHECK(cudaMemcpyAsync(out, d.logits.data(), S * spec_.vocab_size * sizeof(float),
                               cudaMemcpyDeviceToHost, s));
    return;
  }
  cuda::SampleTokens(d.logits.As<float>(), S, spec_.vocab_size,
                     d.sampling_params.As<cuda::DeviceSamplingParams>(),
                     {.tokens = d.penalty_tokens.As<int32_t>(),
                      .output_counts = d.penalty_counts.As<int32_t>(),
                      .in_prompt = d.penalty_in_prompt.As<uint8_t>()},
                     d.raw_logits.As<float>(), d.sampled.As<cuda::DeviceSampled>(), s);
  CUDA_CHECK(cudaMemcpyAsync(d.h_sampled.data(), d.sampled.data(),
                             S * sizeof(cuda::DeviceSampled), cudaMemcpyDeviceToHost, s));
}

// Every layer of the stage on the device stream. Each residual add is fused
// with the norm that follows it.
void CudaStageExecutor::RunLayers(int64_t T) {
  Device& d = *dev_;
  cudaStream_t s = d.stream;
  const int64_t H = spec_.hidden_size;
  const float eps = static_cast<float>(spec_.rms_norm_eps);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(spec_.head_dim)));
  const cuda::DeviceAttentionRows rows{.positions = d.positions.As<int32_t>(),
                                       .table_offsets = d.table_offsets.As<int64_t>(),
                                       .block_tables = d.block_tables.As<int32_t>(),
                                       .rows = T};
  // The row kernel attends decode rows (and every row where the tiled
  // kernel does not apply); the tiled kernel the prefill chunks' rows.
  cuda::DeviceAttentionRows attend_rows = rows;
  attend_rows.positions = d.attention_positions.As<int32_t>();
  float* residual = d.residual.As<float>();
  float* normed = d.normed.As<float>();
  float* proj = d.proj.As<float>();
  for (size_t l = 0; l < d.w.layers.size(); ++l) {
    const LayerWeights& w = d.w.layers[l];
    if (l == 0) {
      cuda::RmsNorm(residual, w.input_norm, eps, T, H, normed, s);
    } else {
      cuda::AddRmsNorm(residual, proj, w.input_norm, eps, T, H, normed, s);
    }
    cuda::MatMul(d.gemm, normed, T, View(w.q), w.q_bias, d.q.As<float>(), s);
    cuda::MatMul(d.gemm, normed, T, View(w.k), w.k_bias, d.k.As<float>(), s);
    cuda::MatMul(d.gemm, normed, T, View(w.v), w.v_bias, d.v.As<float>(), s);
    cuda::ApplyRope(d.inv_freq.As<double>(), spec_.head_dim, d.q.As<float>(), T, spec_.num_heads,
                    rows.positions, s);
    cuda::ApplyRope(d.inv_freq.As<double>(), spec_.head_dim, d.k.As<float>(), T,
                    spec_.num_kv_heads, rows.positions, s);
    cuda::WriteKv(d.kv_layers[l], d.k.As<float>(), d.v.As<float>(), rows, s);
    cuda::PagedAttention(d.q.As<float>(), d.kv_layers[l], attend_rows, spec_.num_heads, scale,
                         d.attention_scratch.As<float>(), d.attn.As<float>(), s);
    cuda::PagedPrefillAttention(d.q.As<float>(), d.kv_layers[l], rows,
                                d.tiles.As<cuda::DeviceAttentionTile>(), num_tiles_,
                                spec_.num_heads, scale, d.attn.As<float>(), s);
    cuda::MatMul(d.gemm, d.attn.As<float>(), T, View(w.o), nullptr, proj, s);
    cuda::AddRmsNorm(residual, proj, w.post_norm, eps, T, H, normed, s);
    cuda::MatMul(d.gemm, normed, T, View(w.gate), nullptr, d.gate.As<float>(), s);
    cuda::MatMul(d.gemm, normed, T, View(w.up), nullptr, d.up.As<float>(), s);
    cuda::SiluMul(d.gate.As<float>(), d.up.As<float>(), d.gate.As<float>(),
                  T * spec_.intermediate_size, s);
    cuda::MatMul(d.gemm, d.gate.As<float>(), T, View(w.down), nullptr, proj, s);
  }
  if (!d.w.layers.empty()) cuda::AddInPlace(residual, proj, T * H, s);
}

}  // namespace tandem
