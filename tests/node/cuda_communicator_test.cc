// The GPU ranks' all-reduce (node/cuda_communicator.h): ranks that share one
// GPU sum in rank order, bit for bit, round after round; NCCL across two
// GPUs where a machine has them; an abort frees a rank that waits; bad
// device lists are refused (those checks run on every machine).
#include "node/cuda_communicator.h"

#include <cuda_runtime.h>

#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_info.h"
#include "tests/cuda/require_gpu.h"

namespace tandem {
namespace {

// One stream per rank on its device, destroyed at the end.
struct Streams {
  explicit Streams(const std::vector<int>& devices) {
    for (int d : devices) {
      CUDA_CHECK(cudaSetDevice(d));
      cudaStream_t s = nullptr;
      CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      streams.push_back(s);
    }
  }
  ~Streams() {
    for (cudaStream_t s : streams) cudaStreamDestroy(s);
  }
  std::vector<cudaStream_t> streams;
};

// Each rank all-reduces fresh random data for several rounds on its own
// thread; every rank ends with the sum over ranks. `exact`: in rank order,
// bit for bit (the shared-GPU group); else within float rounding, and the
// same on every rank (NCCL picks its own order).
void RunAllReduce(const std::vector<int>& devices, size_t count, int rounds, bool exact) {
  const size_t ranks = devices.size();
  Streams streams(devices);
  auto group = CudaRankGroup::Create(devices, streams.streams);
  ASSERT_TRUE(group.ok()) << group.status();
  ASSERT_EQ((*group)->size(), static_cast<int>(ranks));
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<std::vector<std::vector<float>>> data(
      static_cast<size_t>(rounds), std::vector<std::vector<float>>(ranks, std::vector<float>(count)));
  for (auto& round : data)
    for (auto& rank : round)
      for (float& x : rank) x = dist(rng);
  std::vector<std::vector<float>> expected(static_cast<size_t>(rounds), std::vector<float>(count));
  for (size_t k = 0; k < data.size(); ++k) {
    for (size_t i = 0; i < count; ++i) {
      float sum = data[k][0][i];
      for (size_t r = 1; r < ranks; ++r) sum += data[k][r][i];
      expected[k][i] = sum;
    }
  }
  auto got = data;
  std::vector<std::string> errors(ranks);
  std::vector<std::thread> threads;
  for (size_t r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        CUDA_CHECK(cudaSetDevice(devices[r]));
        cuda::DeviceBuffer buffer(count * sizeof(float));
        Communicator* comm = (*group)->rank(static_cast<int>(r));
        for (auto& round : got) {
          CUDA_CHECK(cudaMemcpyAsync(buffer.data(), round[r].data(), count * sizeof(float),
                                     cudaMemcpyHostToDevice, streams.streams[r]));
          comm->AllReduceSum(buffer.As<float>(), count);
          CUDA_CHECK(cudaMemcpyAsync(round[r].data(), buffer.data(), count * sizeof(float),
                                     cudaMemcpyDeviceToHost, streams.streams[r]));
          CUDA_CHECK(cudaStreamSynchronize(streams.streams[r]));
        }
      } catch (const cuda::CudaError& e) {
        errors[r] = e.what();
        (*group)->Abort();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (size_t r = 0; r < ranks; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
  for (size_t k = 0; k < got.size(); ++k) {
    for (size_t r = 0; r < ranks; ++r) {
      EXPECT_EQ(got[k][r], got[k][0]) << "round " << k << " rank " << r;
      if (exact) {
        EXPECT_EQ(got[k][r], expected[k]) << "round " << k << " rank " << r;
      } else {
        for (size_t i = 0; i < count; ++i) {
          ASSERT_NEAR(got[k][r][i], expected[k][i], 1e-5f) << "round " << k << " element " << i;
        }
      }
    }
  }
}

TEST(CudaCommunicatorTest, RanksSharingOneGpuSumInRankOrder) {
  REQUIRE_GPU();
  RunAllReduce({0, 0}, 1001, 5, /*exact=*/true);
  RunAllReduce({0, 0, 0}, 7, 20, /*exact=*/true);
  RunAllReduce({0, 0, 0, 0}, 3, 10, /*exact=*/true);  // more ranks than elements
  RunAllReduce({0}, 17, 2, /*exact=*/true);           // one rank: the identity
}

TEST(CudaCommunicatorTest, NcclAcrossGpusSums) {
  REQUIRE_GPU();
  const int gpus = static_cast<int>(cuda::ListDevices().size());
  if (gpus < 2) GTEST_SKIP() << "needs two CUDA GPUs on this machine";
  std::vector<int> devices;
  for (int d = 0; d < gpus; ++d) devices.push_back(d);
  RunAllReduce({0, 1}, 4097, 5, /*exact=*/false);
  RunAllReduce(devices, 1 << 20, 2, /*exact=*/false);
}

TEST(CudaCommunicatorTest, AbortFreesARankThatWaitsForAnother) {
  REQUIRE_GPU();
  Streams streams({0, 0});
  auto group = CudaRankGroup::Create({0, 0}, streams.streams);
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_FALSE((*group)->capturable());
  CUDA_CHECK(cudaSetDevice(0));
  cuda::DeviceBuffer buffer(16 * sizeof(float));
  std::string error;
  std::thread waiting([&] {
    try {
      (*group)->rank(0)->AllReduceSum(buffer.As<float>(), 16);  // rank 1 never comes
    } catch (const cuda::CudaError& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  (*group)->Abort();
  waiting.join();
  EXPECT_NE(error.find("aborted"), std::string::npos) << error;
}

// Checked before any device is touched.
TEST(CudaCommunicatorTest, RefusesBadDeviceLists) {
  std::vector<cudaStream_t> two(2, nullptr), three(3, nullptr);
  auto none = CudaRankGroup::Create({}, {});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument) << none.status();
  auto mismatch = CudaRankGroup::Create({0, 1}, three);
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument) << mismatch.status();
  auto mixed = CudaRankGroup::Create({0, 0, 1}, three);
  ASSERT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument) << mixed.status();
  EXPECT_NE(mixed.status().message().find("all ranks share it"), std::string::npos)
      << mixed.status();
}

}  // namespace
}  // namespace tandem
