#!/usr/bin/python3
"""Checks the byte accounting of `tandem-bench decode --json` on a tiny model.

A decode step reads every weight once and, for each sequence, K and V of all
its cached positions; the roofline fraction counts both, and the weights-only
fraction is reported beside it. Speed itself is not judged here.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bench", required=True, help="tandem-bench binary")
    parser.add_argument("--source", required=True, help="source folder (for tools/)")
    args = parser.parse_args()

    layers, kv_heads, head_dim, prompt, gen, batch = 3, 2, 16, 20, 6, 2
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        subprocess.run([sys.executable, os.path.join(args.source, "tools", "make-test-model"),
                        "--out", model, "--preset", "tiny-llama", "--layers", str(layers),
                        "--heads", "4", "--kv-heads", str(kv_heads), "--head-dim", str(head_dim),
                        "--hidden", "64"],
                       check=True, stdout=subprocess.DEVNULL)
        out = subprocess.run([args.bench, "decode", "--model", model, "--prompt", str(prompt),
                              "--gen", str(gen), "--batch", str(batch), "--rounds", "2",
                              "--threads", "1", "--json"],
                             check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    failures = []

    def expect(ok, what):
        if not ok:
            failures.append(what)

    # Steps at positions prompt + 1 .. prompt + gen read pos + 1 positions each
    # (the untimed first decode step is at position `prompt`).
    position_bytes = 2 * layers * kv_heads * head_dim * 4
    mean_positions = sum(prompt + 2 + i for i in range(gen)) / gen
    expect(math.isclose(r["kv_bytes_per_token"], position_bytes * mean_positions, rel_tol=1e-9),
           f"kv_bytes_per_token {r['kv_bytes_per_token']} != {position_bytes * mean_positions}")
    steps_per_s = r["decode_tokens_per_s"] / batch
    weights_gbps = r["bytes_per_token"] * batch * steps_per_s / 1e9
    kv_gbps = r["kv_bytes_per_token"] * batch * steps_per_s / 1e9
    expect(math.isclose(r["weights_gbps"], weights_gbps, rel_tol=1e-6),
           f"weights_gbps {r['weights_gbps']} != {weights_gbps}")
    expect(math.isclose(r["achieved_gbps"], weights_gbps + kv_gbps, rel_tol=1e-6),
           f"achieved_gbps {r['achieved_gbps']} != {weights_gbps + kv_gbps}")
    expect(r["roofline_fraction"] > r["weights_roofline_fraction"] > 0,
           f"fractions {r['roofline_fraction']} (weights and KV) vs "
           f"{r['weights_roofline_fraction']} (weights)")
    expect(len(r["round_roofline_fractions"]) == 2, "one fraction per round")
    for f in failures:
        print("FAIL:", f)
    print(json.dumps(r, indent=1) if failures else "decode bench accounting ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
