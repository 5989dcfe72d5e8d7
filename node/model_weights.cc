#include "node/model_weights.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>

#include "core/check.h"
#include "model/mapped_file.h"

namespace tandem {

std::pair<int64_t, int64_t> RankPart(int64_t n, int rank, int tp) {
  return {n * rank / tp, n * (rank + 1) / tp};
}

StatusOr<WeightQuantization> ParseWeightQuantization(std::string_view name) {
  if (name == "none" || name.empty()) return WeightQuantization::kNone;
  if (name == "int8") return WeightQuantization::kInt8;
  if (name == "int4") return WeightQuantization::kInt4;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown quantization '", std::string(name), "' (expected none, int8 or int4)"));
}

std::string_view WeightQuantizationName(WeightQuantization q) {
  switch (q) {
    case WeightQuantization::kNone: return "none";
    case WeightQuantization::kInt8: return "int8";
    case WeightQuantization::kInt4: return "int4";
  }
  return "?";
}

namespace {

// Bytes of one stored row of `w`.
size_t RowBytes(DType dtype, int64_t cols) {
  if (dtype == DType::kI4) return static_cast<size_t>(cpu::Int4RowBytes(cols));
  return DTypeBytes(dtype, static_cast<size_t>(cols));
}

size_t ScalesPerRow(const cpu::WeightMatrix& w) {
  if (w.dtype == DType::kI8) return 1;
  if (w.dtype == DType::kI4) return static_cast<size_t>(cpu::Int4NumGroups(w.cols, w.group_size));
  return 0;
}

size_t MatrixBytes(const cpu::WeightMatrix& w) {
  return cpu::WeightDataBytes(w) + cpu::WeightScaleCount(w) * sizeof(float);
}

// Rows [begin, end) of `w` as a view (every supported layout keeps rows
// contiguous, with their scales).
cpu::WeightMatrix RowSlice(const cpu::WeightMatrix& w, int64_t begin, int64_t end) {
  cpu::WeightMatrix out = w;
  out.rows = end - begin;
  out.data = static_cast<const uint8_t*>(w.data) + RowBytes(w.dtype, w.cols) * static_cast<size_t>(begin);
  if (w.scales != nullptr) out.scales = w.scales + ScalesPerRow(w) * static_cast<size_t>(begin);
  return out;
}

class Loader {
 public:
  Loader(const Checkpoint& checkpoint, const WeightLoadOptions& options,
         std::deque<AlignedBuffer>& buffers)
      : checkpoint_(checkpoint),
        options_(options),
        buffers_(buffers),
        pool_(options.load_threads) {}

  Status Load(TensorSlot& slot, int rank, size_t* bytes_per_step) {
    ASSIGN_OR_RETURN(TensorInfo info, checkpoint_.Info(slot.name));
    const bool is_matrix = slot.matrix != nullptr;
    const Shape expected = is_matrix ? Shape{slot.rows, slot.cols} : Shape{slot.rows};
    if (!(info.shape == expected)) {
      return absl::InvalidArgumentError(
          absl::StrCat(checkpoint_.dir().string(), ": tensor ", slot.name, " has shape ",
                       info.shape.ToString(), ", expected ", expected.ToString(),
                       " from config.json"));
    }
    if (!IsFloat(info.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint_.dir().string(), ": tensor ",
                                                     slot.name, " has dtype ",
                                                     std::string(DTypeName(info.dtype)),
                                                     "; weights must be f32, f16, bf16 or f64"));
    }
    ASSIGN_OR_RETURN(TensorView view, checkpoint_.Get(slot.name));
    int64_t rb = 0, re = slot.rows, cb = 0, ce = slot.cols;
    if (slot.split == TpSplit::kRows) std::tie(rb, re) = RankPart(slot.rows, rank, options_.tp);
    if (slot.split == TpSplit::kColumns) std::tie(cb, ce) = RankPart(slot.cols, rank, options_.tp);
    if (!is_matrix) {
      *slot.vector = LoadVector(slot.name, view, rb, re);
      *bytes_per_step += static_cast<size_t>(re - rb) * sizeof(float);
      return absl::OkStatus();
    }
    *slot.matrix = LoadMatrix(slot.name, view, rb, re, cb, ce);
    if (slot.name != kEmbedTokensName || slot.split == TpSplit::kRows) {
      *bytes_per_step += MatrixBytes(*slot.matrix);
    }
    return absl::OkStatus();
  }

  bool uses_checkpoint() const { return uses_checkpoint_; }
  size_t distinct_bytes() const { return distinct_bytes_; }

 private:
  using Key = std::tuple<std::string, int64_t, int64_t, int64_t, int64_t>;

  const float* LoadVector(const std::string& name, const TensorView& src, int64_t begin,
                          int64_t end) {
    Key key{name, begin, end, 0, 0};
    if (auto it = vectors_.find(key); it != vectors_.end()) return it->second;
    AlignedBuffer& buf = buffers_.emplace_back(static_cast<size_t>(end - begin) * sizeof(float));
    const uint8_t* base = static_cast<const uint8_t*>(src.data);
    ConvertToF32(src.dtype, base + DTypeBytes(src.dtype, static_cast<size_t>(begin)),
                 buf.As<float>(), static_cast<size_t>(end - begin));
    distinct_bytes_ += buf.size();
    return vectors_[key] = buf.As<float>();
  }

  cpu::WeightMatrix LoadMatrix(const std::string& name, const TensorView& src, int64_t rb,
                               int64_t re, int64_t cb, int64_t ce) {
    const int64_t cols = src.shape[1];
    Key key{name, rb, re, cb, ce};
    if (auto it = matrices_.find(key); it != matrices_.end()) return it->second;
    // A block of rows of a matrix already materialized whole (tied lm_head).
    if (cb == 0 && ce == cols) {
      if (auto it = matrices_.find(Key{name, 0, src.shape[0], 0, cols}); it != matrices_.end()) {
        return matrices_[key] = RowSlice(it->second, rb, re);
      }
    }
    cpu::WeightMatrix full{.dtype = src.dtype, .rows = src.shape[0], .cols = cols,
                           .data = src.data};
    cpu::WeightMatrix out;
    const bool stored_ok = src.dtype == DType::kF32 || src.dtype == DType::kF16 ||
                           src.dtype == DType::kBF16;
    const int64_t col_block = options_.cpu_layout && name != kEmbedTokensName
                                  ? cpu::ColumnBlockFor(src.dtype, ce - cb)
                                  : 0;
    if (options_.quantize == WeightQuantization::kNone && stored_ok && cb == 0 && ce == cols &&
        !options_.cpu_layout) {
      uses_checkpoint_ = true;
      out = RowSlice(full, rb, re);
    } else if (options_.quantize == WeightQuantization::kNone && stored_ok) {
      out = CopyColumns(full, rb, re, cb, ce, col_block);
    } else {
      out = Quantize(src, rb, re, cb, ce);
    }
    distinct_bytes_ += MatrixBytes(out);
    return matrices_[key] = out;
  }

  // Rows [rb, re) and columns [cb, ce) of `full`, in its dtype and in
  // column blocks of col_block (0: row-major), owned. The mapped pages read
  // are let go, as nothing reads them there again.
  cpu::WeightMatrix CopyColumns(const cpu::WeightMatrix& full, int64_t rb, int64_t re, int64_t cb,
                                int64_t ce, int64_t col_block) {
    const size_t src_row = RowBytes(full.dtype, full.cols);
    const size_t rows = static_cast<size_t>(re - rb);
    AlignedBuffer& buf = buffers_.emplace_back(RowBytes(full.dtype, ce - cb) * rows);
    const uint8_t* src = static_cast<const uint8_t*>(full.data) + src_row * static_cast<size_t>(rb);
    cpu::CopyToColumnBlocks(pool_, src, static_cast<int64_t>(src_row), re - rb, cb, ce - cb,
                            DTypeBytes(full.dtype, 1), col_block, buf.data());
    ReleaseMappedPages(src, src_row * rows);
    return cpu::WeightMatrix{.dtype = full.dtype, .rows = re - rb, .cols = ce - cb,
                             .data = buf.data(), .col_block = col_block};
  }

  // Rows [rb, re) and columns [cb, ce) of `src`, quantized as the options ask
  // (or widened to f32 for an f64 checkpoint without quantization).
  cpu::WeightMatrix Quantize(const TensorView& src, int64_t rb, int64_t re, int64_t cb,
                             int64_t ce) {
    const int64_t rows = re - rb, cols = ce - cb, full_cols = src.shape[1];
    cpu::WeightMatrix out{.rows = rows, .cols = cols};
    const size_t elem = DTypeBytes(src.dtype, 1);
    const uint8_t* base = static_cast<const uint8_t*>(src.data);
    // Chunks of rows are widened and quantized in parallel, each with its own
    // f32 scratch (load time only).
    constexpr int64_t kChunkRows = 64;
    const int64_t num_chunks = (rows + kChunkRows - 1) / kChunkRows;
    auto for_each_chunk = [&](auto&& body) {  // body(first row, rows, f32 rows [n, cols])
      pool_.ParallelFor(num_chunks, [&](int64_t begin, int64_t end) {
        std::vector<float> chunk(static_cast<size_t>(kChunkRows * cols));
        for (int64_t c = begin; c < end; ++c) {
          const int64_t r0 = c * kChunkRows, n = std::min(kChunkRows, rows - r0);
          for (int64_t i = 0; i < n; ++i) {
            const uint8_t* row = base + elem * static_cast<size_t>((rb + r0 + i) * full_cols + cb);
            ConvertToF32(src.dtype, row, chunk.data() + i * cols, static_cast<size_t>(cols));
          }
          body(r0, n, chunk.data());
        }
      }, 1);
    };
    switch (options_.quantize) {
      case WeightQuantization::kNone: {
        out.dtype = DType::kF32;
        AlignedBuffer& buf = buffers_.emplace_back(static_cast<size_t>(rows * cols) * sizeof(float));
        for_each_chunk([&](int64_t r0, int64_t n, const float* f32) {
          std::memcpy(buf.As<float>() + r0 * cols, f32, static_cast<size_t>(n * cols) * sizeof(float));
        });
        out.data = buf.data();
        break;
      }
      case WeightQuantization::kInt8: {
        out.dtype = DType::kI8;
        AlignedBuffer& q = buffers_.emplace_back(static_cast<size_t>(rows * cols));
        AlignedBuffer& s = buffers_.emplace_back(static_cast<size_t>(rows) * sizeof(float));
        for_each_chunk([&](int64_t r0, int64_t n, const float* f32) {
          cpu::QuantizeInt8PerRow(f32, n, cols, q.As<int8_t>() + r0 * cols, s.As<float>() + r0);
        });
        out.data = q.data();
        out.scales = s.As<float>();
        break;
      }
      case WeightQuantization::kInt4: {
        out.dtype = DType::kI4;
        out.group_size = options_.int4_group_size;
        const int64_t row_bytes = cpu::Int4RowBytes(cols);
        const int64_t groups = cpu::Int4NumGroups(cols, out.group_size);
        AlignedBuffer& q = buffers_.emplace_back(static_cast<size_t>(rows * row_bytes));
        AlignedBuffer& s =
            buffers_.emplace_back(static_cast<size_t>(rows * groups) * sizeof(float));
        for_each_chunk([&](int64_t r0, int64_t n, const float* f32) {
          cpu::QuantizeInt4Grouped(f32, n, cols, out.group_size, q.As<uint8_t>() + r0 * row_bytes,
                                   s.As<float>() + r0 * groups);
        });
        out.data = q.data();
        out.scales = s.As<float>();
        break;
      }
    }
    return out;
  }

  const Checkpoint& checkpoint_;
  const WeightLoadOptions& options_;
  std::deque<AlignedBuffer>& buffers_;
  cpu::ThreadPool pool_;
  std::map<Key, cpu::WeightMatrix> matrices_;
  std::map<Key, const float*> vectors_;
  bool uses_checkpoint_ = false;
  size_t distinct_bytes_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<LoadedStageWeights>> LoadStageWeights(
    const ModelSpec& spec, std::shared_ptr<const Checkpoint> checkpoint,
    const WeightLoadOptions& options) {
  const StageRange& range = options.range;
  if (range.layer_begin < 0 || range.layer_end > spec.num_layers ||
      range.layer_begin >= range.layer_end) {
    return absl::InvalidArgumentError(absl::StrCat("layer range [", range.layer_begin, ", ",
                                                   range.layer_end, ") is invalid for a model of ",
                                                   spec.num_layers, " layers"));
  }
  const int tp = options.tp;
  if (tp < 1 || spec.num_heads % tp != 0 || spec.num_kv_heads % tp != 0 ||
      spec.intermediate_size % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor parallelism ", tp, " must divide the attention heads (", spec.num_heads,
        "), the kv heads (", spec.num_kv_heads, ") and the intermediate size (",
        spec.intermediate_size, ")"));
  }
  if (options.quantize == WeightQuantization::kInt4 &&
      (options.int4_group_size <= 0 || options.int4_group_size % 32 != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "int4 group size ", options.int4_group_size, " must be a positive multiple of 32"));
  }
  auto loaded = std::make_unique<LoadedStageWeights>();
  Loader loader(*checkpoint, options, loaded->buffers_);
  for (int r = 0; r < tp; ++r) {
    StageWeights& w = loaded->ranks_.emplace_back();
    w.spec = spec;
    w.range = range;
    w.layers.resize(static_cast<size_t>(range.layer_end - range.layer_begin));
    Status status;
    w.ForEachTensor([&](TensorSlot& slot) {
      if (status.ok()) status = loader.Load(slot, r, &loaded->bytes_per_step_);
    });
    RETURN_IF_ERROR(status);
    if (range.last(spec)) w.lm_head_row_begin = spec.vocab_size * static_cast<int64_t>(r) / tp;
  }
  for (const AlignedBuffer& b : loaded->buffers_) loaded->owned_bytes_ += b.size();
  loaded->weight_bytes_ = loader.distinct_bytes();
  if (loader.uses_checkpoint()) loaded->checkpoint_ = std::move(checkpoint);
  return loaded;
}

}  // namespace tandem
