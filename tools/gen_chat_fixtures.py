#!/usr/bin/env python3
"""Chat-template fixtures for tests/tok/test_chat.c, rendered by transformers itself.

  .venv-bench/bin/python tools/gen_chat_fixtures.py     # transformers==4.57.6, gguf==0.19.0

Writes under tests/fixtures/chat/:
  cases.json   templates (SmolLM2's, Qwen2's, the same with Jinja "\\n" escapes, a plain
               ChatML without a default system prompt) and, for each, conversations with
               the text of tokenizer.apply_chat_template(messages, tokenize=False,
               add_generation_prompt=...); plus templates wick must refuse.
  hf/          the small SmolLM2-style tokenizer of tests/fixtures/tok/smollm2.json saved by
               transformers' save_pretrained with SmolLM2's template (chat_template.jinja);
  hf_legacy/   the same with the template inside tokenizer_config.json (as SmolLM2's files).
  vocab.gguf   the same vocabulary as GGUF tokenizer.ggml.* keys with tokenizer.chat_template.
  model/       a random-initialized tiny LlamaForCausalLM over that vocabulary (eos <|im_end|>)
               with the hf/ tokenizer files: a chat model for tests/cli (wick chat).
  no_template/ links to model/'s weights and tokenizer.json only: a model without a template.
With the real SmolLM2 GGUF under models/, checks that its template equals SMOLLM2 below.
"""
import glob
import json
import os
import shutil
import sys

import importlib.metadata

from transformers import PreTrainedTokenizerFast

PINNED = "4.57.6"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "chat")
TOK_JSON = os.path.join(ROOT, "tests", "fixtures", "tok", "smollm2.json")

# SmolLM2-135M-Instruct's tokenizer.chat_template (identical in its GGUF and tokenizer_config.json).
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
           "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
           "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
           "{% endif %}")
# Qwen2-*-Instruct's chat_template.
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEMPLATES = {
    "smollm2": SMOLLM2,
    "qwen2": QWEN2,
    # the newlines written as Jinja escapes (JSON "\\n"), with whitespace control and
    # attribute access, as newer ChatML templates are written
    "qwen2_escaped": ("{%- for message in messages %}\n    {%- if loop.first and messages[0].role != 'system' %}\n"
                      "        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
                      "    {%- endif %}\n    {{- '<|im_start|>' + message.role + '\\n' + message.content + "
                      "'<|im_end|>\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
                      "    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"),
    # ChatML as transformers' docs write it: no default system prompt
    "chatml_plain": ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                     "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
}
# Templates that render differently from ChatML: wick must name them as unrecognized.
UNSUPPORTED = {
    "zephyr": ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
               "eos_token + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
    "chatml_trimmed": ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                       "message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}"
                       "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "chatml_think": ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                     "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"),
}


def variants():
    """Rewrites of SmolLM2's template: some render the same (wick must accept them), some
    not (wick must refuse them). Which is which is decided by transformers below."""
    s = SMOLLM2
    return [
        "  " + s,                                  # lstrip_blocks drops it
        "\n  " + s,                                # a printed newline
        s.replace("{% endif %}{{'", "{% endif %}\r\n{{'"),   # Jinja reads \r\n as \n: trimmed
        s.replace("}}{% endfor %}", "}}\r\n{% endfor %}"),   # printed (after an expression)
        "{# a comment #}\n" + s,                   # trim_blocks drops the newline
        s + "\n",                                  # trim_blocks again
        s + "\n\n",                                # one newline printed
        s.replace("{% ", "{%- ").replace(" %}", " -%}").replace("}}{%", "}}\n    {%"),
        s.replace("message['role']", 'message.role').replace("message['content']", 'message["content"]'),
        s.replace("'<|im_start|>system\nYou", "'<|im_start|>system\n' + 'You"),
        s.replace("'<|im_end|>' + '\n'", "'<|im_end|>' + ' \n'"),
        s.replace("{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>assistant' }}"),
        s.replace("loop.first and ", ""),
    ]


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Good morning"},
     {"role": "assistant", "content": "Bonjour"}],
    [{"role": "user", "content": "Multi\nline\n\n  text with  spaces "},
     {"role": "assistant", "content": ""}, {"role": "user", "content": "日本語 😀 naïve"}],
    [{"role": "user", "content": "first"}, {"role": "system", "content": "a late system turn"},
     {"role": "assistant", "content": "ok"}],
]


def main():
    version = importlib.metadata.version("transformers")   # its __version__ string can lag
    if version != PINNED:
        sys.exit(f"transformers {version} found; the fixtures are pinned to {PINNED}")
    tok = PreTrainedTokenizerFast(tokenizer_file=TOK_JSON, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", unk_token=None)
    cases = []
    for name, tpl in TEMPLATES.items():
        for msgs in CONVERSATIONS:
            for gen in (False, True):
                text = tok.apply_chat_template(msgs, chat_template=tpl, tokenize=False,
                                               add_generation_prompt=gen)
                cases.append({"template": name, "messages": msgs, "add_generation_prompt": gen, "text": text})
    def render_all(tpl):
        return [tok.apply_chat_template(m, chat_template=tpl, tokenize=False, add_generation_prompt=g)
                for m in CONVERSATIONS for g in (False, True)]
    canonical = render_all(SMOLLM2)
    rewrites = [{"template": v, "same": render_all(v) == canonical, "messages": CONVERSATIONS[2],
                 "text": tok.apply_chat_template(CONVERSATIONS[2], chat_template=v, tokenize=False)}
                for v in variants()]
    # the default system prompt each template injects, as transformers renders it
    systems = {}
    for name, tpl in TEMPLATES.items():
        text = tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template=tpl, tokenize=False)
        head = "<|im_start|>system\n"
        systems[name] = text[len(head):text.index("<|im_end|>")] if text.startswith(head) else None

    real = glob.glob(os.path.join(ROOT, "models", "**", "SmolLM2*.gguf"), recursive=True)
    if real:
        from gguf import GGUFReader
        f = GGUFReader(real[0]).fields["tokenizer.chat_template"]
        got = bytes(f.parts[f.data[0]]).decode()
        if got != SMOLLM2:
            sys.exit(f"{real[0]}: its chat template differs from SMOLLM2 in this script")
        print(f"checked SMOLLM2 against {os.path.relpath(real[0], ROOT)}")

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as fp:
        json.dump({"transformers": version, "templates": TEMPLATES,
                   "default_system": systems, "unsupported": UNSUPPORTED, "variants": rewrites,
                   "cases": cases},
                  fp, ensure_ascii=False, indent=1)

    tok.chat_template = SMOLLM2
    for sub, jinja in (("hf", True), ("hf_legacy", False)):
        shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)
        tok.save_pretrained(os.path.join(OUT, sub), save_jinja_files=jinja)
    write_vocab_gguf(os.path.join(OUT, "vocab.gguf"))
    write_tiny_model(tok, os.path.join(OUT, "model"))
    print(f"{len(cases)} cases, {len(UNSUPPORTED)} refused templates -> {os.path.relpath(OUT, ROOT)}")


def write_tiny_model(tok, out):
    """A large initializer_range makes its greedy choices decisive (top-2 logit margins of
    tenths, not thousandths) and its output varied, so that tests comparing two ways of
    generating can tell them apart."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
                      eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), initializer_range=0.6)
    shutil.rmtree(out, ignore_errors=True)
    LlamaForCausalLM(cfg).eval().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    bare = os.path.join(os.path.dirname(out), "no_template")
    shutil.rmtree(bare, ignore_errors=True)
    os.makedirs(bare)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        os.symlink(os.path.join("..", os.path.basename(out), f), os.path.join(bare, f))


def write_vocab_gguf(out):
    """tests/fixtures/tok/smollm2.json's vocabulary as GGUF keys, with SmolLM2's template."""
    from gguf import GGUFWriter, TokenType
    d = json.load(open(TOK_JSON, encoding="utf-8"))
    vocab = d["model"]["vocab"]
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    types = [int(TokenType.NORMAL)] * len(tokens)
    for a in d["added_tokens"]:
        types[a["id"]] = int(TokenType.CONTROL if a["special"] else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in d["model"]["merges"]]
    w = GGUFWriter(out, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(SMOLLM2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
