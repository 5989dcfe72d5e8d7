#include <cuda_runtime.h>

#include <vector>

#include "gtest/gtest.h"
#include "tests/cuda/require_gpu.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_info.h"

namespace tandem::cuda {
namespace {

TEST(CudaDeviceTest, ListingNeverFails) {
  for (const DeviceInfo& d : ListDevices()) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GT(d.total_memory_bytes, 0u);
  }
}

TEST(CudaDeviceTest, ErrorsCarryExpressionAndLocation) {
  try {
    CUDA_CHECK(cudaErrorInvalidValue);
    FAIL() << "CUDA_CHECK did not throw";
  } catch (const CudaError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("cudaErrorInvalidValue"), std::string::npos) << what;
    EXPECT_NE(what.find("cuda_device_test.cc"), std::string::npos) << what;
  }
}

TEST(CudaDeviceTest, KernelRunsOnDevice) {
  REQUIRE_GPU();
  constexpr size_t kN = 1000;
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, kN * sizeof(float)));
  FillOnDevice(d, kN, 3.5f);
  std::vector<float> h(kN);
  CUDA_CHECK(cudaMemcpy(h.data(), d, kN * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(d));
  for (float v : h) ASSERT_EQ(v, 3.5f);
}

}  // namespace
}  // namespace tandem::cuda
