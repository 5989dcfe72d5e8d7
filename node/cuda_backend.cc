#include "node/cuda_backend.h"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"

namespace tandem {

namespace {

StatusOr<const CudaBackend*> Load() {
#ifndef TANDEM_CUDA_MODULE
  return absl::UnimplementedError(
      "this build has no CUDA backend (configure with TANDEM_CUDA=ON on a machine with the CUDA "
      "toolkit)");
#else
  // By file name: the loader searches the binary's run path (the build's
  // lib/ folder) and LD_LIBRARY_PATH. RTLD_LOCAL keeps the module's own
  // copies of our libraries out of everyone else's symbol lookups.
  void* handle = dlopen(TANDEM_CUDA_MODULE, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("the CUDA backend cannot be loaded: ", dlerror()));
  }
  auto entry = reinterpret_cast<CudaBackendEntryFn>(dlsym(handle, kCudaBackendEntry));
  const CudaBackend* backend = entry ? entry(kCudaBackendInterface) : nullptr;
  if (backend == nullptr) {
    dlclose(handle);
    return absl::FailedPreconditionError(absl::StrCat(
        "the CUDA backend ", TANDEM_CUDA_MODULE, " comes from another build of tandem (interface ",
        kCudaBackendInterface, " not offered); rebuild it with these binaries"));
  }
  return backend;  // the module stays loaded for the life of the process
#endif
}

}  // namespace

StatusOr<const CudaBackend*> LoadCudaBackend() {
  static const StatusOr<const CudaBackend*> backend = Load();
  return backend;
}

}  // namespace tandem
