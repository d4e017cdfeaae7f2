#!/usr/bin/env python3
"""Writes the BERT / sentence-embedding fixtures used by tests/models/test_bert.c.

  .venv-bench/bin/python tools/gen_bert_fixtures.py            # tiny model (always)
                                                              # + MiniLM reference when
                                                              #   models/all-minilm-l6-v2 exists

Pinned reference stack (CPU): torch 2.15.0, transformers 4.57.1,
sentence-transformers 5.1.2, tokenizers 0.22.2, safetensors 0.8.0.

tests/fixtures/models/bert_tiny/ : a random-initialized BertModel (vocab of
tests/fixtures/tok/wordpiece.json, hidden 32, 2 layers, 4 heads, intermediate 64,
64 positions) laid out as sentence-transformers saves a model (config.json,
model.safetensors, tokenizer.json, modules.json with Pooling + Normalize,
1_Pooling/config.json), plus sentences.json and reference.safetensors:
  ids i32[B, T] (padded with 0), lengths i32[B], last_hidden_state f32[B, T, D]
  (transformers BertModel with the attention mask), embeddings f32[B, D] (mean pooling
  over real tokens, then L2 normalization, as sentence-transformers computes them).
One sentence is longer than 64 tokens, so truncation is covered.

tests/fixtures/models/minilm_reference.safetensors + minilm_sentences.json:
  SentenceTransformer("models/all-minilm-l6-v2").encode(sentences) (f32[9, 384]); the
  last sentence is longer than max_seq_length (256), so truncation is covered.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models")
TINY = os.path.join(OUT, "bert_tiny")
MINILM = os.path.join(ROOT, "models", "all-minilm-l6-v2")

SENTENCES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "A",
    "Tokenization of unusual words: antidisestablishmentarianism, naïve café.",
    "Numbers 12345 and punctuation... (all of it) — fine?",
    " ".join(["the model reads a long sentence that goes on and on"] * 8),  # > 64 tokens
]

MINILM_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums. Ünïcödé and emoji 🙂 too.",
    "Sentence embeddings map text to vectors; similar meanings land close together, "
    "which makes semantic search, clustering and deduplication straightforward.",
    # longer than max_seq_length (256 tokens): covers truncation
    " ".join(f"item {i} of a very long list that keeps going;" for i in range(60)),
]


def check_versions():
    import sentence_transformers
    import tokenizers
    import safetensors
    want = {"torch": ("2.15.0", torch.__version__.split("+")[0]),
            "transformers": ("4.57.1", transformers.__version__),
            "sentence-transformers": ("5.1.2", sentence_transformers.__version__),
            "tokenizers": ("0.22.2", tokenizers.__version__),
            "safetensors": ("0.8.0", safetensors.__version__)}
    for name, (w, got) in want.items():
        if w != got:
            print(f"warning: {name} {got} (fixtures were made with {w})", file=sys.stderr)


def mean_pool_normalize(h, mask):
    m = mask.unsqueeze(-1).to(h.dtype)
    p = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    return torch.nn.functional.normalize(p, p=2, dim=1)


def gen_tiny():
    os.makedirs(os.path.join(TINY, "1_Pooling"), exist_ok=True)
    tok_src = os.path.join(ROOT, "tests", "fixtures", "tok", "wordpiece.json")
    shutil.copyfile(tok_src, os.path.join(TINY, "tokenizer.json"))
    tok = Tokenizer.from_file(tok_src)
    vocab = tok.get_vocab_size()
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64, type_vocab_size=2,
                                  hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # larger than the 0.02 init so that every part matters
        for n, p in model.named_parameters():
            if "LayerNorm" in n:
                p.copy_((1.0 if n.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(TINY, safe_serialization=True)
    with open(os.path.join(TINY, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
                  f, indent=2)
    with open(os.path.join(TINY, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False}, f, indent=2)
    with open(os.path.join(TINY, "sentences.json"), "w") as f:
        json.dump(SENTENCES, f, ensure_ascii=False, indent=1)

    tok.enable_truncation(max_length=64)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    emb = mean_pool_normalize(h, mask)
    save_file({"ids": ids.to(torch.int32).contiguous(), "lengths": mask.sum(1).to(torch.int32),
               "last_hidden_state": h.float().contiguous(), "embeddings": emb.float().contiguous()},
              os.path.join(TINY, "reference.safetensors"))
    for n in ("generation_config.json",):
        p = os.path.join(TINY, n)
        if os.path.exists(p):
            os.remove(p)
    print(f"bert_tiny: {len(SENTENCES)} sentences, T = {ids.shape[1]}, lengths {mask.sum(1).tolist()}")


def gen_minilm():
    if not os.path.isdir(MINILM):
        print("minilm: models/all-minilm-l6-v2 absent (run tools/fetch-models): skipped")
        return
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(MINILM, device="cpu")
    emb = st.encode(MINILM_SENTENCES, convert_to_tensor=True, batch_size=32).float().cpu()
    save_file({"embeddings": emb.contiguous()}, os.path.join(OUT, "minilm_reference.safetensors"))
    with open(os.path.join(OUT, "minilm_sentences.json"), "w") as f:
        json.dump(MINILM_SENTENCES, f, ensure_ascii=False, indent=1)
    print(f"minilm: {tuple(emb.shape)}")


if __name__ == "__main__":
    check_versions()
    torch.set_num_threads(1)
    gen_tiny()
    gen_minilm()
