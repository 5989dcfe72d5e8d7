#!/usr/bin/python3
"""Independent float64 forward pass of a Llama / Qwen2 / Mistral model.

Reads a Hugging Face model folder (config.json, model.safetensors or a sharded
model.safetensors.index.json) with nothing but numpy and the standard library,
and computes the logits the C++ stage must reproduce. It shares no code with
tandem on purpose: it is the yardstick the engine is measured against.

  reference_forward.py --model DIR --tokens 1,2,3 [--logits-out FILE] [--greedy N] [--json]

--logits-out writes the last position's logits as little-endian float32;
--greedy N appends N argmax tokens (recomputing the whole sequence each step);
--json prints {"logits_last": [...], "greedy": [...], "margins": [...]}.
"""
import argparse
import json
import math
import os
import struct
import sys

try:
    import numpy as np
except ImportError:  # The comparison is meaningless without numpy: fail loudly.
    sys.stderr.write("reference_forward.py: error: numpy is required (Debian: python3-numpy)\n")
    sys.exit(3)


def _read_safetensors(path):
    """Returns {name: float64 ndarray} for every tensor in one safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        shape = tuple(info["shape"])
        dtype = info["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2")
        elif dtype == "F64":
            arr = np.frombuffer(raw, dtype="<f8")
        elif dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        out[name] = arr.astype(np.float64).reshape(shape)
    return out


def load_weights(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return _read_safetensors(single)
    with open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
        index = json.load(f)
    weights = {}
    for shard in sorted(set(index["weight_map"].values())):
        weights.update(_read_safetensors(os.path.join(model_dir, shard)))
    return weights


def _round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _f32_reciprocal(scale):
    safe = np.where(scale == 0, np.float32(1), scale).astype(np.float64)
    return (1.0 / safe).astype(np.float32).astype(np.float64)


def quantize_weights(weights, mode, group=32):
    """Every matrix replaced by its dequantized int8 (one scale per row) or int4
    (one scale per `group` inputs of a row) version, as `--quantize` defines
    them: scale = f32(max|w| / 127) (or / 7), q = clamp(round_half_away(w *
    f32(1 / scale))) in [-127, 127] (or [-8, 7]), the product taken in double
    (with bf16 weights that product is exact and halves are common, so the
    rounding of 1 / scale and the tie rule both matter).
    Vectors (norms, biases) stay as they are."""
    out = {}
    for name, w in weights.items():
        if w.ndim != 2 or mode == "none":
            out[name] = w
            continue
        w32 = w.astype(np.float32)
        if mode == "int8":
            scale = (np.abs(w32).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
            inv = _f32_reciprocal(scale)
            q = np.clip(_round_half_away(w32.astype(np.float64) * inv), -127, 127)
            out[name] = (q.astype(np.float32) * scale).astype(np.float64)
        elif mode == "int4":
            rows, cols = w32.shape
            deq = np.empty_like(w32)
            for g in range(0, cols, group):
                part = w32[:, g:g + group]
                scale = (np.abs(part).max(axis=1, keepdims=True) / np.float32(7)).astype(np.float32)
                inv = _f32_reciprocal(scale)
                q = np.clip(_round_half_away(part.astype(np.float64) * inv), -8, 7)
                deq[:, g:g + group] = q.astype(np.float32) * scale
            out[name] = deq.astype(np.float64)
        else:
            raise ValueError(f"unknown quantization {mode}")
    return out


class Config:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.arch = (c.get("architectures") or ["LlamaForCausalLM"])[0]
        self.hidden = c["hidden_size"]
        self.inter = c["intermediate_size"]
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads") or self.heads
        self.head_dim = c.get("head_dim") or self.hidden // self.heads
        self.theta = c.get("rope_theta", 10000.0)
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.vocab = c["vocab_size"]
        self.tied = bool(c.get("tie_word_embeddings", False))
        self.scaling = c.get("rope_scaling")


def inverse_frequencies(cfg):
    dim = cfg.head_dim
    inv = 1.0 / (cfg.theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    s = cfg.scaling
    if not s:
        return inv
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        return inv / s["factor"]
    if kind == "llama3":
        factor = s["factor"]
        low = s["low_freq_factor"]
        high = s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        low_wavelen = old / low
        high_wavelen = old / high
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < high_wavelen:
                out.append(f)
            elif wavelen > low_wavelen:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        return np.array(out, dtype=np.float64)
    if kind in (None, "default"):
        return inv
    raise ValueError(f"rope scaling type {kind} is not supported by the reference")


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, inv_freq):
    # x: [T, heads, head_dim], Hugging Face rotate-half layout.
    freqs = np.outer(positions.astype(np.float64), inv_freq)  # [T, head_dim/2]
    cos = np.cos(np.concatenate([freqs, freqs], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([freqs, freqs], axis=-1))[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def rounded_as_int4_decode(h):
    """h [T, cols] rounded as tandem's int4 decode path rounds activations on
    AVX-512 VNNI CPUs (its documented numerics, kernels/cpu/matmul.h): in f32,
    per block of 32 inputs from the start of each row, q = round_to_even(x *
    (127 / m)) and value q * (m / 127), m = the block's largest |x| (a block
    with m < 1e-30 becomes 0)."""
    T, cols = h.shape
    block = 32
    x = np.pad(h.astype(np.float32), ((0, 0), (0, (-cols) % block))).reshape(T, -1, block)
    m = np.abs(x).max(axis=2, keepdims=True)
    live = m >= np.float32(1e-30)
    safe = np.where(live, m, np.float32(1))
    inverse = np.where(live, np.float32(127) / safe, np.float32(0)).astype(np.float32)
    step = np.where(live, safe / np.float32(127), np.float32(0)).astype(np.float32)
    q = np.rint((x * inverse).astype(np.float32))
    return (q.astype(np.float64) * step.astype(np.float64)).reshape(T, -1)[:, :cols]


def forward(cfg, w, tokens, int4_decode_rounding=False):
    """Returns logits [T, vocab] in float64 for the whole token list.

    int4_decode_rounding: round the input of every product as tandem's int4
    path on AVX-512 VNNI CPUs does (rounded_as_int4_decode)."""
    T = len(tokens)

    def product(a, name):
        if int4_decode_rounding:
            a = rounded_as_int4_decode(a)
        return a @ w[name].T

    pos = np.arange(T)
    inv_freq = inverse_frequencies(cfg)
    x = w["model.embed_tokens.weight"][np.array(tokens)]
    group = cfg.heads // cfg.kv_heads
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], cfg.eps)
        q = product(h, p + "self_attn.q_proj.weight")
        k = product(h, p + "self_attn.k_proj.weight")
        v = product(h, p + "self_attn.v_proj.weight")
        if p + "self_attn.q_proj.bias" in w:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        q = rope(q.reshape(T, cfg.heads, cfg.head_dim), pos, inv_freq)
        k = rope(k.reshape(T, cfg.kv_heads, cfg.head_dim), pos, inv_freq)
        v = v.reshape(T, cfg.kv_heads, cfg.head_dim)
        attn = np.empty((T, cfg.heads, cfg.head_dim))
        for hd in range(cfg.heads):
            kh = hd // group
            scores = q[:, hd, :] @ k[:, kh, :].T / math.sqrt(cfg.head_dim) + mask
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn[:, hd, :] = probs @ v[:, kh, :]
        x = x + product(attn.reshape(T, -1), p + "self_attn.o_proj.weight")
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg.eps)
        gate = product(h, p + "mlp.gate_proj.weight")
        up = product(h, p + "mlp.up_proj.weight")
        act = gate / (1.0 + np.exp(-gate)) * up
        x = x + product(act, p + "mlp.down_proj.weight")
    x = rms_norm(x, w["model.norm.weight"], cfg.eps)
    head = "model.embed_tokens.weight" if cfg.tied or "lm_head.weight" not in w \
        else "lm_head.weight"
    return product(x, head)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--logits-out")
    ap.add_argument("--greedy", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = Config(args.model)
    w = load_weights(args.model)
    tokens = [int(t) for t in args.tokens.split(",")]
    logits = forward(cfg, w, tokens)
    last = logits[-1]
    if args.logits_out:
        last.astype("<f4").tofile(args.logits_out)
    greedy, margins = [], []
    seq = list(tokens)
    step_logits = last
    for _ in range(args.greedy):
        order = np.argsort(-step_logits)
        greedy.append(int(order[0]))
        margins.append(float(step_logits[order[0]] - step_logits[order[1]]))
        seq.append(int(order[0]))
        step_logits = forward(cfg, w, seq)[-1]
    if args.json:
        print(json.dumps({"logits_last": last.tolist(), "greedy": greedy, "margins": margins}))


if __name__ == "__main__":
    main()
