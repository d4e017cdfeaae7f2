#!/usr/bin/env python3
"""Writes tests/fixtures/models/rope_scaling.json: RoPE scaling as transformers computes it.

Reference stack (pinned; CPU only):
    torch==2.15.0 transformers==4.57.x (its modeling_rope_utils.py)
    .venv-bench/bin/python tools/gen_rope_fixtures.py

For each case (a LlamaConfig with head_dim 16, rope_theta 1e4, max_position_embeddings
64 and one rope_scaling, also as config.json text), the file holds:
  inv_freq, attention_factor   ROPE_INIT_FUNCTIONS[type](config, "cpu", seq_len)
  positions, q, rotated        q (f32 [P, 16], seeded) at those positions through
                               LlamaRotaryEmbedding and apply_rotary_pos_emb (rotate-half),
                               the layer's own forward: for dynamic its inv_freq is
                               updated to seq_len = max(positions) + 1 first.
tests/models/test_rope_scaling.c compares wick's frequencies and wk_rope_freqs with them.
"""
import json
import os

import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models",
                   "rope_scaling.json")
CASES = [
    ("linear", {"rope_type": "linear", "factor": 4.0}),
    ("dynamic", {"rope_type": "dynamic", "factor": 2.0}),
    ("yarn", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    ("yarn_mscale", {"rope_type": "yarn", "factor": 8.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                     "beta_fast": 24.0, "beta_slow": 2.0}),
    ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32}),
]
POSITIONS = [0, 1, 7, 63, 100, 250]


def case(name, scaling, seed):
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=64, rope_theta=10000.0, rope_scaling=scaling)
    seq_len = max(POSITIONS) + 1
    inv, attn = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu", seq_len)
    emb = LlamaRotaryEmbedding(cfg)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, len(POSITIONS), 16, generator=g)
    pos = torch.tensor([POSITIONS])
    cos, sin = emb(q, pos)   # dynamic: updates its inv_freq to seq_len = max(pos) + 1
    rot, _ = apply_rotary_pos_emb(q, q, cos, sin)
    return {"name": name, "rope_scaling": scaling, "rope_scaling_json": json.dumps(scaling), "seq_len": seq_len, "inv_freq": inv.tolist(),
            "attention_factor": float(attn), "positions": POSITIONS, "q": q.flatten().tolist(),
            "rotated": rot.flatten().tolist()}


def main():
    import transformers
    doc = {"transformers": transformers.__version__, "torch": torch.__version__, "head_dim": 16,
           "rope_theta": 10000.0, "max_position_embeddings": 64,
           "cases": [case(n, s, 100 + i) for i, (n, s) in enumerate(CASES)]}
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
