#pragma once
// REQUIRE_GPU(): skips the current test, saying why, on a machine without a
// CUDA GPU.
#include "gtest/gtest.h"
#include "kernels/cuda/device_info.h"

#define REQUIRE_GPU()                                                                       \
  do {                                                                                      \
    if (::tandem::cuda::ListDevices().empty()) GTEST_SKIP() << "no CUDA GPU on this machine"; \
  } while (0)
