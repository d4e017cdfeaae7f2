#!/usr/bin/env python3
"""Per-block phases of a decode layer's kernels, from a WICK_PROBE build's records.

Each block of the one-row GEMVs and each working CTA of the decode attention records
(src/backend/cuda/probe.h) its SM, its start, the return of its PDL wait, a mark (the
attention: its keys done; a GEMV: its dot products done) and its end, on the GPU's
global timer (ns); each source file writes its own records to $WICK_PROBE_OUT.<name>. A
GEMV launch is a grid's worth of records of one x form and grid in the order of their
starts (such launches do not overlap); an attention launch, whose idle clusters return
without a record, the records whose starts lie within 10 us of the one before. Launches
are ordered by their waits' median return (blocks start in launch order only where they
find room). For every kind of launch, medians over the steady layers of: when its blocks
started, when their waits returned, the mark and their end, in us after the end of the
launch before it.

With --attn, the decode attention's CTAs instead, by their index in the grid row (the
rank in a cluster of 8 for contexts up to 1,024 keys): medians of the phases between
its marks: start, wait's return, keys done, part pushed to the cluster, the cluster's
barrier passed, slice merged and stored, end.

  WICK_PROBE_OUT=/tmp/p build-probe/wick generate ...
  python3 bench/compare/probe.py /tmp/p [--skip 400] [--attn]
"""
import argparse
import glob
import statistics

# tags (probe.h's PROBE_END): a GEMV's x form * 1e6 + its member's N (a group is named
# by its largest member); the decode attention 9e6 + the head dim. Qwen2.5-0.5B's layer:
NAMES = {2000896: "qkv", 9000064: "attn", 896: "o", 2004864: "gate/up", 1000896: "down"}
ATTN = 9000000


def q(v, f):
    v = sorted(v)
    return v[min(len(v) - 1, int(f * len(v)))]


def launches_of(recs):
    """Records (in the order of their starts) into launches. A GEMV group's members
    (q, k, v) tag their own N, so a GEMV launch is keyed by its x form and grid and is
    complete at a grid's worth of records (every block records); it is named by its
    largest member. An attention launch: the records starting within 10 us."""
    open_, out = {}, []
    for r in recs:
        t0, tag, grid = r[0], r[4], r[7]
        key = (tag, 0) if tag >= ATTN else (tag // 1000000, grid)
        l = open_.get(key)
        new = l is None or (t0 - l["t0"][-1] > 10000 if tag >= ATTN else len(l["t0"]) == grid)
        if new:
            l = {"tag": tag, "t0": [], "t1": [], "t2": [], "t3": []}
            open_[key] = l
            out.append(l)
        l["tag"] = max(l["tag"], tag)
        l["t0"].append(r[0]), l["t1"].append(r[1]), l["t2"].append(r[2])
        if r[3]:
            l["t3"].append(r[3])
    return out


def attn_phases(prefix):
    """The attention's records by CTA (probe.h's t0 t1 t3 t4 t5 t6 t2: start, wait, keys,
    pushed, barrier, merged, end), medians and 90th percentiles of the phases in us."""
    by = {}
    for path in glob.glob(prefix + ".*"):
        for line in open(path):
            v = list(map(int, line.split()))
            if len(v) < 11 or v[0] // 1000000 != ATTN // 1000000:
                continue
            t0, t1, t2, t3, t4, t5, t6 = v[4:11]
            by.setdefault(v[1], []).append((t1 - t0, t3 - t1, t4 - t3, t5 - t4, t6 - t5, t2 - t6, t2 - t0))
    names = ("start>wait", "wait>keys", "keys>pushed", "pushed>barrier", "barrier>merged", "merged>end", "start>end")
    print("CTA      n  " + "  ".join("%13s" % n for n in names) + "   (us: median [90th percentile])")
    for b in sorted(by):
        r = by[b]
        print("%3d %6d  " % (b, len(r)) + "  ".join(
            "%5.2f [%5.2f]" % (q([x[i] for x in r], 0.5) / 1000.0, q([x[i] for x in r], 0.9) / 1000.0) for i in range(7)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefix", help="the WICK_PROBE_OUT of the run: its files are PREFIX.*")
    ap.add_argument("--skip", type=int, default=400, help="launches to skip first (prefill, captures)")
    ap.add_argument("--attn", action="store_true", help="the decode attention's phases by CTA instead")
    a = ap.parse_args()
    if a.attn:
        attn_phases(a.prefix)
        return
    recs = []
    for path in sorted(glob.glob(a.prefix + ".*")):
        for line in open(path):
            tag, blk, sm, grid, t0, t1, t2, t3 = map(int, line.split()[:8])   # (then PROBE_MARK2-4's)
            recs.append((t0, t1, t2, t3, tag, blk, sm, grid))
    recs.sort()
    launches = [l for l in launches_of(recs) if l["tag"] in NAMES]
    # in the order of their waits' returns: the order of the data dependencies (an
    # attention's CTAs start before the q/k/v GEMV's blocks, once down's leave)
    launches.sort(key=lambda l: statistics.median(l["t1"]))
    launches = launches[a.skip:]
    rows = {}
    for prev, l in zip(launches, launches[1:]):
        ref = max(prev["t2"])
        d = lambda v: (v - ref) / 1000.0
        mark = [d(q(l["t3"], 0.5)), d(max(l["t3"]))] if l["t3"] else [float("nan")] * 2
        rows.setdefault(NAMES[l["tag"]] + " after " + NAMES[prev["tag"]], []).append(
            [d(min(l["t0"])), d(q(l["t0"], 0.5)), d(max(l["t0"])), d(min(l["t1"])), d(q(l["t1"], 0.5)),
             d(max(l["t1"]))] + mark + [d(q(l["t2"], 0.5)), d(max(l["t2"])), len(l["t0"])])
    print("us after the end of the launch before (medians over launches): blocks' start first/median/last, "
          "wait's return first/median/last, mark median/last, end median/last, blocks recorded")
    hdr = ("launch", "n", "st0", "st50", "st100", "w0", "w50", "w100", "m50", "m100", "e50", "e100", "blocks")
    print("%-20s %5s" % hdr[:2] + "".join("%8s" % h for h in hdr[2:]))
    for k, v in rows.items():
        if len(v) < 5:
            continue
        med = [statistics.median(c) for c in zip(*v)]
        print("%-20s %5d" % (k, len(v)) + "".join("%8.2f" % m for m in med))


if __name__ == "__main__":
    main()
