#!/usr/bin/env python3
"""LoRA training step: wick train vs PyTorch + peft on the same model, data and threads.

    tools/bench-venv && .venv-bench/bin/pip install transformers==4.57.6 peft==0.17.1 gguf==0.19.0
    .venv-bench/bin/python bench/compare/peft_train.py [--steps 4] [--batch 4] [--seq 256]
        [--targets q_proj,v_proj | all-linear] [--base f32|q4_1] [--device cpu|cuda]

The model is SmolLM2-135M-Instruct: the fetched Q4_1 GGUF, dequantized once by
transformers into an f32 safetensors directory (build/smollm2-f32/) that both sides
load for --base f32; with --base q4_1 wick trains on the GGUF itself (QLoRA-style,
the base stays quantized) while torch still needs f32. Both run `steps` AdamW steps
(lr 1e-4, r=8, alpha 16, dropout 0) on the same random token batches (batch x seq,
every label counted), 2 threads, after one untimed warm-up step. Each side runs in
its own process; peak resident memory is that process's ru_maxrss. Prints one JSON
line per side and the ratios.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF_DIR = os.path.join(ROOT, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
F32_DIR = os.path.join(ROOT, "build", "smollm2-f32")
THREADS = 2


def make_f32():
    """The f32 model both sides load: the GGUF dequantized, or (without models/, e.g. on
    the GPU machine) a random model of SmolLM2-135M's shape."""
    if os.path.exists(os.path.join(F32_DIR, "model.safetensors")):
        return
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    if os.path.exists(os.path.join(GGUF_DIR, GGUF)):
        m = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF, dtype="float32")
    else:
        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                         max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                                         tie_word_embeddings=True, torch_dtype="float32"))
    m.save_pretrained(F32_DIR, safe_serialization=True)


def batches(a, vocab=49152):
    import random
    r = random.Random(0)
    n = (a.steps + 1) * a.batch
    return [[r.randrange(10, vocab) for _ in range(a.seq)] for _ in range(n)]


def torch_side(a):
    import torch
    torch.set_num_threads(THREADS)
    dev = torch.device(a.device)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(F32_DIR, dtype=torch.float32, attn_implementation="sdpa")
    targets = "all-linear" if a.targets == "all-linear" else a.targets.split(",")
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                      task_type="CAUSAL_LM"))
    pm.to(dev)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
    data = torch.tensor(batches(a)).to(dev)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    times = []
    for s in range(a.steps + 1):
        ids = data[s * a.batch:(s + 1) * a.batch]
        t0 = time.perf_counter()
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        sync()
        times.append(time.perf_counter() - t0)
    tok = a.batch * a.seq * a.steps
    r = {"side": "torch+peft", "tokens_per_s": tok / sum(times[1:]), "step_s": sum(times[1:]) / a.steps,
         "loss": loss.item()}
    if a.device == "cuda":
        r["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return r


def wick_side(a):
    data = os.path.join(ROOT, "build", "bench_train.jsonl")
    with open(data, "w") as f:
        for ids in batches(a):
            f.write(json.dumps({"input_ids": ids}) + "\n")
    model = F32_DIR if a.base == "f32" or a.device == "cuda" else os.path.join(GGUF_DIR, GGUF)
    out = os.path.join(ROOT, "build", "bench_train_out")
    cmd = [os.path.join(ROOT, a.build, "wick"), "train", "-m", model, "--data", data, "-o", out, "--overwrite",
           "--steps", str(a.steps + 1), "--batch", str(a.batch), "--seq-len", str(a.seq), "--targets", a.targets,
           "--lr", "1e-4", "--no-shuffle", "--quiet", "--clip", "0", "--device", a.device]
    env = dict(os.environ, WICK_THREADS=str(THREADS))
    rc, rss = spawn(cmd, env)
    if rc:
        sys.exit("wick train failed (exit %d)" % rc)
    # per-step times from metrics.csv (elapsed_s column), warm-up step left out
    rows = [r.split(",") for r in open(os.path.join(out, "metrics.csv")).read().split("\n")[1:] if r]
    el = [float(r[7]) for r in rows]
    timed = el[-1] - el[0]
    tok = a.batch * a.seq * a.steps
    return {"side": "wick", "tokens_per_s": tok / timed, "step_s": timed / a.steps, "loss": float(rows[-1][2]),
            "peak_rss_mib": round(rss)}


def spawn(cmd, env=None, out_path=os.devnull):
    """Runs cmd; returns its exit code and its own peak resident memory in MiB."""
    with open(out_path, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_maxrss / 1024


def torch_child(a):
    args = [sys.executable, __file__, "--child", "torch", "--steps", str(a.steps), "--batch", str(a.batch), "--seq",
            str(a.seq), "--targets", a.targets, "--base", a.base, "--build", a.build, "--device", a.device]
    out = os.path.join(ROOT, "build", "bench_torch.json")
    rc, rss = spawn(args, None, out)
    if rc:
        sys.exit("torch side failed (exit %d)" % rc)
    r = json.loads(open(out).read().strip().splitlines()[-1])
    r["peak_rss_mib"] = round(rss)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--base", default="f32", choices=["f32", "q4_1"])
    ap.add_argument("--build", default="build")
    ap.add_argument("--child", default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    global F32_DIR
    if not os.path.exists(os.path.join(GGUF_DIR, GGUF)):
        F32_DIR = os.path.join(ROOT, "build", "smollm2-shape-random")
    if a.child == "torch":
        print(json.dumps(torch_side(a)))
        return
    make_f32()
    w, t = wick_side(a), torch_child(a)
    for r in (w, t):
        r.update(batch=a.batch, seq=a.seq, targets=a.targets, base=a.base, threads=THREADS, device=a.device)
        print(json.dumps(r))
    if a.device == "cuda":   # host RSS says little about a GPU run
        print(json.dumps({"ratio_tokens_per_s": round(w["tokens_per_s"] / t["tokens_per_s"], 3)}))
        return
    print(json.dumps({"ratio_tokens_per_s": round(w["tokens_per_s"] / t["tokens_per_s"], 3),
                      "ratio_peak_rss": round(w["peak_rss_mib"] / t["peak_rss_mib"], 3)}))


if __name__ == "__main__":
    main()
