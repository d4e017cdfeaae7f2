#!/usr/bin/env python3
"""Writes the small committed fixtures of tests/io into tests/fixtures/io/.

Reference stack (pinned): safetensors==0.8.0, numpy==2.4.6 (Python 3.11).

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install safetensors==0.8.0 numpy==2.4.6
    .venv-fixtures/bin/python tools/gen_io_fixtures.py

Files:
  tensors.safetensors           F32/F16/BF16/I32 tensors (incl. 0-d and empty), an I64 one,
                                and __metadata__, written by the reference safetensors library
  tensors.expected.json         every tensor's dtype, shape and values (as exact f32 numbers)
                                plus the metadata, for the C test to compare against
  sharded/                      a 2-shard checkpoint with model.safetensors.index.json
  config_llama_4x.json          SmolLM2-135M-Instruct's config (transformers 4.x layout)
  config_llama_5x.json          a Llama 3.2-style config in the 5.x layout (rope_parameters, dtype)
  config_qwen2.json             Qwen2.5-0.5B-Instruct's config (GQA, tied embeddings)
  config_bert.json              all-MiniLM-L6-v2's config
"""
import json
import os

import numpy as np
from safetensors import TensorSpec, serialize_file
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "io")


def bf16_bits(x):
    """float32 -> bfloat16 bit patterns, rounding to nearest even (as torch does)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_values(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def sort_metadata(path):
    """The reference writer emits __metadata__ in hash-map order, which changes from run
    to run; sort it in place (same bytes otherwise) so that regenerated fixtures are
    identical. The header keeps its length, so the data section doesn't move."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    n = int.from_bytes(raw[:8], "little")
    text = raw[8:8 + n].decode("utf-8")
    header = json.loads(text)
    meta = header.get("__metadata__")
    if not meta:
        return
    start = text.index('"__metadata__"')
    old = json.dumps(meta, separators=(",", ":"), ensure_ascii=False)
    new = json.dumps(dict(sorted(meta.items())), separators=(",", ":"), ensure_ascii=False)
    i = text.index("{", start)
    assert len(old) == len(new) and json.loads(text[i:i + len(old)]) == meta, "unexpected header layout"
    text = text[:i] + new + text[i + len(new):]
    assert json.loads(text)["__metadata__"] == meta
    raw[8:8 + n] = text.encode("utf-8")
    with open(path, "wb") as f:
        f.write(raw)


def write_tensors():
    f32 = np.array([[1.5, -2.25, 3.0e-5], [1.0e10, -0.0, 7.0]], dtype=np.float32)
    f16 = np.array([1.0, -2.5, 65504.0, 6.0e-5, 0.333], dtype=np.float16)
    bfb = bf16_bits([[1.0, -3.14159], [1.0e30, 0.0078125]])
    i32 = np.array([0, 1, -1, 2147483647, -2147483648], dtype=np.int32)
    ramp = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 11.5) / 8.0
    scalar = np.array(42.0, dtype=np.float32)
    empty = np.zeros((0, 3), dtype=np.float32)
    i64 = np.array([0, 1, 2], dtype=np.int64)

    keep = [f32, f16, bfb, i32, ramp, scalar, empty, i64]
    specs = {}
    for name, arr, dt in [("w_f32", f32, "float32"), ("w_f16", f16, "float16"), ("w_bf16", bfb, "bfloat16"),
                          ("ids_i32", i32, "int32"), ("ramp", ramp, "float32"), ("scalar", scalar, "float32"),
                          ("empty", empty, "float32"), ("position_ids", i64, "int64")]:
        specs[name] = TensorSpec(dtype=dt, shape=list(arr.shape), data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    meta = {"format": "pt", "note": "wick fixture \u2713 \"quoted\"\n"}
    serialize_file(specs, os.path.join(OUT, "tensors.safetensors"), metadata=meta)
    sort_metadata(os.path.join(OUT, "tensors.safetensors"))
    del keep

    def entry(dtype, arr):
        return {"dtype": dtype, "shape": list(arr.shape), "values": [float(v) for v in np.ravel(arr)]}

    expected = {
        "tensors": {
            "w_f32": entry("F32", f32),
            "w_f16": entry("F16", f16.astype(np.float32)),
            "w_bf16": entry("BF16", bf16_values(bfb)),
            "ids_i32": entry("I32", i32),
            "ramp": entry("F32", ramp),
            "scalar": entry("F32", scalar),
            "empty": entry("F32", empty),
            "position_ids": entry("I64", i64),
        },
        "metadata": meta,
    }
    with open(os.path.join(OUT, "tensors.expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


def write_sharded():
    d = os.path.join(OUT, "sharded")
    os.makedirs(d, exist_ok=True)
    shards = {
        "model-00001-of-00002.safetensors": {
            "embed.weight": np.arange(12, dtype=np.float32).reshape(4, 3),
            "layers.0.weight": np.full((3, 3), 0.5, dtype=np.float32),
        },
        "model-00002-of-00002.safetensors": {
            "layers.1.weight": np.eye(3, dtype=np.float16),
            "norm.weight": np.array([1.0, 2.0, 3.0], dtype=np.float32),
        },
    }
    weight_map, total = {}, 0
    for fname, tensors in shards.items():
        save_file(tensors, os.path.join(d, fname), metadata={"format": "pt", "shard": fname[6:11]})
        sort_metadata(os.path.join(d, fname))
        for k, v in tensors.items():
            weight_map[k] = fname
            total += v.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


CONFIGS = {
    "config_llama_4x.json": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 576,
        "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": True,
        "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
        "use_cache": True, "vocab_size": 49152,
    },
    "config_llama_5x.json": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
        "dtype": "float32", "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_parameters": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
                            "rope_type": "llama3"},
        "tie_word_embeddings": True, "transformers_version": "5.0.0", "use_cache": True, "vocab_size": 128256,
    },
    "config_qwen2.json": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
        "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 151936,
    },
    "config_bert.json": {
        "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02, "intermediate_size": 1536,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
        "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0,
        "position_embedding_type": "absolute", "transformers_version": "4.8.2", "type_vocab_size": 2,
        "use_cache": True, "vocab_size": 30522,
    },
}


def main():
    os.makedirs(OUT, exist_ok=True)
    write_tensors()
    write_sharded()
    for name, cfg in CONFIGS.items():
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
    for root, _, files in os.walk(OUT):  # the safetensors writer creates files 0600
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
