#!/usr/bin/env python3
"""Greedy continuations of SmolLM2-135M-Instruct Q4_1 by llama.cpp and by transformers
(the GGUF dequantized, f32): the fixture of tests/models/test_greedy_llama_cpp.c.

For each prompt: its token ids (llama.cpp's tokenizer, no BOS: the same ids go to
wick, so only the model is compared), the first 32 greedy tokens, and at each of
those steps the margin between llama.cpp's two largest logits. A step whose margin
is small is a near tie that legitimately differs between implementations. wick computes
what transformers computes (f32 on the dequantized weights), so it is held to the
reference's tokens while the reference's margin is >= 1e-3, and to llama.cpp's while
llama.cpp's margin is >= LLAMA_CPP_MIN_MARGIN (see below).

Pinned: llama-cpp-python==0.3.36 (CPU build), torch==2.15.0, transformers==4.57.6,
gguf==0.19.0, accelerate==1.15.0, numpy==2.4.6, Python 3.11, the GGUF
that tools/fetch-models installs (and checks the SHA-256 of; recorded here with its size,
which the test checks).
    .venv-bench/bin/python tools/gen_llama_cpp_greedy.py   # writes tests/fixtures/models/llama_cpp_greedy.json
"""
import hashlib
import json
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "llama_cpp_greedy.json")
STEPS = 32
# llama.cpp's logits differ from the f32 computation by up to ~1.5 (median 0.6, max over
# the vocabulary; measured on these prompts): it rounds activations to 8 bits for its
# integer dot products and keeps the KV cache in f16. Its top-2 gap flipped at margins
# up to 0.33 here, so it is held to wick's tokens only while its margin is >= 0.5.
LLAMA_CPP_MIN_MARGIN = 0.5
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "Q: What is 12 times 7?\nA:",
    "The three primary colors are",
    "<|im_start|>user\nWrite a haiku about autumn.<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n\nx = np.linspace(0, 1, 100)\n",
    "Photosynthesis is the process by which",
    "1, 2, 3, 5, 8, 13, 21,",
    "Le chat est sur la table. The cat is",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "SELECT name, age FROM users WHERE",
]


def last_logits(llm):
    """The logits of the last evaluated token (llama-cpp-python keeps `scores` only with logits_all)."""
    import numpy as np
    import llama_cpp
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def ref_greedy(hf, ids):
    """transformers on the dequantized GGUF in f32: the exact computation wick must match."""
    import torch
    seq, out, margins = list(ids), [], []
    with torch.no_grad():
        for _ in range(STEPS):
            lg = hf(input_ids=torch.tensor([seq])).logits[0, -1].double()
            top = torch.topk(lg, 2)
            out.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(out[-1])
    return out, margins


def main():
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
    import numpy as np
    import llama_cpp
    if not os.path.exists(MODEL):
        sys.exit(f"{MODEL} not found: run tools/fetch-models")
    with open(MODEL, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    llm = llama_cpp.Llama(model_path=MODEL, n_threads=2, n_threads_batch=2, n_ctx=512, n_batch=512, verbose=False)
    import torch
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL),
                                              dtype=torch.float32).eval()
    cases = []
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        out, margins = [], []
        for _ in range(STEPS):
            logits = last_logits(llm).astype(np.float64)
            top2 = np.partition(logits, -2)[-2:]
            nxt = int(np.argmax(logits))
            out.append(nxt)
            margins.append(float(top2.max() - top2.min()))
            llm.eval([nxt])
        ref, ref_margins = ref_greedy(hf, ids)
        cases.append({"prompt": p, "prompt_ids": ids, "ids": out, "margins": [round(m, 6) for m in margins],
                      "ref_ids": ref, "ref_margins": [round(m, 6) for m in ref_margins]})
    doc = {"generator": "tools/gen_llama_cpp_greedy.py", "llama_cpp_python": llama_cpp.__version__,
           "transformers": __import__("transformers").__version__, "torch": torch.__version__,
           "model": os.path.relpath(MODEL, ROOT), "sha256": sha, "bytes": os.path.getsize(MODEL), "steps": STEPS,
           "ref_min_margin": 1e-3, "llama_cpp_min_margin": LLAMA_CPP_MIN_MARGIN,
           "cases": cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    low = sum(min(c["ref_margins"]) < 1e-3 for c in cases)
    same = sum(c["ids"] == c["ref_ids"] for c in cases)
    print(f"wrote {OUT}: {len(cases)} prompts, {low} with a reference margin below 1e-3; "
          f"llama.cpp equals the f32 reference on {same}")


if __name__ == "__main__":
    main()
