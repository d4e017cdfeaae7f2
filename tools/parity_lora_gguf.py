#!/usr/bin/env python3
"""llama.cpp loads wick's GGUF LoRA export (make parity).

Trains a strong adapter with `wick train` on SmolLM2-135M-Instruct Q4_1 (all linear
projections, a high learning rate so it moves the loss a lot), exports it with
`wick adapter export --gguf`, and compares the loss of a sentence with and without
the adapter: llama.cpp (llama-cpp-python, the same GGUF, --lora) against wick. The
two engines quantize differently (llama.cpp also quantizes activations to Q8), so the
bases differ a little; the adapter's effect on the loss must agree within 5% of its
size, which a wrong tensor name, shape, scale or row order would break.

    .venv-bench/bin/python tools/parity_lora_gguf.py [--build build]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
TEXT = b"The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun."


def llama_cpp_loss(ids, lora=None):
    from llama_cpp import Llama
    kw = dict(model_path=MODEL, logits_all=True, n_ctx=256, n_threads=2, verbose=False)
    if lora:
        kw["lora_path"] = lora
    llm = Llama(**kw)
    llm.eval(ids)
    total = 0.0
    for t in range(len(ids) - 1):
        row = llm.scores[t]
        m = max(row)
        lse = m + math.log(sum(math.exp(x - m) for x in row))
        total += lse - row[ids[t + 1]]
    return total / (len(ids) - 1)


def wick_loss(build, d, held, adapter):
    cmd = [os.path.join(ROOT, build, "wick"), "train", "--data", held, "-o", os.path.join(d, "e"), "--overwrite",
           "--steps", "1", "--lr", "0", "--weight-decay", "0", "--batch", "1", "--eval", held, "--quiet",
           "--targets", "all-linear"]
    if adapter:
        cmd += ["--init-adapter", adapter]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["eval_loss"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    a = ap.parse_args()
    from llama_cpp import Llama
    ids = Llama(model_path=MODEL, vocab_only=True, verbose=False).tokenize(TEXT, add_bos=False)
    with tempfile.TemporaryDirectory() as d:
        held = os.path.join(d, "held.jsonl")
        with open(held, "w") as f:
            f.write(json.dumps({"input_ids": ids}) + "\n")
        wick = os.path.join(ROOT, a.build, "wick")
        ad = os.path.join(d, "adapter")
        subprocess.run([wick, "train", "--data", os.path.join(ROOT, "data", "demo", "train.jsonl"), "-o", ad,
                        "--steps", "3", "--batch", "4", "--lr", "1e-2", "--targets", "all-linear", "--quiet"],
                       check=True, capture_output=True)
        gg = os.path.join(d, "adapter.gguf")
        subprocess.run([wick, "adapter", "export", "--gguf", "--adapter", ad, "-o", gg], check=True, capture_output=True)
        w0, w1 = wick_loss(a.build, d, held, None), wick_loss(a.build, d, held, ad)
        l0, l1 = llama_cpp_loss(ids), llama_cpp_loss(ids, gg)
    dw, dl = w1 - w0, l1 - l0
    ok = abs(dw - dl) <= 0.05 * abs(dw) and abs(dw) > 0.1
    print("loss without / with the adapter: wick %.4f / %.4f, llama.cpp %.4f / %.4f; adapter effect %.4f vs %.4f: %s"
          % (w0, w1, l0, l1, dw, dl, "ok" if ok else "DIFFERENT"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
