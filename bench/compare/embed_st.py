#!/usr/bin/env python3
"""wick vs sentence-transformers (PyTorch CPU): all-MiniLM-L6-v2 sentences/s.

The same sentences (bench/data/sentences.txt: 256 of ~16 words, from
tools/gen_bench_sentences.py), the same model directory, 2 threads for both, batch
size 32 for both (sentence-transformers' default; wick encodes 32 at a time too),
normalized embeddings. For n = 1, 32 and 256 sentences, each side embeds the first n
sentences repeatedly for --time seconds (after a warm-up call) and the median call
gives sentences/s. wick runs as `wick bench --json --filter embed_minilm` (lazy mode)
from the repository root, beside this process (not at the same time). --rounds
repeats the pair (wick's cases, then sentence-transformers'): each round's ratio
compares two measurements taken close together, so a slow spell of the machine
lands on one round rather than on one side; the table gives medians and the range
of the per-round ratios. Also checks that the two sides' embeddings agree (cosine)
on all 256 sentences.

Both precisions, each against its own kind: f32 (wick's default; sentence-transformers'
default) and bf16 matrices (`wick embed --dtype bf16`: bf16 products accumulated in
f32; sentence-transformers with the model cast to torch.bfloat16, which also keeps
its activations in bf16). The bf16 row also gives wick bf16 / st f32.

    .venv-bench/bin/python bench/compare/embed_st.py --wick build/wick

Pinned peer: sentence-transformers==5.1.2 on torch==2.15.0 (tools/bench-venv).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

THREADS = 2
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, str(THREADS))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODEL = os.path.join(ROOT, "models", "all-minilm-l6-v2")
SENTENCES = os.path.join(ROOT, "bench", "data", "sentences.txt")
SIZES = (1, 32, 256)


def time_st(model, sentences, n, budget):
    texts = sentences[:n]
    model.encode(texts, batch_size=32, normalize_embeddings=True)   # warm-up
    times, start = [], time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        model.encode(texts, batch_size=32, normalize_embeddings=True)
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), len(times)


def run_wick(wick, budget):
    """{(dtype, n): (sentences/s, iterations)} from wick's embed_minilm[_bf16]/n cases."""
    env = dict(os.environ, WICK_THREADS=str(THREADS))
    out = subprocess.run([wick, "bench", "--json", "--filter", "embed_minilm", "--mode", "lazy",
                          "--time", str(budget)], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    rates = {}
    for line in out.stdout.splitlines():
        r = json.loads(line)
        case, n = r["name"].split("/")
        rates[("bf16" if case.endswith("_bf16") else "f32", int(n))] = (r["items_s"], r["iters"])
    if not rates:
        sys.exit(f"wick bench ran no embed case:\n{out.stderr}")
    return rates


def wick_embeddings(wick, dtype, n):
    out = subprocess.run([wick, "embed", "-m", MODEL, "--dtype", dtype, "--input", SENTENCES, "--format", "npy"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    header_len = int.from_bytes(out[8:10], "little")
    return np.frombuffer(out[10 + header_len:], dtype="<f4").reshape(n, -1)


def lowest_cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wick", default=os.path.join(ROOT, "build", "wick"))
    ap.add_argument("--time", type=float, default=3.0, help="seconds per case and side in each round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of (all wick cases, then the same sentence-transformers cases); "
                         "each ratio pairs one round's two sides, taken a minute apart at most")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    sentences = open(SENTENCES, encoding="utf-8").read().splitlines()
    models = {"f32": SentenceTransformer(MODEL, device="cpu"),
              "bf16": SentenceTransformer(MODEL, device="cpu").to(torch.bfloat16)}
    print(f"threads {THREADS}, torch {torch.__version__}, batch size 32, {len(sentences)} sentences of "
          f"{sum(len(s.split()) for s in sentences) / len(sentences):.1f} words on average, "
          f"{args.rounds} rounds")
    ours, theirs = {}, {}   # (dtype, n) -> [rate per round]
    for _ in range(args.rounds):
        w = run_wick(os.path.abspath(args.wick), args.time)
        for dt in ("f32", "bf16"):
            for n in SIZES:
                ours.setdefault((dt, n), []).append(w.get((dt, n), (float("nan"), 0))[0])
                theirs.setdefault((dt, n), []).append(time_st(models[dt], sentences, n, args.time)[0])
    med = statistics.median
    print(f"{'dtype':>5} {'sentences':>9} {'wick sent/s':>12} {'st sent/s':>10} {'wick / st':>9} "
          f"{'rounds min-max':>15} {'wick / st f32':>13}")
    for dt in ("f32", "bf16"):
        for n in SIZES:
            o, t, tf = ours[(dt, n)], theirs[(dt, n)], theirs[("f32", n)]
            r = [a / b for a, b in zip(o, t)]
            print(f"{dt:>5} {n:>9} {med(o):>12.1f} {med(t):>10.1f} {med(r):>9.2f} "
                  f"{min(r):>7.2f}-{max(r):<7.2f} {med([a / b for a, b in zip(o, tf)]):>13.2f}")
    ref = models["f32"].encode(sentences, batch_size=32, normalize_embeddings=True)
    ref16 = models["bf16"].encode(sentences, batch_size=32, normalize_embeddings=True, convert_to_numpy=False)
    ref16 = torch.stack(ref16).float().numpy()
    wick_abs = os.path.abspath(args.wick)
    ours_e, ours16 = wick_embeddings(wick_abs, "f32", len(sentences)), wick_embeddings(wick_abs, "bf16", len(sentences))
    print(f"lowest cosine over {len(sentences)} sentences, to sentence-transformers f32: wick f32 "
          f"{lowest_cosine(ours_e, ref):.7f}, wick bf16 {lowest_cosine(ours16, ref):.7f}, "
          f"st bf16 {lowest_cosine(ref16, ref):.7f}")


if __name__ == "__main__":
    main()
