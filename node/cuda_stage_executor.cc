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
#include "node/cuda_communicator.h"
#include "node/model_weights.h"

namespace tandem {
namespace {

cuda::DeviceMatrix View(const cpu::WeightMatrix& w) {
  CHECK_MSG(cpu::NumColumnBlocks(w) == 1, "GPU stage: weights must be loaded row-major");
  return {.dtype = w.dtype, .rows = w.rows, .cols = w.cols, .data = w.data, .scales = w.scales,
          .group_size = w.group_size};
}

}  // namespace

// One tensor-parallel rank: its GPU and everything on it.
struct CudaStageExecutor::Rank {
  int index = 0;   // the rank
  int device = 0;  // its CUDA device
  Communicator* comm = nullptr;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::deque<cuda::DeviceBuffer> weight_buffers;
  StageWeights w;  // the rank's weight views, pointing at device memory
  size_t weight_bytes = 0;
  int heads = 0, kv_heads = 0;  // this rank's query and kv heads
  int64_t q_width = 0, kv_width = 0, inter_width = 0;
  int64_t vocab_rows = 0, vocab_begin = 0;  // last stage: this rank's rows of lm_head

  cuda::DeviceBuffer kv_storage;
  std::vector<cuda::DevicePagedKv> kv_layers;
  cuda::DeviceBuffer inv_freq;  // [head_dim / 2] double

  // Activations, for the largest batch. logits is [max_seqs, vocab] on
  // every rank; with several ranks, rank_logits [max_seqs, vocab_rows]
  // holds this rank's rows before they are gathered into it.
  cuda::DeviceBuffer residual, normed, q, k, v, attn, proj, gate, up, last_hidden, logits,
      rank_logits, gemm_scratch;
  // The step's inputs: token ids, and per row its position and block-table
  // offset; the block tables themselves (at most every block of the cache).
  cuda::DeviceBuffer tokens, positions, table_offsets, block_tables;
  // Attention: the rows of prefill chunks go to the tiled kernel in tiles
  // (at most one per row); the row kernel sees them at position -1.
  cuda::DeviceBuffer attention_positions, tiles, attention_scratch;
  size_t activation_bytes = 0;
  cuda::GemmContext gemm;  // cublas + gemm_scratch, for every MatMul
  // Rank 0 of the last stage, GPU sampling: per sequence its parameters and
  // result; the penalty tokens of every sequence of a step; the raw logits.
  cuda::DeviceBuffer sampling_params, sampled, penalty_tokens, penalty_counts, penalty_in_prompt,
      raw_logits;
  // Captured decode steps, by batch size (index T, 1..kMaxDecodeTokens):
  // those that return logits and those that sample.
  std::vector<cudaGraphExec_t> graphs = std::vector<cudaGraphExec_t>(cuda::kMaxDecodeTokens + 1);
  std::vector<cudaGraphExec_t> sampling_graphs =
      std::vector<cudaGraphExec_t>(cuda::kMaxDecodeTokens + 1);
  std::string error;  // the last step's CUDA error on this rank, empty if none

  ~Rank() {
    cudaSetDevice(device);
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

// The pinned staging buffers every rank reads its inputs from (portable
// pinned memory), rank 0's outputs, and the host scratch of a step.
struct CudaStageExecutor::Host {
  cuda::PinnedBuffer h_tokens, h_positions, h_table_offsets, h_block_tables, h_hidden, h_out;
  cuda::PinnedBuffer h_attention_positions, h_tiles;
  cuda::PinnedBuffer h_sampling_params, h_sampled, h_penalty_tokens, h_penalty_counts,
      h_penalty_in_prompt;
  // Each sequence's distinct earlier tokens are among those its KV blocks
  // hold, plus its newest output (not yet fed back).
  size_t penalty_capacity = 0;
  size_t penalty_count = 0;  // penalty tokens of the sampling step in flight
  // [max_batch_sequences] each.
  std::vector<KvReservation> reservations;
  std::vector<int64_t> last_rows;
  // ForwardAndSample's scratch, reserved at Create().
  std::vector<int32_t> penalty_tokens_scratch, penalty_counts_scratch;
  std::vector<uint8_t> penalty_in_prompt_scratch;
  std::vector<std::pair<int32_t, int32_t>> penalty_ranges;  // per sequence: (first, count)
  std::vector<SampledToken> sampled_tokens;
};

StatusOr<std::unique_ptr<CudaStageExecutor>> CudaStageExecutor::Create(
    const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
    const StageOptions& options, const std::vector<int>& devices) {
  const int tp = options.tp;
  if (devices.empty() || static_cast<int>(devices.size()) != tp) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a GPU stage of tp ", tp, " needs one CUDA device per rank, got ", devices.size()));
  }
  if (options.max_batch_tokens < 1 || options.max_batch_sequences < 1) {
    return absl::InvalidArgumentError("max batch tokens and sequences must be at least 1");
  }
  if (spec.head_dim > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", spec.head_dim, " is above the 256 the GPU attention supports"));
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    count = 0;
  }
  for (int device : devices) {
    if (device < 0 || device >= count) {
      return absl::NotFoundError(
          absl::StrCat("no CUDA device ", device, " (this machine has ", count, ")"));
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LoadedStageWeights> host_weights,
                   LoadStageWeights(spec, std::move(checkpoint),
                                    WeightLoadOptions{.range = options.range,
                                                      .tp = tp,
                                                      .quantize = options.quantize,
                                                      .int4_group_size = options.int4_group_size,
                                                      .load_threads = options.threads}));
  const int layers = options.range.layer_end - options.range.layer_begin;
  PagedKvCacheOptions kv_options{.num_layers = layers,
                                 .tp = tp,
                                 .kv_heads_per_rank = spec.num_kv_heads / tp,
                                 .head_dim = spec.head_dim,
                                 .budget_bytes = options.kv_budget_bytes,
                                 .host_storage = false};
  ASSIGN_OR_RETURN(PagedKvCache kv, PagedKvCache::Create(kv_options));

  std::unique_ptr<CudaStageExecutor> stage(new CudaStageExecutor(spec, options, std::move(kv)));
  stage->bytes_per_step_ = host_weights->bytes_per_step();
  const PagedKvCache& cache = stage->kv_;
  const bool last = options.range.last(spec);
  const int64_t max_t = options.max_batch_tokens, max_s = options.max_batch_sequences;
  const int64_t H = spec.hidden_size;
  int device = devices[0];
  try {
    for (int index = 0; index < tp; ++index) {
      device = devices[static_cast<size_t>(index)];
      auto rank = std::make_unique<Rank>();
      Rank& r = *rank;
      stage->ranks_.push_back(std::move(rank));
      r.index = index;
      r.device = device;
      CUDA_CHECK(cudaSetDevice(device));
      CUDA_CHECK(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
      CUBLAS_CHECK(cublasCreate(&r.cublas));
      CUBLAS_CHECK(cublasSetStream(r.cublas, r.stream));
      r.heads = spec.num_heads / tp;
      r.kv_heads = spec.num_kv_heads / tp;
      r.q_width = int64_t{r.heads} * spec.head_dim;
      r.kv_width = int64_t{r.kv_heads} * spec.head_dim;
      r.inter_width = spec.intermediate_size / tp;

      // Weights: walk the one description and copy each tensor of this
      // rank once (a tied lm_head shares the embedding's copy).
      r.w = host_weights->rank(index);
      std::unordered_map<const void*, const void*> uploaded;
      auto upload = [&](const void* src, size_t bytes) -> const void* {
        if (src == nullptr || bytes == 0) return src;
        auto it = uploaded.find(src);
        if (it != uploaded.end()) return it->second;
        cuda::DeviceBuffer& b = r.weight_buffers.emplace_back(bytes);
        b.CopyFromHost(src, bytes);
        r.weight_bytes += bytes;
        uploaded.emplace(src, b.data());
        return b.data();
      };
      r.w.ForEachTensor([&](TensorSlot& slot) {
        if (slot.matrix != nullptr) {
          cpu::WeightMatrix& m = *slot.matrix;
          m.data = upload(m.data, cpu::WeightDataBytes(m));
          m.scales =
              static_cast<const float*>(upload(m.scales, cpu::WeightScaleCount(m) * sizeof(float)));
        } else if (slot.vector != nullptr) {
          // slot.rows is the checkpoint's length; a split vector (a bias of
          // column-parallel rows) holds this rank's part of it.
          const auto [begin, end] =
              slot.split == TpSplit::kRows ? RankPart(slot.rows, index, tp)
                                           : std::pair<int64_t, int64_t>{0, slot.rows};
          const int64_t n = end - begin;
          *slot.vector = static_cast<const float*>(
              upload(*slot.vector, static_cast<size_t>(n) * sizeof(float)));
        }
      });

      // KV cache: K then V of each layer, this rank's kv heads, laid out as
      // the host cache would be.
      const int64_t per_layer =
          int64_t{cache.num_blocks()} * kKvBlockSize * r.kv_heads * spec.head_dim;  // K or V
      r.kv_storage =
          cuda::DeviceBuffer(static_cast<size_t>(2 * per_layer * layers) * sizeof(float));
      for (int l = 0; l < layers; ++l) {
        float* base = r.kv_storage.As<float>() + 2 * per_layer * l;
        r.kv_layers.push_back({.k = base, .v = base + per_layer, .num_blocks = cache.num_blocks(),
                               .block_size = kKvBlockSize, .num_kv_heads = r.kv_heads,
                               .head_dim = spec.head_dim});
      }
      const cpu::RopeTable rope(RopeParamsFor(spec));
      r.inv_freq = cuda::DeviceBuffer::FromHost(std::span<const double>(rope.inv_freq));

      r.residual = r.Floats(max_t * H);
      r.normed = r.Floats(max_t * H);
      r.q = r.Floats(max_t * r.q_width);
      r.k = r.Floats(max_t * r.kv_width);
      r.v = r.Floats(max_t * r.kv_width);
      r.attn = r.Floats(max_t * r.q_width);
      r.proj = r.Floats(max_t * H);
      r.gate = r.Floats(max_t * r.inter_width);
      r.up = r.Floats(max_t * r.inter_width);
      if (last) {
        r.vocab_rows = r.w.lm_head.rows;
        r.vocab_begin = r.w.lm_head_row_begin;
        r.last_hidden = r.Floats(max_s * H);
        r.logits = r.Floats(max_s * spec.vocab_size);
        if (tp > 1) r.rank_logits = r.Floats(max_s * r.vocab_rows);
      }
      const int64_t widest = std::max<int64_t>({H, r.inter_width, r.q_width});
      r.gemm_scratch = cuda::DeviceBuffer(cuda::PrefillScratchBytes(max_t, widest));
      r.gemm = {.cublas = r.cublas, .scratch = r.gemm_scratch.data(),
                .scratch_bytes = r.gemm_scratch.bytes()};
      r.tokens = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
      r.positions = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
      r.table_offsets = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(int64_t));
      const size_t table_entries = static_cast<size_t>(std::max(cache.num_blocks(), 1));
      r.block_tables = cuda::DeviceBuffer(table_entries * sizeof(int32_t));
      r.attention_positions = cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
      r.attention_scratch = r.Floats(static_cast<int64_t>(
          cuda::PagedAttentionScratchFloats(max_t, r.heads, spec.head_dim)));
      r.tiles =
          cuda::DeviceBuffer(static_cast<size_t>(max_t) * sizeof(cuda::DeviceAttentionTile));
      CUDA_CHECK(cudaDeviceSynchronize());
    }

    // Rank 0 samples and stages the inputs and outputs of every rank.
    Host& h = *stage->host_;
    Rank& r0 = *stage->ranks_[0];
    device = r0.device;
    CUDA_CHECK(cudaSetDevice(device));
    if (last) {
      r0.raw_logits = r0.Floats(max_s * spec.vocab_size);
      const size_t params_bytes = static_cast<size_t>(max_s) * sizeof(cuda::DeviceSamplingParams);
      const size_t sampled_bytes = static_cast<size_t>(max_s) * sizeof(cuda::DeviceSampled);
      r0.sampling_params = cuda::DeviceBuffer(params_bytes);
      h.h_sampling_params = cuda::PinnedBuffer(params_bytes);
      r0.sampled = cuda::DeviceBuffer(sampled_bytes);
      h.h_sampled = cuda::PinnedBuffer(sampled_bytes);
      h.penalty_capacity = std::min(
          static_cast<size_t>(cache.num_blocks()) * kKvBlockSize + static_cast<size_t>(max_s),
          static_cast<size_t>(max_s) * static_cast<size_t>(spec.vocab_size));
      const size_t cap = std::max<size_t>(h.penalty_capacity, 1);
      r0.penalty_tokens = cuda::DeviceBuffer(cap * sizeof(int32_t));
      r0.penalty_counts = cuda::DeviceBuffer(cap * sizeof(int32_t));
      r0.penalty_in_prompt = cuda::DeviceBuffer(cap);
      h.h_penalty_tokens = cuda::PinnedBuffer(cap * sizeof(int32_t));
      h.h_penalty_counts = cuda::PinnedBuffer(cap * sizeof(int32_t));
      h.h_penalty_in_prompt = cuda::PinnedBuffer(cap);
      h.penalty_tokens_scratch.reserve(cap);
      h.penalty_counts_scratch.reserve(cap);
      h.penalty_in_prompt_scratch.reserve(cap);
      h.penalty_ranges.reserve(static_cast<size_t>(max_s));
      h.sampled_tokens.reserve(static_cast<size_t>(max_s));
    }
    h.reservations.resize(static_cast<size_t>(max_s));
    h.last_rows.resize(static_cast<size_t>(max_s));
    const size_t table_entries = static_cast<size_t>(std::max(cache.num_blocks(), 1));
    h.h_attention_positions = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    h.h_tiles = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(cuda::DeviceAttentionTile));
    h.h_tokens = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    h.h_positions = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(int32_t));
    h.h_table_offsets = cuda::PinnedBuffer(static_cast<size_t>(max_t) * sizeof(int64_t));
    h.h_block_tables = cuda::PinnedBuffer(table_entries * sizeof(int32_t));
    h.h_hidden = cuda::PinnedBuffer(static_cast<size_t>(max_t * H) * sizeof(float));
    const int64_t out_floats = last ? max_s * spec.vocab_size : max_t * H;
    h.h_out = cuda::PinnedBuffer(static_cast<size_t>(out_floats) * sizeof(float));
    CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const cuda::CudaError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot set up the stage on CUDA device ", device, ": ", e.what()));
  }

  if (tp == 1) {
    stage->ranks_[0]->comm = &stage->solo_;
  } else {
    std::vector<cudaStream_t> streams;
    for (const auto& r : stage->ranks_) streams.push_back(r->stream);
    ASSIGN_OR_RETURN(stage->group_, CudaRankGroup::Create(devices, streams));
    for (const auto& r : stage->ranks_) r->comm = stage->group_->rank(r->index);
  }
  stage->graphs_ = options.cuda_graphs && (stage->group_ == nullptr || stage->group_->capturable());
  return stage;
}

CudaStageExecutor::CudaStageExecutor(const ModelSpec& spec, const StageOptions& options,
                                     PagedKvCache kv)
    : spec_(spec),
      options_(options),
      kv_(std::move(kv)),
      host_(std::make_unique<Host>()),
      threads_(options.tp) {}

CudaStageExecutor::~CudaStageExecutor() = default;

std::string CudaStageExecutor::device_name() const {
  std::string name = "cuda:";
  for (const auto& r : ranks_) absl::StrAppend(&name, r->index > 0 ? "," : "", r->device);
  return name;
}

size_t CudaStageExecutor::weight_bytes_per_step() const { return bytes_per_step_; }

size_t CudaStageExecutor::weight_bytes() const {
  size_t bytes = 0;
  for (const auto& r : ranks_) bytes += r->weight_bytes;
  return bytes;
}

size_t CudaStageExecutor::device_bytes() const {
  size_t bytes = 0;
  for (const auto& r : ranks_) bytes += r->weight_bytes + r->kv_storage.bytes() + r->activation_bytes;
  return bytes;
}

StatusOr<int64_t> CudaStageExecutor::PrepareStep(std::span<const SequenceStep> seqs,
                                                 std::span<const int32_t> tokens,
                                                 std::span<const float> hidden) {
  RETURN_IF_ERROR(broken_);
  RETURN_IF_ERROR(ValidateStageStep(spec_, options_, seqs, tokens, hidden));
  Host& h = *host_;
  for (size_t i = 0; i < seqs.size(); ++i) {
    h.reservations[i] = {.seq_id = seqs[i].seq_id, .start = seqs[i].start,
                         .length = seqs[i].start + seqs[i].count};
  }
  RETURN_IF_ERROR(kv_.Reserve(std::span<const KvReservation>(h.reservations.data(), seqs.size())));

  int32_t* positions = h.h_positions.As<int32_t>();
  int32_t* attention_positions = h.h_attention_positions.As<int32_t>();
  int64_t* offsets = h.h_table_offsets.As<int64_t>();
  int32_t* tables = h.h_block_tables.As<int32_t>();
  auto* tiles = h.h_tiles.As<cuda::DeviceAttentionTile>();
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
    h.last_rows[i] = row - 1;
  }
  table_entries_ = table_size;
  num_tiles_ = num_tiles;
  if (is_first()) {
    std::memcpy(h.h_tokens.data(), tokens.data(), tokens.size_bytes());
  } else {
    std::memcpy(h.h_hidden.data(), hidden.data(), hidden.size_bytes());
  }
  return row;
}

Status CudaStageExecutor::RunStep(int64_t T, int64_t S, bool sample) {
  threads_.Run([&](int index) {
    Rank& r = *ranks_[static_cast<size_t>(index)];
    r.error.clear();
    try {
      RunRankStep(r, T, S, sample);
    } catch (const cuda::CudaError& e) {
      r.error = e.what();
      // The other ranks may wait in a reduction for this one.
      if (group_ != nullptr) group_->Abort();
    }
  });
  for (const auto& r : ranks_) {
    if (r->error.empty()) continue;
    Status failed = absl::InternalError(absl::StrCat("CUDA device ", r->device, ": ", r->error));
    if (group_ != nullptr) {
      broken_ = absl::FailedPreconditionError(absl::StrCat(
          "this GPU stage stopped after an earlier failure (restart the node): ",
          failed.message()));
    }
    return failed;
  }
  return absl::OkStatus();
}

void CudaStageExecutor::RunRankStep(Rank& r, int64_t T, int64_t S, bool sample) {
  Host& h = *host_;
  // Decode-only steps of few sequences replay a captured graph: the same
  // kernels, launched at once. Only the metadata copies stay outside it
  // (the block tables change size from step to step).
  const bool graph = graphs_ && T == S && T <= cuda::kMaxDecodeTokens;
  CUDA_CHECK(cudaSetDevice(r.device));
  cudaStream_t s = r.stream;
  CUDA_CHECK(cudaMemcpyAsync(r.positions.data(), h.h_positions.data(), T * sizeof(int32_t),
                             cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(r.table_offsets.data(), h.h_table_offsets.data(),
                             T * sizeof(int64_t), cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(r.block_tables.data(), h.h_block_tables.data(),
                             table_entries_ * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(r.attention_positions.data(), h.h_attention_positions.data(),
                             T * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  if (num_tiles_ > 0) {
    CUDA_CHECK(cudaMemcpyAsync(r.tiles.data(), h.h_tiles.data(),
                               num_tiles_ * sizeof(cuda::DeviceAttentionTile),
                               cudaMemcpyHostToDevice, s));
  }
  if (sample && r.index == 0) {
    CUDA_CHECK(cudaMemcpyAsync(r.sampling_params.data(), h.h_sampling_params.data(),
                               S * sizeof(cuda::DeviceSamplingParams), cudaMemcpyHostToDevice, s));
    if (h.penalty_count > 0) {
      CUDA_CHECK(cudaMemcpyAsync(r.penalty_tokens.data(), h.h_penalty_tokens.data(),
                                 h.penalty_count * sizeof(int32_t), cudaMemcpyHostToDevice, s));
      CUDA_CHECK(cudaMemcpyAsync(r.penalty_counts.data(), h.h_penalty_counts.data(),
                                 h.penalty_count * sizeof(int32_t), cudaMemcpyHostToDevice, s));
      CUDA_CHECK(cudaMemcpyAsync(r.penalty_in_prompt.data(), h.h_penalty_in_prompt.data(),
                                 h.penalty_count, cudaMemcpyHostToDevice, s));
    }
  }
  if (graph) {
    cudaGraphExec_t& exec = (sample ? r.sampling_graphs : r.graphs)[static_cast<size_t>(T)];
    if (exec == nullptr) {
      cudaGraph_t captured = nullptr;
      CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      try {
        EnqueueStep(r, T, S, sample);
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
    EnqueueStep(r, T, S, sample);
  }
  CUDA_CHECK(cudaStreamSynchronize(s));
}

StatusOr<std::span<const float>> CudaStageExecutor::Forward(std::span<const SequenceStep> seqs,
                                                            std::span<const int32_t> tokens,
                                                            std::span<const float> hidden) {
  ASSIGN_OR_RETURN(const int64_t T, PrepareStep(seqs, tokens, hidden));
  const int64_t S = static_cast<int64_t>(seqs.size());
  RETURN_IF_ERROR(RunStep(T, S, /*sample=*/false));
  const size_t out_floats =
      static_cast<size_t>(is_last() ? S * spec_.vocab_size : T * spec_.hidden_size);
  return std::span<const float>(host_->h_out.As<float>(), out_floats);
}

StatusOr<std::span<const SampledToken>> CudaStageExecutor::ForwardAndSample(
    std::span<const SequenceStep> seqs, std::span<const int32_t> tokens,
    std::span<const float> hidden, std::span<SequenceSampler* const> samplers) {
  RETURN_IF_ERROR(ValidateSamplers(seqs, samplers));
  Host& h = *host_;
  // The penalty tokens first: a step whose tokens would not fit is refused
  // before the KV cache changes.
  h.penalty_tokens_scratch.clear();
  h.penalty_counts_scratch.clear();
  h.penalty_in_prompt_scratch.clear();
  h.penalty_ranges.clear();
  for (SequenceSampler* sampler : samplers) {
    const int32_t begin = static_cast<int32_t>(h.penalty_tokens_scratch.size());
    if (sampler != nullptr) {
      sampler->AppendPenaltyTokens(&h.penalty_tokens_scratch, &h.penalty_counts_scratch,
                                   &h.penalty_in_prompt_scratch);
    }
    h.penalty_ranges.emplace_back(begin,
                                  static_cast<int32_t>(h.penalty_tokens_scratch.size()) - begin);
  }
  const size_t penalty_count = h.penalty_tokens_scratch.size();
  if (penalty_count > h.penalty_capacity) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the step's sequences have ", penalty_count,
                     " distinct earlier tokens to penalize, more than the ", h.penalty_capacity,
                     " this stage holds room for"));
  }
  ASSIGN_OR_RETURN(const int64_t T, PrepareStep(seqs, tokens, hidden));
  const int64_t S = static_cast<int64_t>(seqs.size());
  // Draws come after every check, so a refused step leaves the generators
  // as they were.
  auto* params = h.h_sampling_params.As<cuda::DeviceSamplingParams>();
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
                 .penalty_begin = h.penalty_ranges[i].first,
                 .penalty_count = h.penalty_ranges[i].second};
  }
  h.penalty_count = penalty_count;
  if (penalty_count > 0) {
    std::memcpy(h.h_penalty_tokens.data(), h.penalty_tokens_scratch.data(),
                penalty_count * sizeof(int32_t));
    std::memcpy(h.h_penalty_counts.data(), h.penalty_counts_scratch.data(),
                penalty_count * sizeof(int32_t));
    std::memcpy(h.h_penalty_in_prompt.data(), h.penalty_in_prompt_scratch.data(), penalty_count);
  }
  RETURN_IF_ERROR(RunStep(T, S, /*sample=*/true));
  const auto* got = h.h_sampled.As<cuda::DeviceSampled>();
  h.sampled_tokens.assign(seqs.size(), SampledToken{.token = -1, .logprob = 0.0f});
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (samplers[i] == nullptr) continue;
    h.sampled_tokens[i] = {.token = got[i].token, .logprob = got[i].logprob};
    samplers[i]->Record(got[i].token);
  }
  return std::span<const SampledToken>(h.sampled_tokens);
}

// Enqueues one rank's whole step on its stream, after the metadata copies:
// the inputs from pinned memory, every layer, the head on the last stage,
// and on rank 0 the output into pinned memory.
void CudaStageExecutor::EnqueueStep(Rank& r, int64_t T, int64_t S, bool sample) {
  Host& h = *host_;
  cudaStream_t s = r.stream;
  const int64_t H = spec_.hidden_size;
  if (is_first()) {
    CUDA_CHECK(cudaMemcpyAsync(r.tokens.data(), h.h_tokens.data(), T * sizeof(int32_t),
                               cudaMemcpyHostToDevice, s));
    cuda::EmbeddingLookup(View(r.w.embedding), r.tokens.As<int32_t>(), T, r.residual.As<float>(),
                          s);
  } else {
    CUDA_CHECK(cudaMemcpyAsync(r.residual.data(), h.h_hidden.data(), T * H * sizeof(float),
                               cudaMemcpyHostToDevice, s));
  }
  RunLayers(r, T);
  float* out = h.h_out.As<float>();
  if (!is_last()) {
    if (r.index == 0) {
      CUDA_CHECK(cudaMemcpyAsync(out, r.residual.data(), T * H * sizeof(float),
                                 cudaMemcpyDeviceToHost, s));
    }
    return;
  }
  float* last = r.last_hidden.As<float>();
  for (int64_t i = 0; i < S; ++i) {
    CUDA_CHECK(cudaMemcpyAsync(last + i * H, r.residual.As<float>() + h.last_rows[i] * H,
                               H * sizeof(float), cudaMemcpyDeviceToDevice, s));
  }
  cuda::RmsNorm(last, r.w.final_norm, static_cast<float>(spec_.rms_norm_eps), S, H, last, s);
  const int64_t vocab = spec_.vocab_size;
  float* logits = r.logits.As<float>();
  if (ranks_.size() == 1) {
    cuda::MatMul(r.gemm, last, S, View(r.w.lm_head), nullptr, logits, s);
  } else {
    // This rank's vocabulary columns into a zeroed [S, vocab]; the sum over
    // the ranks is then every rank's columns.
    cuda::MatMul(r.gemm, last, S, View(r.w.lm_head), nullptr, r.rank_logits.As<float>(), s);
    CUDA_CHECK(cudaMemsetAsync(logits, 0, S * vocab * sizeof(float), s));
    CUDA_CHECK(cudaMemcpy2DAsync(logits + r.vocab_begin, vocab * sizeof(float),
                                 r.rank_logits.data(), r.vocab_rows * sizeof(float),
                                 r.vocab_rows * sizeof(float), S, cudaMemcpyDeviceToDevice, s));
    r.comm->AllReduceSum(logits, static_cast<size_t>(S * vocab));
  }
  if (r.index != 0) return;
  if (!sample) {
    CUDA_CHECK(cudaMemcpyAsync(out, logits, S * vocab * sizeof(float), cudaMemcpyDeviceToHost, s));
    return;
  }
  cuda::SampleTokens(logits, S, vocab, r.sampling_params.As<cuda::DeviceSamplingParams>(),
                     {.tokens = r.penalty_tokens.As<int32_t>(),
                      .output_counts = r.penalty_counts.As<int32_t>(),
                      .in_prompt = r.penalty_in_prompt.As<uint8_t>()},
                     r.raw_logits.As<float>(), r.sampled.As<cuda::DeviceSampled>(), s);
  CUDA_CHECK(cudaMemcpyAsync(h.h_sampled.data(), r.sampled.data(),
                             S * sizeof(cuda::DeviceSampled), cudaMemcpyDeviceToHost, s));
}

// Every layer of the stage on one rank's stream: column-parallel q/k/v and
// gate/up give this rank's heads and intermediate columns, row-parallel
// o_proj and down_proj partial sums that one all-reduce each completes.
// Each residual add is fused with the norm that follows it.
void CudaStageExecutor::RunLayers(Rank& r, int64_t T) {
  cudaStream_t s = r.stream;
  const int64_t H = spec_.hidden_size;
  const float eps = static_cast<float>(spec_.rms_norm_eps);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(spec_.head_dim)));
  const cuda::DeviceAttentionRows rows{.positions = r.positions.As<int32_t>(),
                                       .table_offsets = r.table_offsets.As<int64_t>(),
                                       .block_tables = r.block_tables.As<int32_t>(),
                                       .rows = T};
  // The row kernel attends decode rows (and every row where the tiled
  // kernel does not apply); the tiled kernel the prefill chunks' rows.
  cuda::DeviceAttentionRows attend_rows = rows;
  attend_rows.positions = r.attention_positions.As<int32_t>();
  float* residual = r.residual.As<float>();
  float* normed = r.normed.As<float>();
  float* proj = r.proj.As<float>();
  const size_t reduce = static_cast<size_t>(T * H);
  for (size_t l = 0; l < r.w.layers.size(); ++l) {
    const LayerWeights& w = r.w.layers[l];
    if (l == 0) {
      cuda::RmsNorm(residual, w.input_norm, eps, T, H, normed, s);
    } else {
      cuda::AddRmsNorm(residual, proj, w.input_norm, eps, T, H, normed, s);
    }
    cuda::MatMul(r.gemm, normed, T, View(w.q), w.q_bias, r.q.As<float>(), s);
    cuda::MatMul(r.gemm, normed, T, View(w.k), w.k_bias, r.k.As<float>(), s);
    cuda::MatMul(r.gemm, normed, T, View(w.v), w.v_bias, r.v.As<float>(), s);
    cuda::ApplyRope(r.inv_freq.As<double>(), spec_.head_dim, r.q.As<float>(), T, r.heads,
                    rows.positions, s);
    cuda::ApplyRope(r.inv_freq.As<double>(), spec_.head_dim, r.k.As<float>(), T, r.kv_heads,
                    rows.positions, s);
    cuda::WriteKv(r.kv_layers[l], r.k.As<float>(), r.v.As<float>(), rows, s);
    cuda::PagedAttention(r.q.As<float>(), r.kv_layers[l], attend_rows, r.heads, scale,
                         r.attention_scratch.As<float>(), r.attn.As<float>(), s);
    cuda::PagedPrefillAttention(r.q.As<float>(), r.kv_layers[l], rows,
                                r.tiles.As<cuda::DeviceAttentionTile>(), num_tiles_, r.heads,
                                scale, r.attn.As<float>(), s);
    cuda::MatMul(r.gemm, r.attn.As<float>(), T, View(w.o), nullptr, proj, s);
    r.comm->AllReduceSum(proj, reduce);
    cuda::AddRmsNorm(residual, proj, w.post_norm, eps, T, H, normed, s);
    cuda::MatMul(r.gemm, normed, T, View(w.gate), nullptr, r.gate.As<float>(), s);
    cuda::MatMul(r.gemm, normed, T, View(w.up), nullptr, r.up.As<float>(), s);
    cuda::SiluMul(r.gate.As<float>(), r.up.As<float>(), r.gate.As<float>(), T * r.inter_width, s);
    cuda::MatMul(r.gemm, r.gate.As<float>(), T, View(w.down), nullptr, proj, s);
    r.comm->AllReduceSum(proj, reduce);
  }
  if (!r.w.layers.empty()) cuda::AddInPlace(residual, proj, T * H, s);
}

}  // namespace tandem
