#!/usr/bin/env python3
"""Writes the LoRA training fixtures of tests/train/ into tests/fixtures/lora/.

Reference stack (pinned; CPU only):
    torch==2.15.0 transformers==4.57.6 peft==0.17.1 safetensors==0.8.0
    .venv-bench/bin/pip install transformers==4.57.6 peft==0.17.1 safetensors==0.8.0
    .venv-bench/bin/python tools/gen_lora_fixtures.py [--seed N] [--out DIR]

The base model is tests/fixtures/models/qwen2 (random tiny Qwen2, f32). For each case
(qv: q_proj,v_proj r=4 alpha=8; all: all seven projections r=2 alpha=4 with rsLoRA),
peft wraps the model with dropout 0, the adapter weights are set to seeded random
values (B nonzero, so every gradient is non-trivial), and the directory
<case>/ gets what peft's save_pretrained writes (adapter_config.json,
adapter_model.safetensors: the initial adapter) plus reference.safetensors:
  ids, labels          i32 [2, 9]: a padded batch (labels -100 on the prompt and padding)
  loss                 f32 [1]: HF's causal-LM loss (shifted, mean over counted tokens)
  grad.<peft name>     f32: d loss / d adapter weight
  step<k>.<peft name>  f32: adapter weight after k = 1, 2, 3 torch.optim.AdamW steps
                       (lr 1e-2, betas 0.9/0.999, eps 1e-8, weight decay 0.01) on that batch
  step_loss            f32 [3]: the loss before each of those steps
optim.json records reference sequences for the optimizers and schedules:
  adamw / sgd: params and grads per step with torch's results (fixed seeds), and
  schedules from transformers' get_*_schedule_with_warmup functions.
"""
import argparse
import json
import math
import os
import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
import transformers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = os.path.join(ROOT, "tests", "fixtures", "models", "qwen2")

CASES = {
    "qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=False),
    "all": dict(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"], use_rslora=True),
}


def batch():
    # two sequences, the second shorter (right-padded with id 0); the first 3 tokens of
    # each are a "prompt" whose labels are -100, like the trainer's prompt/completion.
    ids = torch.tensor([[5, 17, 42, 9, 200, 31, 7, 99, 250], [11, 3, 77, 150, 64, 2, 0, 0, 0]], dtype=torch.long)
    labels = ids.clone()
    labels[:, :3] = -100
    labels[1, 6:] = -100
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, labels, mask


def causal_loss(model, ids, labels, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


def lora_case(name, kw, seed, out):
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **kw)
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n in sorted(params):
            params[n].copy_(0.2 * torch.randn(params[n].shape, generator=g))
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    pm.save_pretrained(d)
    os.remove(os.path.join(d, "README.md"))   # peft's model card: not part of the format
    with open(os.path.join(d, "adapter_config.json")) as f:
        ac = json.load(f)
    ac["base_model_name_or_path"] = "tests/fixtures/models/qwen2"   # not this machine's absolute path
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(ac, f, indent=2, sort_keys=True)
        f.write("\n")
    ids, labels, mask = batch()
    # peft's names in the saved file drop the adapter name ("default")
    def saved(n):
        return n.replace(".default", "")
    ref = {"ids": ids.to(torch.int32), "labels": labels.to(torch.int32)}
    loss = causal_loss(pm, ids, labels, mask)
    loss.backward()
    ref["loss"] = loss.detach().reshape(1)
    for n, p in params.items():
        ref["grad." + saved(n)] = p.grad.detach().clone()
    pm.zero_grad()
    opt = torch.optim.AdamW(list(params.values()), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for k in range(1, 4):
        opt.zero_grad()
        loss = causal_loss(pm, ids, labels, mask)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        for n, p in params.items():
            ref["step%d.%s" % (k, saved(n))] = p.detach().clone()
    ref["step_loss"] = torch.tensor(losses, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "reference.safetensors"))


def optim_sequences(seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for kind in ("adamw", "sgd"):
        p = torch.randn(6, generator=g, dtype=torch.float32)
        grads = [torch.randn(6, generator=g, dtype=torch.float32) for _ in range(5)]
        q = p.clone().requires_grad_(True)
        if kind == "adamw":
            hp = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
            opt = torch.optim.AdamW([q], **hp)
        else:
            hp = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
            opt = torch.optim.SGD([q], **hp)
        after = []
        for gr in grads:
            q.grad = gr.clone()
            opt.step()
            after.append(q.detach().tolist())
        out[kind] = dict(hparams={k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()},
                         init=p.tolist(), grads=[x.tolist() for x in grads], after=after)
    # schedules: the multiplier of the base lr at steps 0..N-1, from transformers
    base_lr, n, warm = 1.0, 20, 4
    def seq(make):
        q = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([q], lr=base_lr)
        sch = make(opt)
        lrs = []
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sch.step()
        return lrs
    out["schedules"] = dict(
        steps=n, warmup=warm,
        constant=seq(lambda o: transformers.get_constant_schedule(o)),
        linear=seq(lambda o: transformers.get_linear_schedule_with_warmup(o, 0, n)),
        linear_warmup=seq(lambda o: transformers.get_linear_schedule_with_warmup(o, warm, n)),
        cosine=seq(lambda o: transformers.get_cosine_schedule_with_warmup(o, 0, n)),
        warmup_cosine=seq(lambda o: transformers.get_cosine_schedule_with_warmup(o, warm, n)),
        warmup_cosine_min=seq(lambda o: transformers.get_cosine_with_min_lr_schedule_with_warmup(
            o, warm, n, min_lr_rate=0.1)),
    )
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "lora"))
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    for i, (name, kw) in enumerate(CASES.items()):
        lora_case(name, kw, a.seed * 100 + i + 1, a.out)
    with open(os.path.join(a.out, "optim.json"), "w") as f:
        json.dump(optim_sequences(a.seed + 7), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
