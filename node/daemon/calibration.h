#pragma once
// Measures what the planner needs from a node on the model's real shapes
// with random weights: the time of one decoder layer for a decode token and
// for a prefill chunk, the lm_head time, and the memory bandwidth.
#include <cstddef>

#include "core/dtype.h"
#include "core/status.h"
#include "model/model_spec.h"
#include "node/cuda_backend.h"

namespace tandem {

struct Calibration {
  double decode_layer_ms = 0;
  double prefill_layer_ms = 0;  // one chunk of prefill_tokens
  int prefill_tokens = 0;
  double head_ms = 0;           // estimated from the layer's bytes per ms
  double memory_bandwidth_gbps = 0;
  int threads = 0;
};

// `weight_dtype`: how the weights are held (f32, f16, bf16, or i8/i4 when
// quantized at load). Takes about a second; allocates one layer's weights.
Calibration CalibrateNode(const ModelSpec& spec, DType weight_dtype, int threads,
                          int prefill_tokens = 64);

// The same figures for a stage on CUDA device `device`: the layer's matrix
// multiplies timed on the GPU with CUDA events, and the device memory
// bandwidth from a large device-to-device copy. Errors: no such device, or
// too little device memory for one layer.
StatusOr<Calibration> CalibrateCudaNode(const CudaBackend& cuda, const ModelSpec& spec,
                                        DType weight_dtype, int device, int prefill_tokens = 64);

}  // namespace tandem
