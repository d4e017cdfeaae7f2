#!/usr/bin/env python3
"""The CUDA issue's cases: `wick bench --device cuda` beside PyTorch on the same card, in one run.

    python3 bench/compare/torch_cuda.py [--build build-gpu] [--time 0.5] [--only NAME] [--json OUT]

Small cases (the seed's shapes), 1000 calls chained (each call's output is the next
call's input, so nothing can be deduplicated): wick evaluates the 1000 calls lazily
as one plan (replayed from a CUDA graph after the first evaluations); PyTorch runs
them eagerly, and replayed from a CUDA graph captured over the same 1000 calls (the
floor of unfused execution). Per call = one chain's wall time / 1000.
Large memory-bound cases: PyTorch eager and torch.compile(mode="max-autotune-no-cudagraphs").
GEMM 4096^3: cuBLAS through torch.matmul (TF32 off, torch's default for f32).

Every time is a median of whole calls, wall clock, each call followed by a device
sync (wick bench times wk_eval the same way: it returns once the results are ready).
Needs torch with CUDA; prints a table with ratios (> 1: wick faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHAIN = 1000

# name in wick bench -> (kind, args); kind picks the torch side
SMALL = [
    ("lora_fwd/512x1000", "lora", 512),
    ("lora_fwd/1024x1000", "lora", 1024),
    ("lora_fwd/2048x1000", "lora", 2048),
    ("softmax/4x16x1024x1000", "softmax", (4, 16, 1024)),
    ("rmsnorm/4x16x1024x1000", "rmsnorm", (4, 16, 1024)),
]
LARGE = [
    ("softmax/8x16x1024x1024", "softmax", (8, 16, 1024, 1024), "float32"),
    ("softmax/8x16x1024x1024/bf16", "softmax", (8, 16, 1024, 1024), "bfloat16"),
    ("rmsnorm/8x2048x4096", "rmsnorm", (8, 2048, 4096), "float32"),
    ("rmsnorm/8x2048x4096/bf16", "rmsnorm", (8, 2048, 4096), "bfloat16"),
    ("chain8/64M", "chain8", (64 << 20,), "float32"),
    ("chain8/64M/bf16", "chain8", (64 << 20,), "bfloat16"),
]
GEMM = [
    ("matmul/4096", 4096, "float32"),
    ("matmul/4096/bf16", 4096, "bfloat16"),
]
# causal GQA attention at Qwen2.5-0.5B's training shape: (B, Hq, Hkv, T = S, D)
ATTN_SHAPE = (8, 14, 2, 512, 64)
ATTN = [
    ("sdpa_fwd/8x14x2x512x64/bf16", False, "bfloat16"),
    ("sdpa_train/8x14x2x512x64/bf16", True, "bfloat16"),
    ("sdpa_fwd/8x14x2x512x64", False, "float32"),
    ("sdpa_train/8x14x2x512x64", True, "float32"),
]


def wick_case(build, name, seconds):
    """One case of `wick bench --device cuda --mode lazy --json`, exact name match."""
    exe = os.path.join(ROOT, build, "wick")
    out = subprocess.run([exe, "bench", "--device", "cuda", "--mode", "lazy", "--json", "--time", str(seconds),
                          "--filter", name], capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        r = json.loads(line)
        if r["name"] == name:
            return r
    print(f"wick bench {name} failed: {out.stderr.strip()}", flush=True)
    return None


def timed(fn, seconds, sync):
    """Median wall time of fn() + sync, in microseconds (after two warm-up calls)."""
    fn(); sync(); fn(); sync()
    t = []
    start = time.perf_counter()
    while len(t) < 5 or (time.perf_counter() - start < seconds and len(t) < 10000):
        t0 = time.perf_counter()
        fn()
        sync()
        t.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(t)


def torch_small(torch, kind, arg, seconds):
    """(eager, graph) microseconds per call of the 1000-call chain."""
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    if kind == "lora":
        n, r, scale = arg, 8, 2.0
        x = torch.randn(1, 1, n, device=dev, generator=g)
        W = torch.randn(n, n, device=dev, generator=g) / n ** 0.5
        A = torch.randn(n, r, device=dev, generator=g) / n ** 0.5
        B = torch.randn(r, n, device=dev, generator=g) * 0.01
        step = lambda y: y @ W + scale * ((y @ A) @ B)
    elif kind == "softmax":
        x = torch.randn(*arg, device=dev, generator=g)
        step = lambda y: torch.softmax(y, -1)
    else:
        x = torch.randn(*arg, device=dev, generator=g)
        w = torch.randn(arg[-1], device=dev, generator=g)
        step = lambda y: torch.nn.functional.rms_norm(y, (arg[-1],), w, 1e-5)

    def chain():
        y = x
        for _ in range(CHAIN):
            y = step(y)
        return y

    sync = torch.cuda.synchronize
    with torch.no_grad():
        eager = timed(chain, seconds, sync) / CHAIN
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            chain()  # warm-up on the side stream, as torch's docs advise before capture
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            chain()
        replay = timed(graph.replay, seconds, sync) / CHAIN
    return eager, replay


def torch_large(torch, kind, shape, dtype, seconds):
    """(eager, compiled) microseconds per call."""
    dev, dt = "cuda", getattr(torch, dtype)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(*shape, device=dev, generator=g).to(dt)
    if kind == "softmax":
        fn = lambda x, y: torch.softmax(x, -1)
        y = None
    elif kind == "rmsnorm":
        y = torch.randn(shape[-1], device=dev, generator=g).to(dt)
        fn = lambda x, w: torch.nn.functional.rms_norm(x, (shape[-1],), w, 1e-5)
    else:
        y = torch.randn(*shape, device=dev, generator=g).to(dt)

        def fn(x, y):
            t = (x + y) * y - x
            return (torch.tanh(t * 0.5) + 1.0).mul(x).abs()

    sync = torch.cuda.synchronize
    with torch.no_grad():
        eager = timed(lambda: fn(x, y), seconds, sync)
        comp = torch.compile(fn, mode="max-autotune-no-cudagraphs")
        compiled = timed(lambda: comp(x, y), seconds, sync)
    return eager, compiled


def torch_gemm(torch, n, dtype, seconds):
    dt = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, n, device="cuda", generator=g).to(dt)
    b = torch.randn(n, n, device="cuda", generator=g).to(dt)
    return timed(lambda: a @ b, seconds, torch.cuda.synchronize)


def torch_attn(torch, train, dtype, seconds):
    """(microseconds, backend) of scaled_dot_product_attention, causal, GQA; train: forward
    and backward of sum(out * w), as wick's sdpa_train case. Flash attention where torch has
    it (bf16); f32 has no flash kernel in torch, so it gets torch's own choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    F = torch.nn.functional
    B, Hq, Hkv, T, D = ATTN_SHAPE
    dt = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda h: torch.randn(B, h, T, D, device="cuda", generator=g).to(dt).requires_grad_(train)
    q, k, v, w = mk(Hq), mk(Hkv), mk(Hkv), mk(Hq).detach()
    tries = [([SDPBackend.FLASH_ATTENTION], "flash")] if dtype != "float32" else []
    tries.append(([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                   SDPBackend.MATH], "torch's choice"))
    for backends, what in tries:
        def fwd():
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        def step():
            if not train:
                with torch.no_grad():
                    return fwd()
            q.grad = k.grad = v.grad = None
            (fwd() * w).sum().backward()
        try:
            step()
        except RuntimeError as e:
            print(f"torch sdpa ({what}) refused: {str(e).splitlines()[0]}", flush=True)
            continue
        return timed(step, seconds, torch.cuda.synchronize), what
    return None, None


def torch_copy(torch, seconds):
    """Device-to-device copy bandwidth of 256 MB (bytes read + written), GB/s."""
    a = torch.empty(64 << 20, device="cuda")
    b = torch.empty_like(a)
    us = timed(lambda: b.copy_(a), seconds, torch.cuda.synchronize)
    return 2 * a.numel() * 4 / us * 1e-3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-gpu", help="build directory holding the wick CLI (WICK_CUDA=ON)")
    ap.add_argument("--time", type=float, default=0.5, help="seconds per case and side")
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--json", default="", help="also write every row as JSON lines here")
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        sys.exit("torch_cuda.py: torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 GEMM as wick runs it (WICK_CUDA_TF32 unset)
    card = torch.cuda.get_device_name()
    print(f"card: {card}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    bw = torch_copy(torch, a.time)
    print(f"copy bandwidth (torch, 256 MB device to device): {bw:.0f} GB/s")
    rows = []
    hdr = f"{'case':30} {'wick':>10} {'torch eager':>12} {'torch other':>12} {'eager/wick':>10} {'other/wick':>10}  other"
    print(hdr)

    def row(name, wick_us, eager, other, what, extra=""):
        r = {"name": name, "card": card, "wick_us": wick_us, "torch_eager_us": eager, "torch_other_us": other,
             "other": what, "eager_ratio": eager / wick_us, "other_ratio": other / wick_us if other else None}
        rows.append(r)
        o = f"{other:12.2f}" if other else f"{'-':>12}"
        orat = f"{other / wick_us:9.2f}x" if other else f"{'-':>10}"
        print(f"{name:30} {wick_us:10.2f} {eager:12.2f} {o} {eager / wick_us:9.2f}x {orat}  {what}{extra}", flush=True)

    for name, kind, arg in SMALL:
        if a.only in name:
            r = wick_case(a.build, name, a.time)
            if not r:
                continue
            w = r["us"] / CHAIN
            eager, graph = torch_small(torch, kind, arg, a.time)
            row(name + " (per call)", w, eager, graph, "CUDA graph")
    for name, kind, shape, dtype in LARGE:
        if a.only in name:
            r = wick_case(a.build, name, a.time)
            if not r:
                continue
            eager, comp = torch_large(torch, kind, shape, dtype, a.time)
            row(name, r["us"], eager, comp, "torch.compile max-autotune-no-cudagraphs",
                f"; wick {r.get('gbs', 0):.0f} GB/s = {r.get('gbs', 0) / bw * 100:.0f}% of copy")
    for name, n, dtype in GEMM:
        if a.only in name:
            r = wick_case(a.build, name, a.time)
            if not r:
                continue
            t = torch_gemm(torch, n, dtype, a.time)
            row(name, r["us"], t, None, "", f"; wick {r['gflops'] / 1e3:.1f} TFLOP/s = {t / r['us'] * 100:.0f}% of torch's rate")
    for name, train, dtype in ATTN:
        if a.only in name:
            r = wick_case(a.build, name, a.time)
            if not r:
                continue
            t, what = torch_attn(torch, train, dtype, a.time)
            if t is None:
                continue
            row(name, r["us"], t, None, "", f"; torch sdpa ({what}); wick {r['gflops'] / 1e3:.1f} TFLOP/s, "
                f"torch {r['gflops'] * r['us'] / t / 1e3:.1f}")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
