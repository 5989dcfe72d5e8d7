#pragma once
// CHECK is for programmer bugs only: a broken invariant aborts with file:line
// and the expression. Anything that comes from a user, a file or the network
// is reported through absl::Status instead (core/status.h).
#include <cstdio>
#include <cstdlib>

namespace tandem::internal {
[[noreturn]] inline void CheckFailed(const char* expr, const char* file, int line,
                                     const char* msg) {
  std::fprintf(stderr, "CHECK failed at %s:%d: %s%s%s\n", file, line, expr, msg[0] ? ": " : "",
               msg);
  std::fflush(stderr);
  std::abort();
}
}  // namespace tandem::internal

#define CHECK(cond)                                                                \
  do {                                                                             \
    if (!(cond)) [[unlikely]]                                                      \
      ::tandem::internal::CheckFailed(#cond, __FILE__, __LINE__, "");              \
  } while (0)

#define CHECK_MSG(cond, msg)                                                       \
  do {                                                                             \
    if (!(cond)) [[unlikely]]                                                      \
      ::tandem::internal::CheckFailed(#cond, __FILE__, __LINE__, (msg));           \
  } while (0)

#define CHECK_EQ(a, b) CHECK((a) == (b))
#define CHECK_NE(a, b) CHECK((a) != (b))
#define CHECK_LT(a, b) CHECK((a) < (b))
#define CHECK_LE(a, b) CHECK((a) <= (b))
#define CHECK_GT(a, b) CHECK((a) > (b))
#define CHECK_GE(a, b) CHECK((a) >= (b))

#ifdef NDEBUG
#define DCHECK(cond) \
  do {               \
  } while (0)
#else
#define DCHECK(cond) CHECK(cond)
#endif
