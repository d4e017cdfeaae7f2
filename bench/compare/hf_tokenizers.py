#!/usr/bin/env python3
"""Tokenizer encode throughput: wick (bench/tok_bench.c) vs HF tokenizers, one thread each.

    cmake --build build --target tok_bench
    .venv-bench/bin/python bench/compare/hf_tokenizers.py [--build build]

Both encode the test corpus (tests/fixtures/tok/expected.json's lines: Unicode, code,
numbers, whitespace runs) joined by newlines and repeated 200 times, without special
tokens: as one call ("whole") and line by line ("lines"; HF from a Python loop, so its
per-call overhead is in that row). The tokenizers: the fixture files the parity tests
use (GPT-2, Llama-3, Qwen2 and SmolLM2 pre-tokenizers over a 2k-entry vocabulary, BERT
WordPiece), and, when tools/fetch-models has run, the real ones: SmolLM2's 49k
vocabulary (wick reads the GGUF; HF gets the same vocabulary and merges through
tools/gen_tok_fixtures.py's converter) and all-MiniLM-L6-v2's tokenizer.json. Both
sides produce the same ids on this corpus (tests/tok checks it). Medians of 9 timed
runs after a warm-up. Prints one line per case with MB/s and the ratio.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK = os.path.join(ROOT, "tests", "fixtures", "tok")
GGUF = os.path.join(ROOT, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = os.path.join(ROOT, "models", "all-minilm-l6-v2", "tokenizer.json")


def cases():
    """(name, file wick reads, a function returning HF's Tokenizer)."""
    from tokenizers import Tokenizer
    out = [(n, os.path.join(TOK, n + ".json"), lambda n=n: Tokenizer.from_file(os.path.join(TOK, n + ".json")))
           for n in ["gpt2", "llama3", "qwen2", "smollm2", "wordpiece"]]
    if os.path.exists(GGUF):
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        from gen_tok_fixtures import smollm2_from_gguf
        out.append(("smollm2-real", GGUF, lambda: smollm2_from_gguf(GGUF)))
    if os.path.exists(MINILM):
        out.append(("minilm-real", MINILM, lambda: Tokenizer.from_file(MINILM)))
    return out


def hf_side(corpus, cs):
    lines = corpus * 200
    data = "\n".join(["\n".join(corpus)] * 200)
    nbytes = len(data.encode())
    out = []
    for _, _, make in cs:
        tok = make()
        tok.no_truncation()
        tok.no_padding()
        runs = [lambda: tok.encode(data, add_special_tokens=False),
                lambda: [tok.encode(x, add_special_tokens=False) for x in lines]]
        for fn in runs:
            fn()
            t = []
            for _ in range(9):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
            out.append(nbytes / statistics.median(t) / 1e6)
    return out


def wick_side(build, cs):
    """MB/s per case and mode, in the order of cs (tok_bench prints whole, then lines)."""
    exe = os.path.join(ROOT, build, "tok_bench")
    r = subprocess.run([exe] + [f for _, f, _ in cs], cwd=ROOT, capture_output=True, text=True, check=True,
                       env=dict(os.environ, WICK_THREADS="1"))
    return [json.loads(line)["mbs"] for line in r.stdout.splitlines()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    a = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    corpus = json.load(open(os.path.join(TOK, "expected.json")))["lines"]
    cs = cases()
    w, h = wick_side(a.build, cs), hf_side(corpus, cs)
    import tokenizers
    print(f"HF tokenizers {tokenizers.__version__}, one thread each")
    print(f"{'tokenizer':<13} {'mode':<6} {'wick MB/s':>10} {'HF MB/s':>10} {'wick/HF':>8}")
    for i, (name, _, _) in enumerate(cs):
        for j, mode in enumerate(("whole", "lines")):
            ws, hs = w[2 * i + j], h[2 * i + j]
            print(f"{name:<13} {mode:<6} {ws:>10.2f} {hs:>10.2f} {ws / hs:>7.1f}x")


if __name__ == "__main__":
    main()
