"""Shared case table, timing and reporting for the peer benchmarks.

Each peer script (torch_cpu.py, mlx_cpu.py, ggml_cpu.py) supplies a
`build(case, mode, inputs) -> fn` that returns a zero-argument callable running one
call of the case to completion (for lazy peers: including the evaluation).
`main()` times every case in every mode and prints a table, JSON lines
(`--json`, the `wick bench --json` format) or a side-by-side table against
`wick bench --json` (`--wick PATH`).

Chained cases (`...x10`) time one whole chain: 10 calls, each feeding the
next, then a single evaluation.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

# Peers get the same 2 threads as wick; must be set before numpy/BLAS load.
THREADS = 2
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, str(THREADS))

try:
    import numpy as np
except ImportError:
    sys.exit("numpy missing: run with .venv-bench/bin/python (tools/bench-venv creates it)")

CORETYPE_VAR = "OPENBLAS_CORETYPE"


class NotSupported(Exception):
    """Raised by a peer's build() for a case/mode it cannot run."""


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # lora_fwd | lora_train | softmax | rmsnorm | chain8 | matmul | copy
    shape: tuple = ()  # input shape (x for lora, the tensor otherwise)
    n: int = 0  # lora in=out width, matmul size
    rank: int = 0
    alpha: float = 0.0
    chain: int = 1  # calls chained before one evaluation

    @property
    def scale(self):
        return self.alpha / self.rank

    def flops(self):
        if self.kind == "matmul":
            return 2 * self.n**3
        return None

    def bytes_moved(self):
        if self.kind == "copy":  # read + write, STREAM "Copy" convention
            return 2 * 4 * int(np.prod(self.shape))
        return None


M16 = 16 * 1024 * 1024
CASES = [
    Case("lora_fwd/512", "lora_fwd", (1, 1, 512), 512, 8, 16.0),
    Case("lora_fwd/1024", "lora_fwd", (1, 1, 1024), 1024, 8, 16.0),
    Case("lora_fwd/2048", "lora_fwd", (1, 1, 2048), 2048, 8, 16.0),
    Case("lora_fwd/8x128x1024r16", "lora_fwd", (8, 128, 1024), 1024, 16, 32.0),
    Case("lora_train_step/8x128x1024r16", "lora_train", (8, 128, 1024), 1024, 16, 32.0),
    Case("softmax/4x16x1024", "softmax", (4, 16, 1024)),
    Case("softmax/8x16x512x512", "softmax", (8, 16, 512, 512)),
    Case("rmsnorm/4x16x1024", "rmsnorm", (4, 16, 1024)),
    Case("rmsnorm/8x512x2048", "rmsnorm", (8, 512, 2048)),
    Case("chain8/1024", "chain8", (1024,)),
    Case("chain8/16M", "chain8", (M16,)),
    Case("matmul/1024", "matmul", (1024, 1024), 1024),
    Case("matmul/2048", "matmul", (2048, 2048), 2048),
    Case("copy/16M", "copy", (M16,)),
    Case("lora_fwd/512x10", "lora_fwd", (1, 1, 512), 512, 8, 16.0, chain=10),
    # the same ten calls as wick's lora_ops case, which writes LoRA as primitive ops
    Case("lora_ops/512x10", "lora_fwd", (1, 512), 512, 8, 16.0, chain=10),
    Case("softmax/4x16x1024x10", "softmax", (4, 16, 1024), chain=10),
    Case("rmsnorm/4x16x1024x10", "rmsnorm", (4, 16, 1024), chain=10),
]

LR = 1e-4  # AdamW for lora_train_step; other AdamW settings are the defaults
EPS = 1e-5  # rmsnorm


def make_inputs(case, seed=0):
    """Deterministic f32 numpy inputs for a case (same for every peer)."""
    rng = np.random.default_rng(seed)

    def randn(*shape, std=1.0):
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

    if case.kind in ("lora_fwd", "lora_train"):
        n, r = case.n, case.rank
        d = dict(x=randn(*case.shape), W=randn(n, n, std=n**-0.5),
                 A=randn(n, r, std=n**-0.5), B=randn(r, n, std=0.1 * r**-0.5))
        if case.kind == "lora_train":
            d["target"] = randn(*case.shape)
        return d
    if case.kind == "rmsnorm":
        return dict(x=randn(*case.shape), w=1.0 + randn(case.shape[-1], std=0.1))
    if case.kind in ("softmax", "copy"):
        return dict(x=randn(*case.shape))
    if case.kind == "chain8":
        return dict(x=randn(*case.shape), y=randn(*case.shape))
    if case.kind == "matmul":
        return dict(a=randn(case.n, case.n), b=randn(case.n, case.n))
    raise ValueError(case.kind)


def time_fn(fn, min_time=0.5, min_iters=20, max_time=5.0):
    """Median/p10/p90 in us: runs until >= min_time s and >= min_iters calls,
    or past max_time s with at least 3 calls (for very slow cases)."""
    t0 = time.perf_counter()
    fn()  # warm-up; compiles for compiled modes
    if time.perf_counter() - t0 < 1.0:
        fn()
    times = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) / 1e3)
        el = time.perf_counter() - start
        if (el >= min_time and len(times) >= min_iters) or (el >= max_time and len(times) >= 3):
            break
    times.sort()
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[0], q[-1], len(times)


def coretype():
    return os.environ.get(CORETYPE_VAR) or "unset"


def _cpu_seconds():
    """(busy CPU s of the whole machine, CPU s of this process) so far."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), ru.ru_utime + ru.ru_stime


def measure(name, mode, fn, flops=None, nbytes=None, **timing):
    t0, (busy0, self0) = time.perf_counter(), _cpu_seconds()
    us, p10, p90, iters = time_fn(fn, **timing)
    busy1, self1 = _cpu_seconds()
    # cores used by other processes while this case ran (a shared machine skews figures)
    other = max(0.0, (busy1 - busy0) - (self1 - self0)) / (time.perf_counter() - t0)
    row = dict(name=name, device="cpu", mode=mode, us=round(us, 3), p10=round(p10, 3),
               p90=round(p90, 3), iters=iters)
    if flops:
        row["gflops"] = round(flops / (us * 1e3), 2)
    if nbytes:
        row["gbs"] = round(nbytes / (us * 1e3), 2)
    row["openblas_coretype"] = coretype()
    row["other_cpu"] = round(other, 2)
    return row


@dataclass
class Peer:
    """What a peer script hands to main()."""
    title: str  # e.g. "torch 2.15.0"
    modes: list  # [(mode id, column title)], e.g. [("torch-eager", "torch eager")]
    build: object  # build(case, mode, inputs) -> fn; raises NotSupported
    extras: object = None  # extras(case, inputs) -> [(name, mode, fn, flops, nbytes)]
    notes: list = field(default_factory=list)
    threads: str = f"{THREADS} threads"


def _parse_args(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--wick", metavar="PATH", help="wick binary: run `PATH bench --json` and compare")
    p.add_argument("--json", action="store_true", help="print peer figures as JSON lines")
    p.add_argument("--filter", default="", metavar="S", help="only cases whose name contains S")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per case (default 0.5)")
    p.add_argument("--retries", type=int, default=2,
                   help="re-measure a case up to N times while other processes use the CPU")
    p.add_argument("--matmul-coretype", choices=("preset", "unset"), default="preset",
                   help=f"'unset': run matmul/* peers with {CORETYPE_VAR} removed (child process)")
    p.add_argument("--_only-kind", dest="only_kind", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _quiet(args, name, mode, fn, flops, nbytes):
    """measure(), repeated up to --retries times while other processes load the CPU."""
    best = None
    for _ in range(1 + args.retries):
        row = measure(name, mode, fn, flops, nbytes, min_time=args.min_time)
        if best is None or row["other_cpu"] < best["other_cpu"]:
            best = row
        if best["other_cpu"] < NOISY:
            break
    return best


def _run_peer(peer, cases, args):
    rows = []
    for case in cases:
        ins = make_inputs(case)
        for mode, _ in peer.modes:
            try:
                fn = peer.build(case, mode, ins)
                row = _quiet(args, case.name, mode, fn, case.flops(), case.bytes_moved())
            except NotSupported as e:
                row = dict(name=case.name, device="cpu", mode=mode, us=None, error=str(e))
            except Exception as e:  # a peer failure is a result, not a crash
                lines = str(e).strip().splitlines()
                msg = f"{type(e).__name__}: {lines[0][:160] if lines else ''}"
                row = dict(name=case.name, device="cpu", mode=mode, us=None, error=msg)
            rows.append(row)
            _log(f"  {case.name:32s} {mode:16s} " + _fmt_row(row))
        for name, mode, fn, flops, nbytes in (peer.extras(case, ins) if peer.extras else []):
            rows.append(_quiet(args, name, mode, fn, flops, nbytes))
            _log(f"  {name:32s} {mode:16s} " + _fmt_row(rows[-1]))
    return rows


def _fmt_row(row):
    if row.get("us") is None:
        return f"n/a ({row.get('error', '')})"
    s = f"{row['us']:.1f} us (p10 {row['p10']:.1f}, p90 {row['p90']:.1f}, n={row['iters']})"
    if "gflops" in row:
        s += f" {row['gflops']} GFLOP/s"
    if "gbs" in row:
        s += f" {row['gbs']} GB/s"
    if row.get("other_cpu", 0) >= NOISY:
        s += f"  [other processes used {row['other_cpu']} cores]"
    return s


def _child_rows(args, script):
    """Re-run matmul cases in a child process without OPENBLAS_CORETYPE."""
    env = {k: v for k, v in os.environ.items() if k != CORETYPE_VAR}
    cmd = [sys.executable, script, "--_only-kind", "matmul", "--json", "--filter", args.filter,
           "--min-time", str(args.min_time), "--retries", str(args.retries)]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def run_wick(path):
    out = subprocess.run([path, "bench", "--json"], stdout=subprocess.PIPE, check=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[(r["name"], r.get("mode"))] = r
    return rows


NOISY = 0.15  # cores used by other processes above which a figure is marked '*'


def _us(row):
    if not row or row.get("us") is None:
        return "n/a"
    return f"{row['us']:.1f}" + ("*" if row.get("other_cpu", 0) >= NOISY else "")


def _table(header, lines):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]

    def fmt(cells):
        return " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths)))
    print(fmt(header))
    print("-+-".join("-" * w for w in widths))
    for l in lines:
        print(fmt(l))


def print_table(peer, cases, rows, wick=None):
    by = {(r["name"], r["mode"]): r for r in rows}
    titles = [t for _, t in peer.modes]
    header = ["case"] + (["wick lazy us", "wick eager us"] if wick is not None else [])
    header += [f"{t} us" for t in titles]
    header += ["ratio (best peer / wick lazy)"] if wick is not None else ["best"]
    header += [CORETYPE_VAR]
    lines = []
    for case in cases:
        peer_rows = [by.get((case.name, m)) for m, _ in peer.modes]
        ok = [r for r in peer_rows if r and r.get("us") is not None]
        best = min(ok, key=lambda r: r["us"]) if ok else None
        line = [case.name]
        if wick is not None:
            wl, we = wick.get((case.name, "lazy")), wick.get((case.name, "eager"))
            line += [_us(wl), _us(we)]
        line += [_us(r) for r in peer_rows]
        if wick is not None:
            wl = wick.get((case.name, "lazy"))
            line.append(f"{best['us'] / wl['us']:.2f}" if best and wl and wl.get("us") else "n/a")
        else:
            line.append(dict(peer.modes)[best["mode"]] if best else "n/a")
        line.append(best.get("openblas_coretype", "?") if best else "")
        lines.append(line)
    print(f"\n{peer.title}, CPU, {peer.threads}, median us per call "
          "(x10 cases: one whole chain of 10 calls + eval)")
    _table(header, lines)
    known = {c.name for c in cases}
    extra = [r for r in rows if r["name"] not in known]
    if extra:
        print("\nreferences:")
        _table(["case", "mode", "us", "rate", CORETYPE_VAR],
               [[r["name"], r["mode"], _us(r),
                 f"{r['gflops']} GFLOP/s" if "gflops" in r else f"{r.get('gbs', '')} GB/s",
                 r.get("openblas_coretype", "?")] for r in extra])
    for n in peer.notes:
        print(f"note: {n}")
    print(f"note: copy GB/s count read + write bytes (STREAM convention); "
          f"{CORETYPE_VAR} column: setting the figure was measured under")
    if any(r.get("other_cpu", 0) >= NOISY for r in rows):
        print(f"note: * = other processes used >= {NOISY} cores while the figure was measured")


def main(peer, script, argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    cases = [c for c in CASES if args.filter in c.name and args.only_kind in (None, c.kind)]
    split = args.matmul_coretype == "unset" and not args.only_kind and CORETYPE_VAR in os.environ
    here = [c for c in cases if not (split and c.kind == "matmul")]
    _log(f"{peer.title}: {len(cases)} cases, modes {', '.join(m for m, _ in peer.modes)}, "
         f"{CORETYPE_VAR}={coretype()}")
    rows = _run_peer(peer, here, args)
    if split and len(here) < len(cases):
        _log(f"  matmul cases: child process with {CORETYPE_VAR} unset")
        rows += _child_rows(args, script)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    wick = run_wick(args.wick) if args.wick else None
    print_table(peer, cases, rows, wick)
