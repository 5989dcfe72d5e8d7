#pragma once
// The weights one tensor-parallel rank of a stage computes with, described
// once: StageWeights::ForEachTensor names every tensor of the stage with its
// full checkpoint shape, how it is split across ranks, and the slot it is
// loaded into. Loading, layer-range slicing, TP sharding and quantization all
// walk that one description (LoadStageWeights below).
//
// Without WeightLoadOptions::cpu_layout (GPU stages, which upload them),
// matrices stay in the checkpoint's mapped memory whenever they can (a whole
// matrix or a block of its rows, kept in the stored dtype); a column slice or
// a quantized matrix is materialized into owned buffers. CPU stages own every
// matrix (cpu_layout). Norm weights and biases are widened to f32 once at
// load.
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "model/tensor_names.h"

namespace tandem {

enum class WeightQuantization { kNone, kInt8, kInt4 };
// "none", "int8", "int4".
StatusOr<WeightQuantization> ParseWeightQuantization(std::string_view name);
std::string_view WeightQuantizationName(WeightQuantization q);

// How a tensor is divided among the tp ranks of a stage.
enum class TpSplit {
  kReplicated,  // every rank holds all of it
  kRows,        // column-parallel: rank r holds output rows [r*R/tp, (r+1)*R/tp)
  kColumns,     // row-parallel: rank r holds input columns [r*C/tp, (r+1)*C/tp)
};

// Rank `rank`'s part [begin, end) of `n` rows or columns split over tp ranks.
std::pair<int64_t, int64_t> RankPart(int64_t n, int rank, int tp);

// One entry of the description.
struct TensorSlot {
  std::string name;      // Hugging Face tensor name
  int64_t rows = 0;      // full shape in the checkpoint: [rows, cols], or [rows] when cols == 0
  int64_t cols = 0;
  TpSplit split = TpSplit::kReplicated;
  cpu::WeightMatrix* matrix = nullptr;  // destination of a matrix
  const float** vector = nullptr;       // destination of a vector (f32)
};

struct LayerWeights {
  const float* input_norm = nullptr;  // [hidden]
  cpu::WeightMatrix q;                // [q_size / tp, hidden]
  cpu::WeightMatrix k;                // [kv_size / tp, hidden]
  cpu::WeightMatrix v;                // [kv_size / tp, hidden]
  const float* q_bias = nullptr;      // [q_size / tp], attention_bias only
  const float* k_bias = nullptr;      // [kv_size / tp]
  const float* v_bias = nullptr;      // [kv_size / tp]
  cpu::WeightMatrix o;                // [hidden, q_size / tp]
  const float* post_norm = nullptr;   // [hidden]
  cpu::WeightMatrix gate;             // [intermediate / tp, hidden]
  cpu::WeightMatrix up;               // [intermediate / tp, hidden]
  cpu::WeightMatrix down;             // [hidden, intermediate / tp]
};

// Which part of the model a stage runs.
struct StageRange {
  int layer_begin = 0;
  int layer_end = 0;  // exclusive
  bool first() const { return layer_begin == 0; }
  bool last(const ModelSpec& spec) const { return layer_end == spec.num_layers; }
};

struct StageWeights {
  ModelSpec spec = {};
  StageRange range = {};
  cpu::WeightMatrix embedding = {};       // [vocab, hidden], first stage only
  std::vector<LayerWeights> layers = {};  // layers [range.layer_begin, range.layer_end)
  const float* final_norm = nullptr;      // [hidden], last stage only
  cpu::WeightMatrix lm_head = {};  // [vocab / tp, hidden] rows of this rank, last stage only
  int64_t lm_head_row_begin = 0;      // first vocab id of this rank's lm_head rows

  // Calls visit(TensorSlot&) for every tensor this stage needs, in forward
  // order. `layers` must already hold range.layer_end - range.layer_begin
  // entries. With tied embeddings lm_head reads the embedding tensor.
  template <typename Visitor>
  void ForEachTensor(Visitor&& visit);
};

struct WeightLoadOptions {
  StageRange range = {};
  int tp = 1;
  WeightQuantization quantize = WeightQuantization::kNone;
  int int4_group_size = 32;
  int load_threads = 0;  // threads that quantize at load; 0: all cores
  // The layout the CPU kernels stream fastest. Every matrix is copied out of
  // the checkpoint into owned memory: a decode step streamed bf16 weights
  // 1.15-1.27x faster from there than from the file's page-cache mapping
  // (Llama-3.2-1B shapes, 2 cores, alternated runs, whether or not the
  // file's tensors were 64-byte aligned). Wide f32/f16/bf16 matrices are in
  // the column blocks of cpu::ColumnBlockFor; the embedding stays row-major
  // (its rows are looked up). CPU stages set it; GPU stages upload row-major
  // matrices straight from the mapping.
  bool cpu_layout = false;
};

// The weights of every rank of a stage, and the memory behind them.
class LoadedStageWeights {
 public:
  const StageWeights& rank(int r) const { return ranks_[static_cast<size_t>(r)]; }
  int tp() const { return static_cast<int>(ranks_.size()); }
  // Bytes a decode step streams on all ranks together: every matrix and
  // vector of the stage once (lm_head included, the embedding only when it
  // is not also lm_head, as only a few of its rows are read).
  size_t bytes_per_step() const { return bytes_per_step_; }
  // Bytes of owned (materialized) weight memory.
  size_t owned_bytes() const { return owned_bytes_; }
  // Bytes of every distinct weight tensor the stage holds, owned or mapped
  // (a tensor shared by ranks or tied to another counts once).
  size_t weight_bytes() const { return weight_bytes_; }
  // Whether any weight still points into the checkpoint's mapping.
  bool uses_checkpoint() const { return checkpoint_ != nullptr; }

 private:
  friend StatusOr<std::unique_ptr<LoadedStageWeights>> LoadStageWeights(
      const ModelSpec&, std::shared_ptr<const Checkpoint>, const WeightLoadOptions&);
  std::vector<StageWeights> ranks_;
  std::deque<AlignedBuffer> buffers_;  // deque: references stay valid as it grows
  std::shared_ptr<const Checkpoint> checkpoint_;  // kept only while views point into it
  size_t bytes_per_step_ = 0;
  size_t owned_bytes_ = 0;
  size_t weight_bytes_ = 0;
};

// Loads the weights of `options.range` for every rank. Checks that the split
// is possible (heads, kv heads and intermediate size divisible by tp), that
// every tensor exists with the expected shape and a float dtype. The
// checkpoint is released once nothing points into it any more (everything
// quantized).
StatusOr<std::unique_ptr<LoadedStageWeights>> LoadStageWeights(
    const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
    const WeightLoadOptions& options);

template <typename Visitor>
void StageWeights::ForEachTensor(Visitor&& visit) {
  const int64_t hidden = spec.hidden_size;
  const int64_t q = spec.q_size(), kv = spec.kv_size(), inter = spec.intermediate_size;
  auto matrix = [&](std::string name, int64_t rows, int64_t cols, TpSplit split,
                    cpu::WeightMatrix* dst) {
    TensorSlot slot{.name = std::move(name), .rows = rows, .cols = cols, .split = split,
                    .matrix = dst};
    visit(slot);
  };
  auto vector = [&](std::string name, int64_t n, TpSplit split, const float** dst) {
    TensorSlot slot{.name = std::move(name), .rows = n, .cols = 0, .split = split,
                    .vector = dst};
    visit(slot);
  };
  if (range.first()) {
    matrix(std::string(kEmbedTokensName), spec.vocab_size, hidden, TpSplit::kReplicated,
           &embedding);
  }
  for (int i = range.layer_begin; i < range.layer_end; ++i) {
    LayerWeights& w = layers[static_cast<size_t>(i - range.layer_begin)];
    vector(LayerTensorName(i, "input_layernorm.weight"), hidden, TpSplit::kReplicated,
           &w.input_norm);
    matrix(LayerTensorName(i, "self_attn.q_proj.weight"), q, hidden, TpSplit::kRows, &w.q);
    matrix(LayerTensorName(i, "self_attn.k_proj.weight"), kv, hidden, TpSplit::kRows, &w.k);
    matrix(LayerTensorName(i, "self_attn.v_proj.weight"), kv, hidden, TpSplit::kRows, &w.v);
    if (spec.attention_bias) {
      vector(LayerTensorName(i, "self_attn.q_proj.bias"), q, TpSplit::kRows, &w.q_bias);
      vector(LayerTensorName(i, "self_attn.k_proj.bias"), kv, TpSplit::kRows, &w.k_bias);
      vector(LayerTensorName(i, "self_attn.v_proj.bias"), kv, TpSplit::kRows, &w.v_bias);
    }
    matrix(LayerTensorName(i, "self_attn.o_proj.weight"), hidden, q, TpSplit::kColumns, &w.o);
    vector(LayerTensorName(i, "post_attention_layernorm.weight"), hidden, TpSplit::kReplicated,
           &w.post_norm);
    matrix(LayerTensorName(i, "mlp.gate_proj.weight"), inter, hidden, TpSplit::kRows, &w.gate);
    matrix(LayerTensorName(i, "mlp.up_proj.weight"), inter, hidden, TpSplit::kRows, &w.up);
    matrix(LayerTensorName(i, "mlp.down_proj.weight"), hidden, inter, TpSplit::kColumns, &w.down);
  }
  if (range.last(spec)) {
    vector(std::string(kFinalNormName), hidden, TpSplit::kReplicated, &final_norm);
    matrix(std::string(spec.tie_word_embeddings ? kEmbedTokensName : kLmHeadName),
           spec.vocab_size, hidden, TpSplit::kRows, &lm_head);
  }
}

}  // namespace tandem
