#!/usr/bin/env python3
"""Per-block phases of the decode GEMVs, from a WICK_PROBE build's records.

Each GEMV block records (halfmm.cu, -DWICK_PROBE) its SM, its start, the return of its
PDL wait and its end (globaltimer, ns). A launch is a grid's worth of one tag's records
in the order of their starts (launches of one tag do not overlap). For every kind of
launch (q/k/v, o, gate/up, down), medians over the steady layers of: when its blocks
started, when their waits returned and when they ended, in us after the end of the
launch before it (for q/k/v: the down projection; for o: the q/k/v GEMV, the attention
between them unprobed).

  WICK_PROBE_OUT=/tmp/p.txt build-probe/wick generate ...
  python3 bench/compare/probe.py /tmp/p.txt [--skip 400]
"""
import argparse
import statistics

# tags (halfmm.cu's PROBE_END: x's form * 1e6 + the first member's N) of Qwen2.5-0.5B's layer
NAMES = {2000896: "qkv", 896: "o", 2004864: "gate/up", 1000896: "down"}


def q(v, f):
    v = sorted(v)
    return v[min(len(v) - 1, int(f * len(v)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--skip", type=int, default=400, help="launches to skip first (prefill, captures)")
    a = ap.parse_args()
    recs = []
    for line in open(a.path):
        tag, blk, sm, grid, t0, t1, t2 = map(int, line.split())
        recs.append((t0, t1, t2, tag, blk, sm, grid))
    recs.sort()
    open_, launches = {}, []
    for r in recs:   # every block records once, and launches of one tag do not overlap
        l = open_.get(r[3])
        if l is None or len(l["t0"]) == r[6]:
            l = {"tag": r[3], "t0": [], "t1": [], "t2": [], "sm": []}
            open_[r[3]] = l
            launches.append(l)
        l["t0"].append(r[0]), l["t1"].append(r[1]), l["t2"].append(r[2]), l["sm"].append(r[5])
    launches.sort(key=lambda l: min(l["t0"]))
    launches = [l for l in launches if l["tag"] in NAMES][a.skip:]
    rows = {}
    for prev, l in zip(launches, launches[1:]):
        ref = max(prev["t2"])
        d = lambda v: (v - ref) / 1000.0
        st = rows.setdefault(NAMES[l["tag"]] + " after " + NAMES[prev["tag"]], [])
        st.append([d(min(l["t0"])), d(q(l["t0"], 0.5)), d(max(l["t0"])), d(min(l["t1"])), d(q(l["t1"], 0.5)),
                   d(max(l["t1"])), d(q(l["t2"], 0.5)), d(max(l["t2"])), len(l["t0"])])
    print("us after the end of the launch before (medians over launches): blocks' start first/median/last, "
          "wait's return first/median/last, end median/last")
    hdr = ("launch", "n", "st0", "st50", "st100", "w0", "w50", "w100", "e50", "e100", "blocks")
    print("%-22s %5s" % hdr[:2] + "".join("%8s" % h for h in hdr[2:]))
    for k, v in rows.items():
        if len(v) < 5:
            continue
        med = [statistics.median(c) for c in zip(*v)]
        print("%-22s %5d" % (k, len(v)) + "".join("%8.2f" % m for m in med))


if __name__ == "__main__":
    main()
