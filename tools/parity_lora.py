#!/usr/bin/env python3
"""Live LoRA parity against peft (make parity).

1. Regenerates the LoRA fixtures with a new seed (tools/gen_lora_fixtures.py) and runs
   the LoRA test on them: loss, every adapter gradient and three AdamW steps vs peft.
2. Trains an adapter with `wick train` on the tiny Qwen2, loads it with
   peft.PeftModel.from_pretrained on the transformers model, and compares peft's loss
   on a held-out example with the loss wick reports for the same adapter (within 1e-5).

    .venv-bench/bin/python tools/parity_lora.py [--build build] [--seed N]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN2 = os.path.join(ROOT, "tests", "fixtures", "models", "qwen2")


def fixtures_live(build, seed):
    with tempfile.TemporaryDirectory() as root:
        os.symlink(os.path.join(ROOT, "tests", "fixtures", "models"), os.path.join(root, "models"))
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_lora_fixtures.py"), "--seed", str(seed),
                        "--out", os.path.join(root, "lora")], check=True)
        r = subprocess.run([os.path.join(ROOT, build, "test_lora")], env=dict(os.environ, WICK_FIXTURES=root),
                           capture_output=True, text=True)
        print(r.stdout.strip().splitlines()[-1] if r.stdout else r.stderr)
        return r.returncode == 0


def peft_loads_wick(build, seed):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    r = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        data, held, out = (os.path.join(d, n) for n in ("train.jsonl", "held.jsonl", "out"))
        with open(data, "w") as f:
            for _ in range(16):
                f.write(json.dumps({"input_ids": [r.randrange(256) for _ in range(r.randrange(4, 12))]}) + "\n")
        ids = [r.randrange(256) for _ in range(10)]
        with open(held, "w") as f:
            f.write(json.dumps({"input_ids": ids}) + "\n")
        wick = os.path.join(ROOT, build, "wick")
        subprocess.run([wick, "train", "-m", QWEN2, "--data", data, "-o", out, "--steps", "6", "--batch", "4",
                        "--lr", "1e-2", "--targets", "all-linear", "--rank", "4", "--seed", str(seed), "--quiet"],
                       check=True, capture_output=True)
        # the same adapter, evaluated by wick (lr 0 leaves it unchanged)
        res = subprocess.run([wick, "train", "-m", QWEN2, "--data", data, "-o", os.path.join(d, "eval"),
                              "--init-adapter", out, "--steps", "1", "--lr", "0", "--weight-decay", "0",
                              "--batch", "1", "--eval", held, "--quiet"], check=True, capture_output=True, text=True)
        wick_loss = json.loads(res.stdout.strip().splitlines()[-1])["eval_loss"]
        base = AutoModelForCausalLM.from_pretrained(QWEN2, dtype=torch.float32, attn_implementation="eager")
        pm = PeftModel.from_pretrained(base, out)
        with torch.no_grad():
            t = torch.tensor([ids])
            peft_loss = pm(input_ids=t, labels=t).loss.item()
        ok = abs(peft_loss - wick_loss) <= 1e-5 * max(1.0, abs(peft_loss))
        print("peft loads wick's adapter: loss %.7f (peft) vs %.7f (wick): %s" % (peft_loss, wick_loss,
                                                                                 "ok" if ok else "DIFFERENT"))
        return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--seed", type=int, default=random.randrange(1, 10**6))
    a = ap.parse_args()
    print("LoRA parity, seed %d" % a.seed)
    ok = fixtures_live(a.build, a.seed)
    ok = peft_loads_wick(a.build, a.seed) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
