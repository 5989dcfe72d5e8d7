#pragma once
// What GPUs this machine has, for a node's hardware report.
#include <cstddef>
#include <string>
#include <vector>

namespace tandem::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  size_t total_memory_bytes = 0;
  size_t free_memory_bytes = 0;
  int compute_major = 0;
  int compute_minor = 0;
  int multiprocessors = 0;
};

// The visible CUDA devices; empty (never an error) when there is no driver or
// no GPU, so a CPU-only machine simply reports none.
std::vector<DeviceInfo> ListDevices();

// Device memory bandwidth of GPU `device` in GB/s (1e9 bytes/s): bytes read
// plus written by a 1 GiB device-to-device copy, best of five after a
// warm-up. Throws CudaError when the device or the memory is missing.
double MeasureDeviceBandwidthGBps(int device);

// Fills `n` floats at device pointer `dst` with `value` on the default
// stream and waits; a smoke test that a kernel can run on the device.
void FillOnDevice(float* dst, size_t n, float value);

}  // namespace tandem::cuda
