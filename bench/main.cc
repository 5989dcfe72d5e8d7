// `tandem-bench`: communication cost per shape, decode/prefill speed against
// the memory-bandwidth roofline, serving load. Benchmarks register themselves
// from their own *_bench.cc files.
#include "core/command.h"

int main(int argc, char** argv) {
  return tandem::RunCommandLine("tandem-bench", "tandem-bench: measure tandem on this machine",
                                argc, argv);
}
