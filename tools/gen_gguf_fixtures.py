#!/usr/bin/env python3
"""Writes the GGUF fixtures of tests/io/test_gguf.c into tests/fixtures/gguf/.

Reference stack (pinned): gguf==0.19.0 (llama.cpp's gguf-py), numpy==2.4.6.
    python3 -m venv .venv-gguf && .venv-gguf/bin/pip install gguf==0.19.0 numpy==2.4.6
    .venv-gguf/bin/python tools/gen_gguf_fixtures.py

Files:
  all_types.gguf      v3: metadata of every value type (string arrays, nested arrays,
                      empty string) and tensors F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
                      Q5_K, Q6_K, Q5_0 (a type wick stores but does not dequantize), a 3-d
                      and an empty tensor.
  v2_align64.gguf     a version-2 file with general.alignment = 64 (gguf-py writes only v3;
                      the v2 layout is the same for little-endian files, so the version
                      field is patched).
  expected.txt/.bin   for each tensor: gguf-py's dequantized f32 values ("deq") and, for
                      the types gguf-py quantizes, the f32 source it quantized ("src").
                      Lines: FILE TENSOR KIND COUNT OFFSET (offset in floats into the .bin).

Quantized data comes from gguf-py's own quantizers (gguf.quants.quantize) so the bytes
do not depend on wick; gguf-py has no K-quant quantizer, so K-quant blocks are random
bytes with finite f16 scales, which exercise every bit of the packing.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from gguf.quants import quantize, dequantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gguf")
rng = np.random.default_rng(20240607)
expected = []   # (file, tensor, kind, values)


def source_rows(rows, cols):
    """Random rows plus blocks that hit the quantizers' special cases."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[1, :32] = 0.0                                  # all-zero block: d = 0
    x[1, 32:64] = 0.75                               # constant block
    x[2] *= 1000.0                                   # large magnitudes
    x[3] *= 1e-3                                     # small magnitudes
    x[4, :32] = -np.abs(x[4, :32]); x[4, 5] = -9.0   # negative extreme
    x[5, :32] = np.arange(32, dtype=np.float32) - 16  # integers
    return x


def k_blocks(qtype, nblocks):
    """Random K-quant super-blocks whose f16 fields are finite, moderate scales."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    b = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    def f16(n):
        return (rng.uniform(0.001, 0.05, n) * rng.choice([-1, 1], n)).astype(np.float16).view(np.uint8).reshape(n, 2)
    if qtype == T.Q6_K:
        b[:, 208:210] = f16(nblocks)                 # d at the end
    else:
        b[:, 0:2] = f16(nblocks)                     # d
        b[:, 2:4] = np.abs(f16(nblocks).view(np.float16)).view(np.uint8)  # dmin
    return b


def add_quant(w, fname, name, qtype, src):
    q = quantize(src, qtype)
    w.add_tensor(name, q, raw_dtype=qtype)
    expected.append((fname, name, "src", src))
    expected.append((fname, name, "deq", dequantize(q, qtype).astype(np.float32)))


def write_all_types():
    fname = "all_types.gguf"
    w = gguf.GGUFWriter(os.path.join(OUT, fname), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**64 - 5)
    w.add_int64("test.i64", -(2**62) - 7)
    w.add_float32("test.f32", 0.15625)
    w.add_float64("test.f64", 2.718281828459045)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "h\u00e9llo w\u00f6rld \u2713")
    w.add_key_value("test.empty_string", "", V.STRING)
    w.add_key_value("test.arr_u8", [0, 1, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr_i8", [-128, 0, 127], V.ARRAY, sub_type=V.INT8)
    w.add_key_value("test.arr_u16", [0, 65535], V.ARRAY, sub_type=V.UINT16)
    w.add_key_value("test.arr_i16", [-32768, 32767], V.ARRAY, sub_type=V.INT16)
    w.add_key_value("test.arr_u32", [0, 4294967295], V.ARRAY, sub_type=V.UINT32)
    w.add_key_value("test.arr_i32", [-2147483648, 2147483647, 7], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("test.arr_u64", [0, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("test.arr_i64", [-(2**63), 2**63 - 1], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("test.arr_f32", [1.5, -0.25, 1e30], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("test.arr_f64", [1e-300, -2.5], V.ARRAY, sub_type=V.FLOAT64)
    w.add_key_value("test.arr_bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
    w.add_key_value("test.arr_str", ["a", "", "\u0120the", "\u65e5\u672c", "\U0001F642", "<|im_start|>"],
                    V.ARRAY, sub_type=V.STRING)
    w.add_key_value("test.nested_i32", [[1, 2, 3], [4], [5, 6]], V.ARRAY, sub_type=V.ARRAY)
    w.add_key_value("test.nested_str", [["x", "yz"], ["\u00e9"]], V.ARRAY, sub_type=V.ARRAY)
    w.add_key_value("test.nested2_f32", [[[1.5]], [[2.5, 3.5], [4.5]]], V.ARRAY, sub_type=V.ARRAY)
    w.add_key_value("tokenizer.ggml.scores", [0.0, -1.5, -2.25, -1000.0], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("tokenizer.ggml.token_type", [1, 3, 6, 1], V.ARRAY, sub_type=V.INT32)

    vec = (np.arange(7, dtype=np.float32) - 3) * 0.5
    w.add_tensor("f32.vec", vec)
    expected.append((fname, "f32.vec", "deq", vec))
    mat = rng.standard_normal((3, 5)).astype(np.float32)
    w.add_tensor("f32.mat", mat)
    expected.append((fname, "f32.mat", "deq", mat))
    h = (rng.standard_normal((4, 6)) * 100).astype(np.float16)
    h[0, 0] = np.float16(6e-8)                      # subnormal
    w.add_tensor("f16.mat", h)
    expected.append((fname, "f16.mat", "deq", h.astype(np.float32)))
    add_quant(w, fname, "bf16.mat", T.BF16, rng.standard_normal((2, 8)).astype(np.float32))
    w.add_tensor("empty", np.zeros((0, 4), dtype=np.float32))
    expected.append((fname, "empty", "deq", np.zeros((0, 4), dtype=np.float32)))
    src = source_rows(8, 64)
    for name, qt in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)):
        add_quant(w, fname, name, qt, src)
    add_quant(w, fname, "q8_0.3d", T.Q8_0, rng.standard_normal((2, 3, 32)).astype(np.float32))
    add_quant(w, fname, "q5_0", T.Q5_0, rng.standard_normal((1, 32)).astype(np.float32))
    for name, qt, shape in (("q4_k", T.Q4_K, (2, 512)), ("q5_k", T.Q5_K, (2, 256)), ("q6_k", T.Q6_K, (3, 256))):
        nblk = shape[0] * shape[1] // 256
        b = k_blocks(qt, nblk).reshape(shape[0], -1)
        w.add_tensor(name, b, raw_dtype=qt)
        expected.append((fname, name, "deq", dequantize(b, qt).astype(np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_v2():
    fname = "v2_align64.gguf"
    path = os.path.join(OUT, fname)
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_custom_alignment(64)
    w.add_uint32("qwen2.block_count", 1)
    w.add_string("general.name", "v2 fixture")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    w.add_tensor("a", a)
    expected.append((fname, "a", "deq", a))
    add_quant(w, fname, "b", T.Q8_0, rng.standard_normal((2, 32)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "r+b") as f:
        f.seek(4)
        f.write((2).to_bytes(4, "little"))


def main():
    os.makedirs(OUT, exist_ok=True)
    write_all_types()
    write_v2()
    # Sanity: gguf-py's reader accepts what it wrote.
    for fn in ("all_types.gguf",):
        r = gguf.GGUFReader(os.path.join(OUT, fn))
        assert len(r.tensors) == 13, len(r.tensors)
    off = 0
    with open(os.path.join(OUT, "expected.bin"), "wb") as fb, open(os.path.join(OUT, "expected.txt"), "w") as ft:
        for fname, name, kind, vals in expected:
            v = np.ascontiguousarray(vals, dtype="<f4").ravel()
            ft.write(f"{fname} {name} {kind} {v.size} {off}\n")
            fb.write(v.tobytes())
            off += v.size
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(expected)} expected arrays, {total} bytes in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
