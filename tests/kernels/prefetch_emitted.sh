#!/bin/sh
# The streaming kernels' software prefetches survive compilation: each
# function named below holds at least one prefetch instruction in its
# AVX-512 (AVX3_DL) build. A prefetch call the compiler could not inline into
# a SIMD-target function was once deleted silently (prefetch.h says why), and
# only the decode speed showed it.
# Usage: prefetch_emitted.sh LIBRARY_OR_BINARY
set -eu
lib=$1
dump=$(objdump -d --no-show-raw-insn -C "$lib")
status=0
for fn in 'N_AVX3_DL::DecodeRowsSequential<' 'N_AVX3_DL::DecodeTile<' 'N_AVX3_DL::AttendTile(' \
          'vnni::(anonymous namespace)::RowsOneToken<' 'N_AVX3_DL::StreamSumImpl('; do
  count=$(printf '%s\n' "$dump" | awk -v fn="$fn" '
    /^[0-9a-f]+ <.*>:$/ { inside = index($0, fn) > 0; next }
    inside && /prefetch/ { n++ }
    END { print n + 0 }')
  if [ "$count" -eq 0 ]; then
    echo "FAIL: no prefetch instruction in $fn (in $lib)"
    status=1
  else
    echo "ok: $count prefetch instructions in $fn"
  fi
done
exit $status
