#!/usr/bin/env python3
"""A Qwen2.5-0.5B-shaped model on CUDA in bf16: wick beside transformers (and peft) on the same card.

    python3 bench/compare/qwen_cuda.py decode [--tokens 128] [--runs 3] [--build build] [--variant NAME:VAR=VAL,...]
    python3 bench/compare/qwen_cuda.py train [--steps 10] [--batch 8] [--seq 512] [--build build] [--targets all-linear --rank 16]
    python3 bench/compare/qwen_cuda.py profile [--build build]    # WICK_PROFILE=1 decode, time per step kind

The model (hidden 896, 24 layers, 14 heads, 2 KV heads, head dim 64, intermediate
4864, vocab 151936, tied embeddings, rope_theta 1e6, rms eps 1e-6) is random
(seed 0) and saved in bf16 by transformers into a temporary directory, with a
byte-level BPE tokenizer.json: the tiny Qwen2 test tokenizer's vocabulary, padded
with tokens that no text produces up to the model's 151936 ids (so every id the
random model emits decodes).

decode: greedy, batch 1, --tokens new tokens past the end-of-text, the same prompt
ids on both sides, bf16 KV cache on both. Each side reports decode tokens/s, the
median of --runs (wick: its --json summary; transformers: generate minus the
prompt's forward pass); wick's steady_tok_s leaves out the first 8 tokens (the
steps that capture CUDA graphs), from the times its token lines carry. The bandwidth
bound is the bytes one decode token reads (every projection weight, the tied LM head,
and the bf16 KV cache at the mean context length) over the device-to-device copy
bandwidth torch measures here (bytes read + written per second).

train: LoRA r=8 alpha 16 on q_proj,v_proj (or --targets / --rank, alpha twice the rank), dropout 0, AdamW lr 1e-4, no clipping,
the bf16 base frozen with f32 adapters, batch x seq random tokens (every label
counted). wick: `wick train -d cuda`, steps after the first from metrics.csv;
peak GPU memory from nvidia-smi sampled while it runs. peft: torch bf16 model with
sdpa, the adapters in f32 (peft's autocast_adapter_dtype), one untimed warm-up step,
peak from torch.cuda.max_memory_allocated (and reserved).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "tok", "qwen2.json")
PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
          "Describe the sea, the weather and what the message says, in plain simple words.")
CFG = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
           num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
           tie_word_embeddings=True)


def make_model(d):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    m = Qwen2ForCausalLM(Qwen2Config(**CFG, torch_dtype="bfloat16"))
    m.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    tok = json.load(open(TOK_FIXTURE))
    vocab = tok["model"]["vocab"]
    used = set(vocab.values()) | {t["id"] for t in tok.get("added_tokens", [])}
    for i in range(CFG["vocab_size"]):
        if i not in used:
            vocab["zz%d" % i] = i   # printable ASCII: valid byte-level text, never produced by merges
    json.dump(tok, open(os.path.join(d, "tokenizer.json"), "w"))


def prompt_ids(d):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(PROMPT, add_special_tokens=False).ids


def copy_bandwidth():
    import torch
    a = torch.empty(1 << 29, dtype=torch.uint8, device="cuda")   # 512 MiB
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(20):
        b.copy_(a)
    e1.record()
    torch.cuda.synchronize()
    return 2 * a.numel() * 20 / (e0.elapsed_time(e1) * 1e-3)


def decode_bytes(ctx):
    H, F, L, V = CFG["hidden_size"], CFG["intermediate_size"], CFG["num_hidden_layers"], CFG["vocab_size"]
    D = H // CFG["num_attention_heads"]
    KV = CFG["num_key_value_heads"] * D
    proj = L * (H * H * 2 + H * KV * 2 + 3 * H * F)
    weights = 2 * (proj + V * H)
    kv = L * 2 * KV * ctx * 2
    return weights, kv


def torch_decode(d, ids, a):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    x = torch.tensor([ids], device="cuda")
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    rates = []
    with torch.no_grad():
        m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False)   # warm-up
        for _ in range(a.runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(x)
            torch.cuda.synchronize()
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.tokens, do_sample=False)
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
            rates.append((out.shape[1] - x.shape[1] - 1) / max(total - prefill, 1e-9))
    del m
    torch.cuda.empty_cache()
    return {"side": "transformers", "decode_tok_s": statistics.median(rates), "runs": [round(r, 1) for r in rates],
            "ids": out[0, x.shape[1]:].tolist()}


def wick_cmd(d, a, n, build=None):
    return [os.path.join(ROOT, build or a.build, "wick"), "generate", "-m", d, "-d", "cuda", "-p", PROMPT, "-n", str(n),
            "--temp", "0", "--ignore-eos", "--json", "--no-special", "--cache-type", "bf16"]


def variants(a):
    """--variant NAME:VAR=VALUE,VAR=VALUE (repeatable): wick runs under each environment,
    the runs of the variants alternating; none given: one plain "wick" side. The key
    build=DIR (not an environment variable) runs that build's wick instead of --build's."""
    out = []
    for v in a.variant or []:
        name, _, env = v.partition(":")
        out.append((name, dict(x.split("=", 1) for x in env.split(",") if x)))
    return out or [("wick", {})]


def wick_decode(d, a):
    vs = variants(a)
    runs = {name: [] for name, _ in vs}
    for _ in range(a.runs):
        for name, env in vs:   # alternating, so drifts of the card hit every variant alike
            e = {k: v for k, v in env.items() if k != "build"}
            r = subprocess.run(wick_cmd(d, a, a.tokens, env.get("build")), capture_output=True, text=True,
                               env=dict(os.environ, **e))
            if r.returncode:
                sys.exit("wick generate (%s) failed: %s" % (name, r.stderr[-2000:]))
            runs[name].append([json.loads(x) for x in r.stdout.strip().splitlines()])
    res = []
    for name, env in vs:
        rs = runs[name]
        s = rs[-1][-1]
        res.append({"side": "wick" if name == "wick" else "wick " + name, "env": env, "prompt_tokens": s["prompt_tokens"],
                    "generated_tokens": s["generated_tokens"],
                    "decode_tok_s": statistics.median(x[-1]["decode_tok_s"] for x in rs),
                    "runs": [round(x[-1]["decode_tok_s"], 1) for x in rs], "ids": [x["id"] for x in rs[-1][:-1]]})
        steady = [steady_rate(x[:-1]) for x in rs]
        if None not in steady:
            res[-1]["steady_tok_s"] = statistics.median(steady)
    return res


STEADY_SKIP = 8   # tokens left out of the steady rate: the first steps capture the CUDA graphs


def steady_rate(tokens):
    """Tokens a second from the token after STEADY_SKIP to the last, by the times they
    reached the host (the token lines' "ms"); None without them (an older build)."""
    if len(tokens) <= STEADY_SKIP + 1 or "ms" not in tokens[0]:
        return None
    span = tokens[-1]["ms"] - tokens[STEADY_SKIP]["ms"]
    return 1e3 * (len(tokens) - 1 - STEADY_SKIP) / span if span > 0 else None


def decode(d, a):
    import torch
    ids = prompt_ids(d)
    ws = wick_decode(d, a)
    w = ws[-1]   # the last variant is the one compared with transformers
    t = torch_decode(d, ids, a)
    bw = copy_bandwidth()
    weights, kv = decode_bytes(len(ids) + a.tokens / 2)
    bound = bw / (weights + kv)
    for r in ws + [t]:
        r["pct_of_bound"] = round(100 * r["decode_tok_s"] / bound, 1)
        if "steady_tok_s" in r:
            r["steady_pct_of_bound"] = round(100 * r["steady_tok_s"] / bound, 1)
        if r is not w and r is not t:
            r["same_ids_as_last"] = r["ids"] == w["ids"]
        print(json.dumps({k: v for k, v in r.items() if k != "ids"}))
    print(json.dumps({"card": torch.cuda.get_device_name(), "copy_GBps": round(bw / 1e9), "prompt_tokens": len(ids),
                      "new_tokens": a.tokens, "weight_bytes_per_token": weights, "kv_bytes_per_token_mean": kv,
                      "bound_tok_s": round(bound, 1), "ratio_wick_transformers": round(w["decode_tok_s"] / t["decode_tok_s"], 2),
                      "same_ids": w["ids"] == t["ids"],
                      "first_difference": next((i for i, (x, y) in enumerate(zip(w["ids"], t["ids"])) if x != y), None)}))


def profile(d, a):
    """Time per step kind of one decode token (WICK_PROFILE=1 syncs after every step, so
    launch gaps count in each step: a ranking, not the replayed step's time)."""
    r = subprocess.run(wick_cmd(d, a, 8), capture_output=True, text=True, env=dict(os.environ, WICK_PROFILE="1"))
    plans = {}   # plan hash -> [(step index, op, us, shapes)]
    for line in r.stderr.splitlines():
        p = line.split()
        if len(p) < 8 or p[:2] != ["wick", "profile"] or "us" not in p:
            continue
        at = p.index("us")
        plans.setdefault(p[2], []).append((int(p[4]), " ".join(p[5:at - 1]), float(p[at - 1]), " ".join(p[at + 1:])))
    name, steps = max(plans.items(), key=lambda kv: len(kv[1]))   # the decode plan: the one run most often
    runs = max(1, sum(1 for s in steps if s[0] == 0))
    kinds = {}
    for _, op, us, shapes in steps:
        key = op + (" " + shapes if "matmul" in op else "")
        k = kinds.setdefault(key, [0, 0.0])
        k[0] += 1
        k[1] += us
    total = sum(v[1] for v in kinds.values())
    print("decode plan %s: %d steps over %d runs, %.0f us a run (profiled, synced per step)" %
          (name, len(steps), runs, total / runs))
    for key, (n, us) in sorted(kinds.items(), key=lambda kv: -kv[1][1])[:25]:
        print("  %-70s %4d steps/run %9.1f us/run" % (key[:70], n // runs, us / runs))
    last = max(i for i, s in enumerate(steps) if s[0] == 0)
    print("the first steps of the last run:")
    for k, op, us, shapes in steps[last:last + a.list]:
        print("  %3d %-12s %8.1f us  %s" % (k, op, us, shapes))


class NvSmiPeak(threading.Thread):
    """Peak of the GPU's used memory (MiB) while a child runs, from nvidia-smi every 50 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self):
        while not self.stop:
            r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip():
                self.peak = max(self.peak, int(r.stdout.split()[0]))
            time.sleep(0.05)


def batches(a, n):
    import random
    r = random.Random(0)
    return [[r.randrange(10, CFG["vocab_size"]) for _ in range(a.seq)] for _ in range(n)]


def train(d, a):
    import torch
    data = os.path.join(d, "train.jsonl")
    with open(data, "w") as f:
        for ids in batches(a, a.steps * a.batch):
            f.write(json.dumps({"input_ids": ids}) + "\n")
    out = os.path.join(d, "adapter")
    cmd = [os.path.join(ROOT, a.build, "wick"), "train", "-m", d, "--data", data, "-o", out, "--overwrite", "--steps",
           str(a.steps), "--batch", str(a.batch), "--seq-len", str(a.seq), "--targets", a.targets, "--rank", str(a.rank),
           "--alpha", str(2 * a.rank), "--lr", "1e-4", "--no-shuffle", "--quiet", "--clip", "0", "--device", "cuda"]
    mon = NvSmiPeak()
    idle = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout.split()
    mon.start()
    r = subprocess.run(cmd, capture_output=True, text=True)
    mon.stop = True
    mon.join()
    if r.returncode:
        sys.exit("wick train failed: " + r.stderr[-3000:])
    rows = [x.split(",") for x in open(os.path.join(out, "metrics.csv")).read().split("\n")[1:] if x]
    el = [float(x[7]) for x in rows]
    tok = a.batch * a.seq * (len(el) - 1)
    w = {"side": "wick", "tokens_per_s": tok / (el[-1] - el[0]), "first_step_s": el[0],
         "gpu_peak_mib_nvidia_smi": mon.peak - (int(idle[0]) if idle else 0), "loss": float(rows[-1][2])}
    t = torch_train(d, a)
    for x in (w, t):
        x.update(batch=a.batch, seq=a.seq, targets=a.targets, rank=a.rank)
        print(json.dumps(x))
    print(json.dumps({"card": torch.cuda.get_device_name(), "ratio_tokens_per_s": round(w["tokens_per_s"] / t["tokens_per_s"], 3),
                      "ratio_peak_mem": round(w["gpu_peak_mib_nvidia_smi"] / t["gpu_peak_mib_nvidia_smi"], 3)}))


def torch_train(d, a):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    idle = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout.split()
    mon = NvSmiPeak()
    mon.start()
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    targets = "all-linear" if a.targets == "all-linear" else a.targets.split(",")
    pm = get_peft_model(m, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=targets,
                                      task_type="CAUSAL_LM"), autocast_adapter_dtype=True)
    for p in pm.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
    data = torch.tensor(batches(a, a.steps * a.batch), device="cuda")
    times = []
    for s in range(a.steps):
        x = data[s * a.batch:(s + 1) * a.batch]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = pm(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    mon.stop = True
    mon.join()
    tok = a.batch * a.seq * (a.steps - 1)
    return {"side": "torch+peft", "tokens_per_s": tok / sum(times[1:]), "first_step_s": times[0],
            "gpu_peak_mib_nvidia_smi": mon.peak - (int(idle[0]) if idle else 0),
            "gpu_peak_mib_allocated": round(torch.cuda.max_memory_allocated() / 2**20),
            "gpu_peak_mib_reserved": round(torch.cuda.max_memory_reserved() / 2**20), "loss": loss.item()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["decode", "train", "profile"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--build", default="build")
    ap.add_argument("--targets", default="q_proj,v_proj", help="train: LoRA targets (a list, or all-linear)")
    ap.add_argument("--rank", type=int, default=8, help="train: LoRA rank (alpha is twice it)")
    ap.add_argument("--list", type=int, default=0, help="profile: also list this many steps of one run")
    ap.add_argument("--model", default=None, help="a directory to keep the model in (default: a temporary one)")
    ap.add_argument("--variant", action="append", help="decode: NAME:VAR=VALUE,... wick under that environment "
                    "(repeatable; the runs alternate; the last one is compared with transformers)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = a.model or tmp
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            os.makedirs(d, exist_ok=True)
            make_model(d)
        {"decode": decode, "train": train, "profile": profile}[a.what](d, a)


if __name__ == "__main__":
    main()
