#!/usr/bin/env python3
"""wick vs llama.cpp (llama-cpp-python) on the same GGUF: prefill and decode tokens/s.

Batch 1, 2 threads for both, greedy, the same prompt token ids. llama.cpp runs in
this process through llama-cpp-python's low-level eval (no sampling overhead);
wick runs as `wick generate --json` (its summary line gives prefill_tok_s and
decode_tok_s; the prompt is passed as text and its token count is checked to match).
Each side runs --reps times, alternating, and the best run of each is reported
(the machine is shared: best-of is the least noisy statistic). Both sides get the same
context size (--ctx: llama.cpp's n_ctx, wick's --ctx-size). Peak resident memory:
wick's is the largest maximum resident set of its runs (/usr/bin/time); llama.cpp's is this process's peak, and
the same less the resident memory before the model was loaded (Python, numpy, the
llama_cpp module).

    .venv-bench/bin/python bench/compare/llama_cpp.py --wick build/wick [--model M.gguf]

Pinned peer: llama-cpp-python==0.3.36 (CPU build, compiled from source by pip;
tools/bench-venv --llama-cpp installs it).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
THREADS = 2
# About 128 tokens of plain English prose for the prefill case.
BASE = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a lantern "
        "and a small notebook in which he wrote down the color of the sky, the direction of the wind, "
        "and the names of the ships that passed along the rocky coast. ")


def prompt_text(llm, want):
    text = BASE
    while len(llm.tokenize(text.encode(), add_bos=False, special=False)) < want:
        text += BASE
    toks = llm.tokenize(text.encode(), add_bos=False, special=False)[:want]
    return llm.detokenize(toks).decode(), toks


def llama_run(llm, toks, gen):
    import numpy as np
    import llama_cpp
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(toks)
    t1 = time.perf_counter()
    for _ in range(gen):
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)  # `scores` is kept only with logits_all
        nxt = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))
        llm.eval([nxt])
    t2 = time.perf_counter()
    return len(toks) / (t1 - t0), gen / (t2 - t1)


def wick_run(wick, model, text, gen, ctx):
    """(prompt tokens, prefill tok/s, decode tok/s, peak RSS in MB) of one `wick generate`."""
    env = dict(os.environ, WICK_THREADS=str(THREADS))
    # /usr/bin/time's child is wick alone (a child forked from this process would count
    # this process's pages until it execs)
    rss_file = os.path.join(tempfile.gettempdir(), f"wick-rss-{os.getpid()}")
    out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file, wick, "generate", "-m", model, "-p", text, "-n", str(gen), "--temp", "0", "--ignore-eos",
                          "--ctx-size", str(ctx), "--json"], capture_output=True, text=True, env=env, check=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    with open(rss_file) as f:
        rss_mb = int(f.read().split()[-1]) / 1024
    os.unlink(rss_file)
    return summary["prompt_tokens"], summary["prefill_tok_s"], summary["decode_tok_s"], rss_mb


def rss_now_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wick", default=os.path.join(ROOT, "build", "wick"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=1024, help="context size (KV cache positions) on both sides")
    ap.add_argument("--json", action="store_true", help="one JSON object per side")
    args = ap.parse_args()
    # this file is itself named llama_cpp.py: drop its folder so the import finds the package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama_cpp missing: run with .venv-bench/bin/python after tools/bench-venv --llama-cpp")
    if not os.path.exists(args.model):
        sys.exit(f"{args.model} not found: run tools/fetch-models")
    import resource
    import numpy  # noqa: F401  (llama_run uses it: counted in the baseline)
    base_mb = rss_now_mb()
    llm = llama_cpp.Llama(model_path=args.model, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=args.ctx,
                          n_batch=512, n_ubatch=512, verbose=False)
    text, toks = prompt_text(llm, args.prompt_tokens)
    lp, ld, wp, wd, wr = [], [], [], [], []
    llama_run(llm, toks, 4)  # warm-up: first-touch of the mapping, thread start
    for _ in range(args.reps):
        p, d = llama_run(llm, toks, args.gen)
        lp.append(p), ld.append(d)
        n, p, d, r = wick_run(args.wick, args.model, text, args.gen, args.ctx)
        wr.append(r)
        if n != len(toks):
            sys.exit(f"wick tokenized the prompt to {n} tokens, llama.cpp to {len(toks)}: not the same input")
        wp.append(p), wd.append(d)
    rows = {"llama.cpp": (max(lp), max(ld)), "wick": (max(wp), max(wd))}
    llama_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wick_mb = max(wr)
    rss = {"llama.cpp": llama_mb, "wick": wick_mb}
    if args.json:
        for k, (p, d) in rows.items():
            print(json.dumps({"name": k, "prompt_tokens": len(toks), "gen": args.gen, "threads": THREADS,
                              "ctx": args.ctx, "prefill_tok_s": round(p, 2), "decode_tok_s": round(d, 2),
                              "peak_rss_mb": round(rss[k], 1)}))
        return
    print(f"{os.path.basename(args.model)}, batch 1, {THREADS} threads, prompt {len(toks)} tokens, "
          f"decode {args.gen} tokens, best of {args.reps} (llama-cpp-python {llama_cpp.__version__})")
    print(f"{'':12}{'prefill tok/s':>15}{'decode tok/s':>15}")
    for k, (p, d) in rows.items():
        print(f"{k:12}{p:15.1f}{d:15.1f}")
    (lpb, ldb), (wpb, wdb) = rows["llama.cpp"], rows["wick"]
    print(f"{'wick/llama':12}{wpb / lpb:15.2f}{wdb / ldb:15.2f}")
    print(f"peak RSS (context {args.ctx}): wick {wick_mb:.1f} MB; llama.cpp {llama_mb:.1f} MB for this process, "
          f"{llama_mb - base_mb:.1f} MB above its {base_mb:.1f} MB before the model was loaded")
    print("all runs (tok/s): llama.cpp prefill " + " ".join(f"{v:.0f}" for v in lp) + ", decode " +
          " ".join(f"{v:.0f}" for v in ld) + "; wick prefill " + " ".join(f"{v:.0f}" for v in wp) + ", decode " +
          " ".join(f"{v:.0f}" for v in wd))


if __name__ == "__main__":
    main()
