// The CUDA backend module (node/cuda_backend.h): a CPU stage maps none of
// the CUDA libraries; a GPU stage loads the module, or says why it cannot.
// TANDEM_BUILT_WITH_CUDA (1 or 0) says whether this build made the module.
#include "node/cuda_backend.h"

#include <dlfcn.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/model_spec.h"
#include "node/stage.h"
#include "tests/node/stage_test_models.h"

namespace tandem {
namespace {

// Whether a file whose path contains `name` is mapped into this process.
bool Mapped(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find(name) != std::string::npos) return true;
  }
  return false;
}

struct Loaded {
  ModelSpec spec;
  std::shared_ptr<const Checkpoint> checkpoint;
  StageOptions options;
};

// A tiny Llama; checkpoint is null (and the test has failed) when it could
// not be written or read.
Loaded TinyModel() {
  auto dir = testing::MakeModel("llama", "--preset tiny-llama --dtype f32 --seed 31");
  auto spec = LoadModelSpec(dir);
  auto checkpoint = spec.ok() ? Checkpoint::Open(dir) : StatusOr<Checkpoint>(spec.status());
  if (!checkpoint.ok()) {
    ADD_FAILURE() << checkpoint.status();
    return {};
  }
  StageOptions options{.range = {.layer_begin = 0, .layer_end = spec->num_layers},
                       .threads = 1,
                       .max_batch_tokens = 16,
                       .max_batch_sequences = 2,
                       .kv_budget_bytes = size_t{1} << 20};
  return {*spec, std::make_shared<const Checkpoint>(std::move(checkpoint).value()), options};
}

// ctest runs every test in a process of its own; run by hand, this one must
// come first, before another test has loaded the module.
TEST(CudaBackendTest, ACpuStageMapsNoCudaLibrary) {
  Loaded m = TinyModel();
  ASSERT_NE(m.checkpoint, nullptr);
  auto stage = CreateStage(m.spec, m.checkpoint, m.options, {});
  ASSERT_TRUE(stage.ok()) << stage.status();
  int32_t token = 1;
  SequenceStep step{.seq_id = 1, .start = 0, .count = 1};
  ASSERT_TRUE((*stage)->Forward({&step, 1}, {&token, 1}, {}).ok());
  for (const char* lib : {"libtandem_cuda", "libcudart", "libcublas", "libnccl"}) {
    EXPECT_FALSE(Mapped(lib)) << lib << " is mapped into a process with a CPU stage only";
  }
}

TEST(CudaBackendTest, AGpuStageLoadsTheModuleOrSaysWhyNot) {
  Loaded m = TinyModel();
  ASSERT_NE(m.checkpoint, nullptr);
  auto stage = CreateStage(m.spec, m.checkpoint, m.options, {0});
  if (!TANDEM_BUILT_WITH_CUDA) {
    ASSERT_FALSE(stage.ok());
    EXPECT_EQ(stage.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_NE(stage.status().message().find("cuda:0 was asked for, but this build has no CUDA "
                                            "backend"),
              std::string::npos)
        << stage.status();
    EXPECT_FALSE(LoadCudaBackend().ok());
    return;
  }
  auto backend = LoadCudaBackend();
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_TRUE(Mapped("libtandem_cuda.so"));
  EXPECT_TRUE(Mapped("libcublas"));
  if ((*backend)->list_devices().empty()) {
    // No GPU here: the module's error (a CUDA exception inside it) comes
    // back as a Status, and the process goes on.
    EXPECT_FALSE(stage.ok());
  } else {
    ASSERT_TRUE(stage.ok()) << stage.status();
    int32_t token = 1;
    SequenceStep step{.seq_id = 1, .start = 0, .count = 1};
    EXPECT_TRUE((*stage)->Forward({&step, 1}, {&token, 1}, {}).ok());
  }
  auto missing = CreateStage(m.spec, m.checkpoint, m.options, {999});
  EXPECT_FALSE(missing.ok());
}

#if TANDEM_BUILT_WITH_CUDA
TEST(CudaBackendTest, TheModuleOffersOnlyItsOwnInterfaceVersion) {
  auto backend = LoadCudaBackend();
  ASSERT_TRUE(backend.ok()) << backend.status();
  void* handle = dlopen("libtandem_cuda.so", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  ASSERT_NE(handle, nullptr) << dlerror();
  auto entry = reinterpret_cast<CudaBackendEntryFn>(dlsym(handle, kCudaBackendEntry));
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry(kCudaBackendInterface), *backend);
  EXPECT_EQ(entry(kCudaBackendInterface + 1), nullptr);
  dlclose(handle);
}
#endif

}  // namespace
}  // namespace tandem
