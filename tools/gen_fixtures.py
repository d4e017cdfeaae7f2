#!/usr/bin/env python3
"""Writes the decoder-model fixtures of tests/models/test_llama.c into tests/fixtures/models/.

Reference stack (pinned; CPU only):
    torch==2.15.0 transformers==4.57.6 safetensors==0.8.0 gguf==0.19.0 numpy==2.4.6
    .venv-bench/bin/pip install transformers==4.57.6 safetensors==0.8.0 gguf==0.19.0
    .venv-bench/bin/python tools/gen_fixtures.py

Files (each model directory is what save_pretrained writes, plus ref.safetensors):
  llama/          random-initialized tiny LlamaForCausalLM, f32, untied embeddings, GQA
                  (vocab 256, hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate 128,
                  rope_theta 1e4, rms eps 1e-5).
  llama_bf16/     the same weights saved in bf16. Its reference logits come from the
                  bf16-rounded weights run in f32 with every nn.Linear's input and
                  attention's q, k, v rounded to bf16 (what wick does: a bf16 weight
                  multiplies bf16-rounded inputs, accumulating in f32, and a bf16 model
                  attends in bf16), so the f32 tolerance applies to it as well.
  qwen2/          random-initialized tiny Qwen2ForCausalLM, f32 (vocab 256, hidden 32, 2 layers,
                  4 heads, 2 kv heads, intermediate 64): q/k/v bias, GQA, tied
                  embeddings, rope_theta 1e6, rms eps 1e-6.
  llama_q8_0.gguf the llama model as llama.cpp's convert_hf_to_gguf.py writes it (tensor
                  names, q/k rows permuted for ggml's interleaved rope, 1-d norms in F32),
                  2-d weights in Q8_0 (gguf-py's quantizer). Reference logits in
                  llama_q8_0.ref.safetensors come from the dequantized weights
                  (un-permuted back to HF order) run through transformers in f32.
  qwen2_q8_0.gguf the qwen2 model the same way (not permuted: llama.cpp runs Qwen2 with
                  NEOX rope; q/k/v biases in F32; tied, so no output.weight).
  arch_gpt2.gguf  general.architecture "gpt2": a bad-input case.
ref.safetensors holds "ids" (i32 [2, 7]) and "logits" (f32 [2, 7, V]).
Norm weights and biases are randomized too (HF initializes them to 1 and 0), so a
missing norm weight or bias shows up in the logits.
"""
import copy
import json
import os
import shutil

import numpy as np
import torch
from safetensors.torch import save_file
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models")
SEED = 0   # --seed N: other random models (live parity runs), same shapes
B, T = 2, 7


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    return model


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids.long()).logits.float().contiguous()


def save_model(model, name, ids, dtype=torch.float32, ref_model=None):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.to(dtype).save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    ref = ref_model if ref_model is not None else model
    save_file({"ids": ids.to(torch.int32).contiguous(), "logits": logits_of(ref, ids)},
              os.path.join(d, "ref.safetensors"))


def bf16_attention():
    """An attention implementation that rounds q, k and v to bf16, then runs sdpa in f32
    (what wick does for a bf16 model without a KV cache); returns its registered name."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def attend(module, q, k, v, *args, **kw):
        r = lambda t: t.to(torch.bfloat16).float()
        return sdpa(module, r(q), r(k), r(v), *args, **kw)
    AttentionInterface.register("wick_bf16_qkv", attend)
    return "wick_bf16_qkv"


def llama():
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
                      max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    m = randomize(LlamaForCausalLM(cfg), SEED + 1).float().eval()
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(SEED + 2))
    save_model(m, "llama", ids)
    # bf16 weights; reference = those weights run in f32 on bf16-rounded linear inputs
    # and bf16-rounded attention inputs q, k, v (after RoPE)
    sd = {k: v.to(torch.bfloat16).float() for k, v in m.state_dict().items()}
    mr = LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation=bf16_attention()).float().eval()
    mr.load_state_dict(sd)
    for mod in mr.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(lambda _, a: (a[0].to(torch.bfloat16).float(),))
    mb = LlamaForCausalLM(cfg).eval()
    mb.load_state_dict(m.state_dict())
    save_model(mb, "llama_bf16", ids, dtype=torch.bfloat16, ref_model=mr)
    gguf_model(m, cfg, ids, "llama", "llama_q8_0")


def qwen2():
    cfg = Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
                      max_position_embeddings=128, tie_word_embeddings=True, use_sliding_window=False)
    torch.manual_seed(0)
    m = randomize(Qwen2ForCausalLM(cfg), SEED + 3).float().eval()
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(SEED + 4))
    save_model(m, "qwen2", ids)
    gguf_model(m, cfg, ids, "qwen2", "qwen2_q8_0")


# convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> ggml interleaved rows
def permute(w, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_model(m, cfg, ids, arch, fname):
    """Writes m as llama.cpp's converter would (llama: q/k permuted; qwen2: not), with
    2-d weights in Q8_0, and the reference logits of the dequantized weights."""
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize, dequantize

    path = os.path.join(OUT, fname + ".gguf")
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny-" + arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    permuted = arch == "llama"   # convert_hf_to_gguf permutes only for LlamaModel
    back = {}   # HF name -> f32 weights as wick will see them (dequantized, un-permuted)
    for hf, t in m.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue   # tied: no output.weight in the file
        a = t.float().numpy()
        if hf in names:
            g = names[hf]
        else:
            parts = hf.split(".")   # model.layers.N.<mod>.<sub>.weight
            layer = parts[2]
            mod = ".".join(parts[3:-1])
            g = f"blk.{layer}.{per[mod]}.{parts[-1]}"
        perm = None
        if permuted and (g.endswith("attn_q.weight") or g.endswith("attn_q.bias")):
            perm = (nh, nh)
        elif permuted and (g.endswith("attn_k.weight") or g.endswith("attn_k.bias")):
            perm = (nh, nkv)
        if perm:
            a = permute(a, *perm)
        if a.ndim == 2:
            q = quantize(a, QT.Q8_0)
            w.add_tensor(g, q, raw_dtype=QT.Q8_0)
            d = dequantize(q, QT.Q8_0).astype(np.float32).reshape(a.shape)
        else:
            w.add_tensor(g, a.astype(np.float32))
            d = a
        if perm:
            d = unpermute(d, *perm)
        back[hf] = torch.from_numpy(np.ascontiguousarray(d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    mr = type(m)(cfg).float().eval()
    mr.load_state_dict(back, strict=False)
    if cfg.tie_word_embeddings:
        mr.tie_weights()
    save_file({"ids": ids.to(torch.int32).contiguous(), "logits": logits_of(mr, ids)},
              os.path.join(OUT, fname + ".ref.safetensors"))


def gguf_unknown_arch():
    """A GGUF whose general.architecture wick doesn't implement (bad-input test)."""
    import gguf
    w = gguf.GGUFWriter(os.path.join(OUT, "arch_gpt2.gguf"), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT, help="output folder (default tests/fixtures/models)")
    ap.add_argument("--seed", type=int, default=0, help="weights / ids seed offset (0 = the committed fixtures)")
    args = ap.parse_args()
    OUT, SEED = args.out, args.seed
    assert torch.__version__.startswith("2.15.0"), torch.__version__
    from importlib.metadata import version
    assert version("transformers") == "4.57.6", version("transformers")
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    llama()
    qwen2()
    gguf_unknown_arch()
    # sanity: the permutation round-trips
    x = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    assert (unpermute(permute(x, 4, 2), 4, 2) == x).all()
    print(json.dumps({f: os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs}, indent=1))
