#!/usr/bin/env python3
"""Greedy generation: wick generate vs transformers generate on the same f32 / bf16 weights.

    .venv-bench/bin/python bench/compare/torch_generate.py [--dtype f32|bf16] [--tokens 64] [--runs 3] [--build build]

SmolLM2-135M-Instruct's fetched Q4_1 GGUF is dequantized once by transformers into
build/smollm2-<dtype>/ (weights and tokenizer.json), which both sides load. The same
prompt, greedy, the same number of new tokens, 2 threads each; prefill and decode
tokens/s as each reports them (wick: `--json` summary; torch: the prompt's forward
pass timed alone, then `generate` minus that). Each side runs --runs times (wick: a
process each; transformers: one process, after a warm-up) and reports the median of
each rate, and its process's peak RSS (wick: the largest of its runs; transformers: its
process, model loading included). Prints one JSON
line per side and the ratios.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF_DIR = os.path.join(ROOT, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = 2
PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
          "Describe the sea, the weather and what the message says, in plain simple words.")


def model_dir(dtype):
    d = os.path.join(ROOT, "build", "smollm2-" + dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        import torch
        m = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF, dtype=torch.float32)
        m.to(torch.bfloat16 if dtype == "bf16" else torch.float32).save_pretrained(d, safe_serialization=True)
    if not os.path.exists(os.path.join(d, "tokenizer.json")):
        AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF).save_pretrained(d)
    return d


def torch_side(d, a):
    import torch
    torch.set_num_threads(THREADS)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16 if a.dtype == "bf16" else torch.float32)
    # the prompt's ids as wick's tokenizer of the GGUF gives them (= HF's SmolLM2 ids),
    # so both sides start from the same tokens
    r = subprocess.run([os.path.join(ROOT, a.build, "wick"), "tokenize", "-m", os.path.join(GGUF_DIR, GGUF), "--ids",
                        "--no-special", PROMPT], capture_output=True, text=True, check=True)
    ids = torch.tensor([[int(x) for x in r.stdout.split()]])
    m.generation_config.eos_token_id = None   # like wick's --ignore-eos: no stop, no logit suppression
    m.generation_config.pad_token_id = 0
    prefills, decodes = [], []
    with torch.no_grad():
        m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)   # warm-up
        for _ in range(a.runs):
            t0 = time.perf_counter()
            m(ids)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.tokens, do_sample=False)
            total = time.perf_counter() - t0
            n_new = out.shape[1] - ids.shape[1]
            prefills.append(ids.shape[1] / prefill)
            decodes.append((n_new - 1) / max(total - prefill, 1e-9))
    return {"side": "transformers", "prompt_tokens": ids.shape[1], "generated_tokens": n_new,
            "prefill_tok_s": statistics.median(prefills), "decode_tok_s": statistics.median(decodes),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "ids": out[0, ids.shape[1]:].tolist()}


def wick_side(d, a):
    # wick reads the GGUF's own vocabulary (transformers' tokenizer.json conversion of a
    # GGUF vocabulary is not the original tokenizer.json); the ids are the same
    cmd = [os.path.join(ROOT, a.build, "wick"), "generate", "-m", d, "--tokenizer", os.path.join(GGUF_DIR, GGUF),
           "-p", PROMPT, "-n", str(a.tokens), "--temp", "0",
           "--ignore-eos", "--json", "--no-special"]
    runs, rss_kb = [], 0
    rss_file = os.path.join(tempfile.gettempdir(), f"wick-rss-{os.getpid()}")
    for _ in range(a.runs):
        # /usr/bin/time reports wick's own peak (a forked Python's pages would count in RUSAGE_CHILDREN)
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd, capture_output=True, text=True,
                           env=dict(os.environ, WICK_THREADS=str(THREADS)), check=True)
        runs.append([json.loads(x) for x in r.stdout.strip().splitlines()])
        with open(rss_file) as f:
            rss_kb = max(rss_kb, int(f.read().split()[-1]))
    os.unlink(rss_file)
    s = runs[-1][-1]
    return {"side": "wick", "prompt_tokens": s["prompt_tokens"], "generated_tokens": s["generated_tokens"],
            "prefill_tok_s": statistics.median(x[-1]["prefill_tok_s"] for x in runs),
            "decode_tok_s": statistics.median(x[-1]["decode_tok_s"] for x in runs),
            "peak_rss_mb": round(rss_kb / 1024, 1),
            "ids": [x["id"] for x in runs[-1][:-1]]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--build", default="build")
    ap.add_argument("--runs", type=int, default=3, help="runs per side; rates are medians")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    d = model_dir(a.dtype)
    w, t = wick_side(d, a), torch_side(d, a)
    for r in (w, t):
        r["dtype"] = a.dtype
        print(json.dumps({k: v for k, v in r.items() if k != "ids"}))
    print(json.dumps({"prefill_ratio": round(w["prefill_tok_s"] / t["prefill_tok_s"], 3),
                      "decode_ratio": round(w["decode_tok_s"] / t["decode_tok_s"], 3),
                      "same_ids": w["ids"] == t["ids"],
                      "first_difference": next((i for i, (x, y) in enumerate(zip(w["ids"], t["ids"])) if x != y), None)}))


if __name__ == "__main__":
    main()
