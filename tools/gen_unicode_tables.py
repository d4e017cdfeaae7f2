#!/usr/bin/env python3
"""Generates src/tok/unicode_tables.c: the Unicode data the tokenizers need.

  .venv-tok/bin/pip install unicodedata2==16.0.0 tokenizers==0.23.3
  .venv-tok/bin/python tools/gen_unicode_tables.py > src/tok/unicode_tables.c

Character data comes from unicodedata2 16.0 when installed (Unicode 16.0: what the
regex engine of HF tokenizers 0.23 and Rust's char methods use), else from Python's
unicodedata. HF's BertNormalizer / BertPreTokenizer use an older category crate
(about Unicode 8, and "control" without Cn): when `tokenizers` is installed, the three
flags they depend on (BERT punctuation, control, nonspacing mark) are read off HF
itself, character by character, so that WordPiece matches it exactly.

Tables (all sorted, searched by binary search):
  wk_uc_props   category flags as ranges: entry = start << 8 | flags, each range runs
                to the next entry's start
  wk_uc_ccc     canonical combining class as ranges, same packing
  wk_uc_lower   simple lowercase mappings as runs {start, count, delta, stride}
  wk_uc_decomp  canonical decompositions, one level: {cp | excluded << 31, a, b}
                (b = 0 for singletons); Hangul syllables are algorithmic
  wk_uc_compose primary composites sorted by (a, b): {a, b, composite}
"""
import sys
try:
    import unicodedata2 as ud
    if not ud.unidata_version.startswith("16."):
        raise ImportError
except ImportError:
    import unicodedata as ud

MAXCP = 0x110000
# Flag bits; keep in sync with src/tok/unicode.h
L, N, WS, P, OTHER, MN, CJK = 1, 2, 4, 8, 16, 32, 64

def is_cjk(c):
    # HF BertNormalizer's is_chinese_char ranges
    return any(a <= c <= b for a, b in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
               (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF),
               (0x2F800, 0x2FA1F)))

def hf_bert_sets():
    """(punctuation, control, nonspacing) as HF's BERT components see them, or None."""
    try:
        from tokenizers import normalizers, pre_tokenizers
    except ImportError:
        return None
    cps = [c for c in range(MAXCP) if not 0xD800 <= c <= 0xDFFF and c != ord('|')]
    punct, control, mn = set(), set(), set()
    step = 65536
    for k in range(0, len(cps), step):
        chunk = cps[k:k + step]
        text = " ".join("a" + chr(c) + "a" for c in chunk)
        for piece, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text):
            if len(piece) == 1 and piece != "a":
                punct.add(ord(piece))
        joined = "|" + "|".join(chr(c) for c in chunk)
        clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                           strip_accents=False, lowercase=False)
        parts = clean.normalize_str(joined).split("|")[1:]
        assert len(parts) == len(chunk)
        control.update(c for c, p in zip(chunk, parts) if p == "")
        strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                           strip_accents=True, lowercase=False)
        parts = strip.normalize_str(joined).split("|")[1:]
        assert len(parts) == len(chunk)
        mn.update(c for c, p in zip(chunk, parts)
                  if p == "" and ud.decomposition(chr(c)) in ("", None))
    control.discard(0)        # NUL and U+FFFD are removed by clean_text in their own right
    control.discard(0xFFFD)
    return punct, control, mn

HF_BERT = hf_bert_sets()

def hf_normalization_known():
    """Marks and decompositions that HF's (older) normalization crate knows, or None.
    Canonical data never change once assigned, so the tables are Unicode 16's data
    restricted to what HF's NFD acts on."""
    try:
        from tokenizers import normalizers
    except ImportError:
        return None
    nfd = normalizers.NFD()
    marks = [c for c in range(0x300, MAXCP) if not 0xD800 <= c <= 0xDFFF and ud.combining(chr(c)) > 1]
    # a mark HF knows moves after U+0334 (class 1); an unknown one stays a starter
    text = "|".join("a" + chr(c) + "\u0334" for c in marks)
    parts = nfd.normalize_str(text).split("|")
    known_marks = {c for c, p in zip(marks, parts) if p == "a\u0334" + chr(c)}
    decomposable = [c for c in range(MAXCP) if not 0xD800 <= c <= 0xDFFF and
                    ud.decomposition(chr(c)) and not ud.decomposition(chr(c)).startswith("<")]
    parts = nfd.normalize_str("|".join(chr(c) for c in decomposable)).split("|")
    known_decomp = {c for c, p in zip(decomposable, parts) if p != chr(c)}
    return known_marks, known_decomp

HF_NORM = hf_normalization_known()

def ccc(c):
    k = ud.combining(chr(c))
    if HF_NORM and k > 1 and c not in HF_NORM[0]:
        return 0
    return k

def flags(c):
    cat = ud.category(chr(c))
    f = 0
    if cat[0] == 'L': f |= L
    if cat[0] == 'N': f |= N
    # Oniguruma's \s and Rust's char::is_whitespace (White_Space): the same set
    if 0x09 <= c <= 0x0D or c == 0x85 or cat in ('Zs', 'Zl', 'Zp'): f |= WS
    if HF_BERT:
        if c in HF_BERT[0]: f |= P
        if c in HF_BERT[1]: f |= OTHER
        if c in HF_BERT[2]: f |= MN
    else:
        if cat[0] == 'P': f |= P
        if cat in ('Cc', 'Cf', 'Co', 'Cs'): f |= OTHER
        if cat == 'Mn': f |= MN
    if is_cjk(c): f |= CJK
    return f

def ranges(fn):
    out, prev = [], None
    for c in range(MAXCP):
        v = fn(c)
        if v != prev:
            out.append((c, v))
            prev = v
    return out

def emit_packed(name, rs, w):
    w(f"const uint32_t {name}[{len(rs)}] = {{\n")
    line = "  "
    for c, v in rs:
        item = f"0x{(c << 8) | v:x},"
        if len(line) + len(item) > 96:
            w(line.rstrip() + "\n")
            line = "  "
        line += item
    w(line.rstrip() + "\n};\n")
    w(f"const size_t {name}_n = {len(rs)};\n\n")

def main():
    out = []
    w = out.append
    src = "HF tokenizers' BERT classes" if HF_BERT else "unicodedata for the BERT classes"
    w(f"// Generated by tools/gen_unicode_tables.py: Unicode {ud.unidata_version} ({ud.__name__}), "
      f"{src}. Do not edit.\n")
    w('#include "tok/unicode.h"\n\n')
    emit_packed("wk_uc_props", ranges(flags), w)
    emit_packed("wk_uc_ccc", ranges(ccc), w)

    # simple (one-to-one) lowercase mappings, as Rust's char::to_lowercase for all but
    # U+0130, which maps to two characters and is special-cased in unicode.c
    # str.lower follows the running Python's Unicode; the case pairs added by Unicode 15
    # and 16 (Rust's to_lowercase has them) are listed here.
    new16 = {0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7DA: 0xA7DB, 0xA7DC: 0x019B}
    new16.update({c: c + 0x20 for c in range(0x10D50, 0x10D66)})
    pairs = []
    for c in range(MAXCP):
        lo = chr(c).lower()
        if ud.unidata_version.startswith("16.") and c in new16:
            lo = chr(new16[c])
        if len(lo) == 1 and ord(lo) != c:
            pairs.append((c, ord(lo) - c))
    runs = []  # start, count, delta, stride
    for c, d in pairs:
        if runs:
            s, n, dd, st = runs[-1]
            if dd == d and n == 1 and c - s in (1, 2):
                runs[-1] = (s, 2, d, c - s); continue
            if dd == d and n > 1 and c == s + n * st:
                runs[-1] = (s, n + 1, d, st); continue
        runs.append((c, 1, d, 1))
    assert chr(0x130).lower() == 'i\u0307'
    w(f"const wk_uc_lower_run wk_uc_lower[{len(runs)}] = {{\n")
    items = [f"{{0x{s:x},{n},{d},{st}}}," for s, n, d, st in runs]
    for k in range(0, len(items), 5):
        w("  " + "".join(items[k:k + 5]) + "\n")
    w(f"}};\nconst size_t wk_uc_lower_n = {len(runs)};\n\n")

    dec, comp = [], []
    for c in range(MAXCP):
        if 0xAC00 <= c <= 0xD7A3: continue
        d = ud.decomposition(chr(c))
        if not d or d.startswith('<'): continue
        if HF_NORM and c not in HF_NORM[1]: continue
        parts = [int(x, 16) for x in d.split()]
        assert 1 <= len(parts) <= 2
        a, b = parts[0], parts[1] if len(parts) == 2 else 0
        # a composite is excluded when NFC does not recompose it
        excluded = ud.normalize('NFC', chr(c)) != chr(c)
        dec.append((c, a, b, excluded))
        if b and not excluded:
            comp.append((a, b, c))
            assert b >= 0x300, "unicode.c assumes text below U+0300 is already NFC"
    w(f"const wk_uc_decomp_entry wk_uc_decomp[{len(dec)}] = {{\n")
    items = [f"{{0x{c | (ex << 31):x},0x{a:x},0x{b:x}}}," for c, a, b, ex in dec]
    for k in range(0, len(items), 4):
        w("  " + "".join(items[k:k + 4]) + "\n")
    w(f"}};\nconst size_t wk_uc_decomp_n = {len(dec)};\n\n")
    comp.sort()
    w(f"const wk_uc_compose_entry wk_uc_compose[{len(comp)}] = {{\n")
    items = [f"{{0x{a:x},0x{b:x},0x{c:x}}}," for a, b, c in comp]
    for k in range(0, len(items), 4):
        w("  " + "".join(items[k:k + 4]) + "\n")
    w(f"}};\nconst size_t wk_uc_compose_n = {len(comp)};\n")
    sys.stdout.write("".join(out))

if __name__ == "__main__":
    main()
