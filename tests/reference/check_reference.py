#!/usr/bin/python3
"""Compares `tandem run` with the float64 reference forward on tiny random models.

  check_reference.py --tandem BUILD/bin/tandem --source REPO [--work DIR]

For every model variant (Llama GQA / MHA / tied / llama3 rope scaling, Qwen2
with q/k/v biases; f32, f16 and bf16 checkpoints) it checks:
  - last-position logits: relative L2 error <= 1e-4 (weights as stored),
    <= 5e-2 with --quantize int8;
  - with --quantize int8 and int4, logits within 1e-4 of the reference run on
    the same quantized weights (checks the quantized path itself; the int8
    format alone moves these tiny models' logits by 1.5-4.5%). Where the
    engine rounds int4 activations to 8 bits (AVX-512 VNNI CPUs,
    kernels/cpu/matmul.h), the reference does the same, within 2e-2 (a rare
    rounding tie falls the other way in f32 than in f64);
  - a 64-token greedy continuation identical to the reference's;
  - through the command line: --stages 2 and 3 bitwise identical logits,
    --tp 2 and chunked prefill (--max-batch-tokens 4) within 1e-5.
Exits non-zero with a message for every failure; numpy is required.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    sys.stderr.write("check_reference.py: error: numpy is required (Debian: python3-numpy)\n")
    sys.exit(3)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference_forward  # noqa: E402  (the independent reference, same folder)

# name, make-test-model arguments
VARIANTS = [
    ("llama-gqa-llama3-f32", ["--preset", "tiny-llama", "--dtype", "f32"]),
    ("llama-gqa-f16", ["--preset", "tiny-llama", "--dtype", "f16", "--rope-scaling", "none"]),
    ("llama-gqa-bf16", ["--preset", "tiny-llama", "--dtype", "bf16"]),
    ("llama-mha-tied-bf16", ["--preset", "tiny-llama", "--dtype", "bf16", "--kv-heads", "4",
                             "--tied", "--layers", "3"]),
    ("qwen2-bias-tied-f32", ["--preset", "tiny-qwen2", "--dtype", "f32"]),
    ("qwen2-bias-bf16-sharded", ["--preset", "tiny-qwen2", "--dtype", "bf16", "--untied",
                                 "--shards", "2"]),
    # down_proj rows wider than a CPU column block (kernels/cpu/matmul.h), so
    # the CPU stage stores them blocked, also when --tp 2 halves them.
    ("llama-wide-mlp-bf16", ["--preset", "tiny-llama", "--dtype", "bf16", "--layers", "3",
                             "--intermediate", "4160"]),
]


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--work")
    ap.add_argument("--greedy", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1, help="model seeds and prompts")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="tandem-reference-")
    make_model = os.path.join(args.source, "tools", "make-test-model")
    failures = []
    seed = args.seed
    rng = random.Random(seed)
    print(f"prompt seed {seed}, work dir {work}")
    for name, extra in VARIANTS:
        model = os.path.join(work, name)
        run([sys.executable, make_model, "--out", model, "--seed", str(rng.randrange(1000))] + extra)
        cfg = reference_forward.Config(model)
        weights = reference_forward.load_weights(model)
        prompt = [rng.randrange(cfg.vocab) for _ in range(rng.randrange(5, 40))]
        tokens = ",".join(map(str, prompt))
        expected = reference_forward.forward(cfg, weights, prompt)[-1]
        base = [args.tandem, "run", "--model", model, "--tokens", tokens, "--threads", "2"]
        for quantize, tolerance in (("none", 1e-4), ("int8", 5e-2), ("int4", None)):
            out = os.path.join(work, f"{name}-{quantize}.f32")
            run(base + ["--quantize", quantize, "--logits-out", out])
            got = np.fromfile(out, dtype="<f4")
            if got.shape != expected.shape:
                failures.append(f"{name} {quantize}: {got.shape[0]} logits, expected {cfg.vocab}")
                continue
            checks = []
            if tolerance is not None:
                checks.append(("float64", rel_l2(got, expected), tolerance))
            if quantize != "none":
                same_weights = reference_forward.quantize_weights(weights, quantize)
                simulated = reference_forward.forward(cfg, same_weights, prompt)[-1]
                err = rel_l2(got, simulated)
                what, limit = f"{quantize} reference", 1e-4
                if quantize == "int4" and err > limit:
                    # On AVX-512 VNNI CPUs every int4 product rounds its
                    # activations to 8 bits. Rounding is discontinuous: the
                    # engine's f32 activations, 1e-7 away from the reference's,
                    # now and then land on the other side of a tie, which
                    # moves these logits by up to about 1e-2 (most models
                    # match to 1e-7). The exact per-product contract is
                    # checked in tests/kernels/matmul_test.cc.
                    # A tie can leave the engine as far from both references
                    # (about 1e-2), so the rounded one is the comparison
                    # whenever the plain one fails, not only when it is closer.
                    rounded = rel_l2(got, reference_forward.forward(
                        cfg, same_weights, prompt, int4_decode_rounding=True)[-1])
                    err, what, limit = rounded, "int4 ref, 8-bit x", 2e-2
                checks.append((what, err, limit))
            for what, err, limit in checks:
                status = "ok" if err <= limit else "FAIL"
                print(f"{name:26s} {quantize:5s} vs {what:15s} rel L2 {err:.3e} (<= {limit:g}) "
                      f"{status}")
                if err > limit:
                    failures.append(f"{name} {quantize}: logits vs {what}: relative L2 {err:.3e} "
                                    f"> {limit:g}")
        plain = np.fromfile(os.path.join(work, f"{name}-none.f32"), dtype="<f4")
        for flags, limit in ((["--stages", "2"], 0.0), (["--stages", "3"], 0.0),
                             (["--tp", "2"], 1e-5), (["--max-batch-tokens", "4"], 1e-5)):
            out = os.path.join(work, f"{name}-split.f32")
            run(base + flags + ["--logits-out", out])
            err = rel_l2(np.fromfile(out, dtype="<f4"), plain)
            status = "ok" if err <= limit else "FAIL"
            print(f"{name:26s} {' '.join(flags):22s} vs one stage rel L2 {err:.3e} "
                  f"(<= {limit:g}) {status}")
            if err > limit:
                failures.append(f"{name} {' '.join(flags)}: logits differ from one stage by "
                                f"{err:.3e} (limit {limit:g})")
        # Greedy continuation, with the reference's margin between the two best
        # logits printed at the first difference.
        result = json.loads(run(base + ["--max-tokens", str(args.greedy), "--ignore-eos",
                                        "--json"]))
        seq = list(prompt)
        reference = []
        margin_at_diff = None
        logits = expected
        for i in range(args.greedy):
            order = np.argsort(-logits)
            reference.append(int(order[0]))
            if i < len(result["tokens"]) and result["tokens"][i] != reference[-1] \
                    and margin_at_diff is None:
                margin_at_diff = float(logits[order[0]] - logits[order[1]])
            seq.append(int(order[0]))
            logits = reference_forward.forward(cfg, weights, seq)[-1]
        same = result["tokens"] == reference
        print(f"{name:28s} greedy {args.greedy} tokens identical: {same}")
        if not same:
            failures.append(f"{name}: greedy continuation differs: tandem {result['tokens']} "
                            f"reference {reference} (reference top-2 margin at the first "
                            f"difference {margin_at_diff})")
    if failures:
        for f in failures:
            sys.stderr.write(f"FAIL: {f}\n")
        sys.exit(1)
    print("all reference checks passed")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
