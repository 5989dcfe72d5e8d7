#include "node/stage_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/cpu/matmul.h"

namespace tandem {

// The state of one tensor-parallel rank: its weights, thread pool,
// communicator and activation buffers (allocated once, for the largest batch).
struct StageExecutor::Rank {
  int index = 0;
  const StageWeights* w = nullptr;
  Communicator* comm = nullptr;
  std::unique_ptr<cpu::ThreadPool> pool;
  int heads = 0;     // query heads of this rank
  int kv_heads = 0;  // kv heads of this rank
  int64_t q_width = 0, kv_width = 0, inter_width = 0, vocab_rows = 0;

  AlignedBuffer residual;     // [max_tokens, hidden]
  AlignedBuffer normed;       // [max_tokens, hidden]
  AlignedBuffer q;            // [max_tokens, q_size / tp]
  AlignedBuffer k;            // [max_tokens, kv_size / tp]
  AlignedBuffer v;            // [max_tokens, kv_size / tp]
  AlignedBuffer attn;         // [max_tokens, q_size / tp]
  AlignedBuffer proj;         // [max_tokens, hidden]: o_proj / down_proj partial sums
  AlignedBuffer gate;         // [max_tokens, intermediate / tp]
  AlignedBuffer up;           // [max_tokens, intermediate / tp]
  AlignedBuffer last_hidden;  // [max_seqs, hidden], last stage
  AlignedBuffer logits;       // [max_seqs, vocab / tp], last stage
};

namespace {
AlignedBuffer Floats(int64_t rows, int64_t cols) {
  return AlignedBuffer(static_cast<size_t>(std::max<int64_t>(rows * cols, 1)) * sizeof(float));
}
}  // namespace

StatusOr<std::unique_ptr<StageExecutor>> StageExecutor::Create(
    const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
    const StageOptions& options) {
  if (options.max_batch_tokens < 1 || options.max_batch_sequences < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max batch tokens (", options.max_batch_tokens, ") and sequences (",
        options.max_batch_sequences, ") must be at least 1"));
  }
  if (options.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threads ", options.threads, " must be >= 0"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LoadedStageWeights> weights,
                   LoadStageWeights(spec, std::move(checkpoint),
                                    WeightLoadOptions{.range = options.range,
                                                      .tp = options.tp,
                                                      .quantize = options.quantize,
                                                      .int4_group_size = options.int4_group_size,
                                                      .load_threads = options.threads,
                                                      .cpu_layout = true}));
  ASSIGN_OR_RETURN(
      PagedKvCache kv,
      PagedKvCache::Create(PagedKvCacheOptions{
          .num_layers = options.range.layer_end - options.range.layer_begin,
          .tp = options.tp,
          .kv_heads_per_rank = spec.num_kv_heads / options.tp,
          .head_dim = spec.head_dim,
          .budget_bytes = options.kv_budget_bytes}));
  return std::unique_ptr<StageExecutor>(
      new StageExecutor(spec, options, std::move(weights), std::move(kv)));
}

StageExecutor::StageExecutor(const ModelSpec& spec, const StageOptions& options,
                             std::unique_ptr<LoadedStageWeights> weights, PagedKvCache kv)
    : spec_(spec),
      options_(options),
      weights_(std::move(weights)),
      kv_(std::move(kv)),
      group_(options.tp),
      rope_(RopeParamsFor(spec)),
      positions_(static_cast<size_t>(options.max_batch_tokens)),
      attn_seqs_(static_cast<size_t>(options.max_batch_sequences)),
      last_rows_(static_cast<size_t>(options.max_batch_sequences)),
      reservations_(static_cast<size_t>(options.max_batch_sequences)),
      rank_threads_(options.tp) {
  const int tp = options.tp;
  const int64_t max_t = options.max_batch_tokens, max_s = options.max_batch_sequences;
  const int total_threads =
      options.threads > 0 ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int per_rank = std::max(1, total_threads / tp);
  for (int r = 0; r < tp; ++r) {
    auto rank = std::make_unique<Rank>();
    rank->index = r;
    rank->w = &weights_->rank(r);
    rank->comm = group_.rank_communicator(r);
    rank->pool = std::make_unique<cpu::ThreadPool>(per_rank);
    rank->heads = spec.num_heads / tp;
    rank->kv_heads = spec.num_kv_heads / tp;
    rank->q_width = int64_t{rank->heads} * spec.head_dim;
    rank->kv_width = int64_t{rank->kv_heads} * spec.head_dim;
    rank->inter_width = spec.intermediate_size / tp;
    const int64_t hidden = spec.hidden_size;
    rank->residual = Floats(max_t, hidden);
    rank->normed = Floats(max_t, hidden);
    rank->q = Floats(max_t, rank->q_width);
    rank->k = Floats(max_t, rank->kv_width);
    rank->v = Floats(max_t, rank->kv_width);
    rank->attn = Floats(max_t, rank->q_width);
    rank->proj = Floats(max_t, hidden);
    rank->gate = Floats(max_t, rank->inter_width);
    rank->up = Floats(max_t, rank->inter_width);
    if (is_last()) {
      rank->vocab_rows = rank->w->lm_head.rows;
      rank->last_hidden = Floats(max_s, hidden);
      rank->logits = Floats(max_s, rank->vocab_rows);
    }
    ranks_.push_back(std::move(rank));
  }
  if (is_last()) logits_ = Floats(max_s, spec.vocab_size);
}

StageExecutor::~StageExecutor() = default;

int StageExecutor::threads_per_rank() const { return ranks_[0]->pool->size(); }

StatusOr<std::span<const float>> StageExecutor::Forward(std::span<const SequenceStep> seqs,
                                                        std::span<const int32_t> tokens,
                                                        std::span<const float> hidden) {
  RETURN_IF_ERROR(ValidateStageStep(spec_, options_, seqs, tokens, hidden));
  KvReservation* res = reservations_.data();  // [max_batch_sequences]
  int64_t row = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    res[i] = KvReservation{.seq_id = seqs[i].seq_id,
                           .start = seqs[i].start,
                           .length = seqs[i].start + seqs[i].count};
  }
  RETURN_IF_ERROR(kv_.Reserve(std::span<const KvReservation>(res, seqs.size())));
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SequenceStep& s = seqs[i];
    for (int64_t j = 0; j < s.count; ++j) {
      positions_[static_cast<size_t>(row + j)] = static_cast<int32_t>(s.start + j);
    }
    attn_seqs_[i] = cpu::AttentionSequence{.q_begin = row,
                                           .q_len = s.count,
                                           .context_len = s.start + s.count,
                                           .block_table = kv_.BlockTable(s.seq_id).data()};
    row += s.count;
    last_rows_[i] = row - 1;
  }
  num_tokens_ = row;
  num_seqs_ = static_cast<int64_t>(seqs.size());
  step_tokens_ = tokens;
  step_hidden_ = hidden;

  rank_threads_.Run([this](int r) { RunRank(*ranks_[static_cast<size_t>(r)]); });

  if (!is_last()) {
    return std::span<const float>(ranks_[0]->residual.As<float>(),
                                  static_cast<size_t>(num_tokens_ * spec_.hidden_size));
  }
  float* logits = logits_.As<float>();
  const int64_t vocab = spec_.vocab_size;
  for (const auto& rank : ranks_) {
    const int64_t begin = rank->w->lm_head_row_begin, rows = rank->vocab_rows;
    for (int64_t s = 0; s < num_seqs_; ++s) {
      std::memcpy(logits + s * vocab + begin, rank->logits.As<float>() + s * rows,
                  static_cast<size_t>(rows) * sizeof(float));
    }
  }
  return std::span<const float>(logits, static_cast<size_t>(num_seqs_ * vocab));
}

void StageExecutor::RunRank(Rank& rank) {
  const StageWeights& w = *rank.w;
  const int64_t T = num_tokens_, H = spec_.hidden_size;
  float* residual = rank.residual.As<float>();
  if (is_first()) {
    cpu::EmbeddingLookup(w.embedding, step_tokens_.data(), T, residual);
  } else {
    std::memcpy(residual, step_hidden_.data(), static_cast<size_t>(T * H) * sizeof(float));
  }
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerForward(rank, w.layers[l], kv_.Layer(rank.index, static_cast<int>(l)));
  }
  if (!is_last()) return;
  // Final norm and this rank's rows of lm_head, for each sequence's last token.
  float* last = rank.last_hidden.As<float>();
  for (int64_t s = 0; s < num_seqs_; ++s) {
    std::memcpy(last + s * H, residual + last_rows_[static_cast<size_t>(s)] * H,
                static_cast<size_t>(H) * sizeof(float));
  }
  cpu::RmsNorm(last, w.final_norm, static_cast<float>(spec_.rms_norm_eps), num_seqs_, H, last);
  cpu::MatMul(*rank.pool, last, num_seqs_, w.lm_head, nullptr, rank.logits.As<float>());
}

// One decoder layer on one rank. Column-parallel q/k/v and gate/up produce
// this rank's heads and intermediate columns; row-parallel o_proj and
// down_proj produce partial sums that the all-reduces complete.
void StageExecutor::LayerForward(Rank& rank, const LayerWeights& w, cpu::PagedKv& kv) {
  cpu::ThreadPool& pool = *rank.pool;
  const int64_t T = num_tokens_, H = spec_.hidden_size;
  const float eps = static_cast<float>(spec_.rms_norm_eps);
  const std::span<const cpu::AttentionSequence> seqs(attn_seqs_.data(),
                                                     static_cast<size_t>(num_seqs_));
  float* residual = rank.residual.As<float>();  // [T, H]
  float* normed = rank.normed.As<float>();      // [T, H]
  float* q = rank.q.As<float>();                // [T, heads / tp, head_dim]
  float* k = rank.k.As<float>();                // [T, kv_heads / tp, head_dim]
  float* v = rank.v.As<float>();                // [T, kv_heads / tp, head_dim]
  float* attn = rank.attn.As<float>();          // [T, heads / tp, head_dim]
  float* proj = rank.proj.As<float>();          // [T, H]
  float* gate = rank.gate.As<float>();          // [T, intermediate / tp]
  float* up = rank.up.As<float>();              // [T, intermediate / tp]

  // Attention block.
  cpu::RmsNorm(residual, w.input_norm, eps, T, H, normed);
  const cpu::MatMulProduct qkv[] = {{.w = &w.q, .bias = w.q_bias, .y = q},
                                     {.w = &w.k, .bias = w.k_bias, .y = k},
                                     {.w = &w.v, .bias = w.v_bias, .y = v}};
  cpu::MatMulShared(pool, normed, T, qkv);
  cpu::ApplyRope(rope_, q, T, rank.heads, positions_.data());
  cpu::ApplyRope(rope_, k, T, rank.kv_heads, positions_.data());
  cpu::WriteKv(kv, k, v, seqs);
  cpu::PagedAttention(pool, q, kv, seqs, rank.heads,
                      static_cast<float>(1.0 / std::sqrt(static_cast<double>(spec_.head_dim))),
                      attn);
  cpu::MatMul(pool, attn, T, w.o, nullptr, proj);
  rank.comm->AllReduceSum(proj, static_cast<size_t>(T * H));
  cpu::AddInPlace(residual, proj, T * H);

  // MLP block.
  cpu::RmsNorm(residual, w.post_norm, eps, T, H, normed);
  const cpu::MatMulProduct gate_up[] = {{.w = &w.gate, .y = gate}, {.w = &w.up, .y = up}};
  cpu::MatMulShared(pool, normed, T, gate_up);
  cpu::SiluMul(gate, up, gate, T * rank.inter_width);
  cpu::MatMul(pool, gate, T, w.down, nullptr, proj);
  rank.comm->AllReduceSum(proj, static_cast<size_t>(T * H));
  cpu::AddInPlace(residual, proj, T * H);
}

}  // namespace tandem
