#pragma once
// Software prefetch into L2, the one the streaming kernels and the
// bandwidth probe use far ahead, and into L1, which the int4 one-token
// decode adds a short way ahead (matmul_vnni.cc, StepI4). An L1 prefetch
// holds one of the core's few L1 miss buffers until its line arrives; with
// the lines headed for L2 instead, the decode kernels kept enough of DRAM's
// lines in flight (bf16 rows from 0.89-0.91 to 0.99-1.0 of a plain
// sequential read, int4 from 0.67-0.79 to 0.97-1.09 of the probe; 2 AVX-512
// cores). A prefetch never faults, so p may lie past the end of the data.
//
// Always inlined: the kernels that call it are compiled for SIMD targets
// (Highway's per-target pragmas) that this plain function does not share, so
// GCC 12 does not inline it there by itself, and a call to a function without
// side effects whose result is unused is deleted, prefetch and all.

namespace tandem::cpu {

[[gnu::always_inline]] inline void PrefetchToL2(const void* p) { __builtin_prefetch(p, 0, 2); }
[[gnu::always_inline]] inline void PrefetchToL1(const void* p) { __builtin_prefetch(p, 0, 3); }

}  // namespace tandem::cpu
