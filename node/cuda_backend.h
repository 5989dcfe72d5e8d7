#pragma once
// The CUDA backend as a module that a process loads when it first needs a
// GPU. Every call into the CUDA runtime, cuBLAS and NCCL (GPU stages,
// device queries, the GPU figures of calibration and of tandem-bench) is in
// libtandem_cuda.so, built beside the binaries when the CUDA backend is
// built, and reached only through CudaBackend. Two reasons:
//   - a process that computes on the CPU maps none of those libraries (on
//     load, cuBLAS alone makes about 150 MB resident, which a CPU node
//     would carry on top of its weights and KV cache);
//   - one build serves a mixed cluster: a machine without a GPU or without
//     the CUDA libraries runs the same binaries on its CPU.
// The module and the binaries that load it must come from the same build;
// the module refuses a caller of another interface version.
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/device_info.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/stage.h"

namespace tandem {

// One decoder layer's matrix multiplies timed on a GPU, for the planner.
struct CudaLayerTiming {
  double decode_ms = 0;   // the layer's matrices against one token
  double prefill_ms = 0;  // against a chunk of `prefill_tokens` tokens
  double memory_bandwidth_gbps = 0;
};

// The module's entry points. Errors from CUDA (no such device, too little
// device memory, a failing driver) come back as a Status that names the
// device; exceptions never cross the module's boundary.
struct CudaBackend {
  // The visible GPUs; empty (never an error) when there is no driver or GPU.
  std::vector<cuda::DeviceInfo> (*list_devices)();
  // A stage on `devices` (node/cuda_stage_executor.h has the contract).
  StatusOr<std::unique_ptr<Stage>> (*create_stage)(const ModelSpec& spec,
                                                   std::shared_ptr<const Checkpoint> checkpoint,
                                                   const StageOptions& options,
                                                   const std::vector<int>& devices);
  // GPU `device`'s memory bandwidth (kernels/cuda/device_info.h) and cuBLAS's
  // bf16 GEMM rate (kernels/cuda/matmul.h).
  StatusOr<double> (*memory_bandwidth_gbps)(int device);
  StatusOr<double> (*gemm_peak_gflops)(int device);
  // Copies `layer` (host matrices, any CPU layout: only the shapes, dtypes
  // and group sizes matter) to GPU `device` and times it: median of 20
  // decode and 10 prefill runs with CUDA events, after a warm-up.
  StatusOr<CudaLayerTiming> (*time_layer)(std::span<const cpu::WeightMatrix> layer,
                                          int prefill_tokens, int device);
};

// Bumped whenever CudaBackend or a type it passes changes.
inline constexpr int kCudaBackendInterface = 1;

// The module's one exported symbol: its entry points, or null when
// `interface_version` is not kCudaBackendInterface.
inline constexpr const char kCudaBackendEntry[] = "tandem_cuda_backend";
using CudaBackendEntryFn = const CudaBackend* (*)(int interface_version);

// Loads the module on the first call (thread-safe; later calls return the
// same answer). Errors: this build has no CUDA backend, or the module
// cannot load (dlopen's reason, such as a missing libcublas), or it comes
// from another build.
StatusOr<const CudaBackend*> LoadCudaBackend();

}  // namespace tandem
