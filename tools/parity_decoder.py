#!/usr/bin/env python3
"""Live parity for the decoder models (the `make parity` tier of tests/models/test_llama.c).

1. Regenerates the tiny random Llama / Qwen2 models (safetensors f32, bf16, Q8_0 GGUF)
   with a fresh seed into a temporary folder and reruns test_llama against them
   (WICK_FIXTURES), so the comparison is against transformers now, not a stored file.
2. If models/smollm2-135m-instruct/*.gguf exists (tools/fetch-models), runs transformers
   on that GGUF (dequantized to f32) over a few prompts and has test_llama compare
   wick's logits (WICK_PARITY_MODEL / WICK_PARITY_REF): max abs diff <= 1e-3 and the
   same top-1 token at every position.

Reference stack (pinned; CPU): torch==2.15.0 transformers==4.57.6 safetensors==0.8.0
gguf==0.19.0 accelerate==1.15.0 (transformers needs accelerate to read GGUF).
    .venv-bench/bin/python tools/parity_decoder.py --build build [--seed 7]
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return", "Once upon a time, in a land far",
           "数学是科学的语言，", "1, 2, 3, 5, 8, 13, 21,"]


def smollm2_ref(gguf_path, out):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    T = min(len(i) for i in ids)   # one [B, T] batch: cut to the shortest prompt
    ids = torch.tensor([i[:T] for i in ids], dtype=torch.long)
    with torch.no_grad():
        logits = m(input_ids=ids).logits.float().contiguous()
    save_file({"ids": ids.to(torch.int32).contiguous(), "logits": logits}, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="CMake build folder holding test_llama")
    ap.add_argument("--seed", type=int, default=1000, help="seed offset of the random models")
    args = ap.parse_args()
    test = os.path.join(ROOT, args.build, "test_llama")
    if not os.path.exists(test):
        sys.exit(f"{test} not found: build first (make build)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_fixtures.py"), "--out",
                        os.path.join(tmp, "models"), "--seed", str(args.seed)], check=True, stdout=subprocess.DEVNULL)
        env = dict(os.environ, WICK_FIXTURES=tmp)
        ggufs = sorted(glob.glob(os.path.join(ROOT, "models", "smollm2-135m-instruct", "*.gguf")))
        if ggufs:
            ref = os.path.join(tmp, "smollm2_ref.safetensors")
            smollm2_ref(ggufs[0], ref)
            env.update(WICK_PARITY_MODEL=ggufs[0], WICK_PARITY_REF=ref)
        else:
            print("models/smollm2-135m-instruct not fetched: skipping the real-model comparison")
        r = subprocess.run([test], env=env)
        sys.exit(r.returncode)


if __name__ == "__main__":
    main()
