#!/usr/bin/env python3
"""Where a decode token's wall time goes, from bench/cuda_timeline.c's CSV.

Tokens end at each greedy pick (k_top1). For each kernel of a token, its share of the
wall time is end - (the previous kernel's end): kernels that overlap the one before
(PDL) show how much of their run the overlap hid; a positive gap between kernels shows
up in the later kernel's share. Per kernel name: launches a token, median duration
(start to end, on its own clock), and the median share, summed over a token.

  python3 bench/compare/timeline.py /tmp/t.csv [--skip 8] [--layer]
"""
import argparse
import collections
import csv
import re
import statistics


def short(name):
    if name.startswith(("api:", "mem")):
        return name
    if name.startswith("_ZN"):   # nested (an anonymous namespace's kernel): its last component
        i, last = 3, name[:48]
        while i < len(name) and name[i].isdigit():
            m = re.match(r"\d+", name[i:])
            n = int(m.group(0))
            last, i = name[i + m.end():i + m.end() + n], i + m.end() + n
        return last
    m = re.match(r"_Z(\d+)", name)
    if m:
        n = int(m.group(1))
        return name[m.end():m.end() + n]
    return name[:48]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--skip", type=int, default=8, help="tokens to skip first (prefill, captures)")
    ap.add_argument("--end", default="k_top1", help="the kernel that ends a token")
    ap.add_argument("--layer", action="store_true", help="also list one token kernel by kernel")
    a = ap.parse_args()
    every = sorted(([int(r["start_ns"]), int(r["end_ns"]), short(r["name"]), int(r["grid"])]
                    for r in csv.DictReader(open(a.csv))), key=lambda r: r[0])
    rows = [r for r in every if not r[2].startswith("api:")]   # the GPU's work; api: the host's calls
    ends = [i for i, r in enumerate(rows) if r[2] == a.end]
    toks = [rows[ends[i - 1] + 1:ends[i] + 1] for i in range(1, len(ends))][a.skip:]
    periods = [rows[ends[i]][1] - rows[ends[i - 1]][1] for i in range(1, len(ends))][a.skip:]
    if not toks:
        raise SystemExit("no complete tokens (is --end a kernel of every step?)")
    walls, shares, durs, counts = [], collections.defaultdict(list), collections.defaultdict(list), collections.Counter()
    idles = []   # the GPU's idle time a token: gaps from the previous pick's end on
    for k, t in enumerate(toks):
        prev_end = t[0][0]   # the first kernel's share: its duration
        per = collections.Counter()
        last = rows[ends[k + a.skip]][1]
        idle = 0
        for s, e, n, _ in t:
            per[n] += max(e, prev_end) - prev_end
            durs[n].append(e - s)
            prev_end = max(prev_end, e)
            idle += max(0, s - last)
            last = max(last, e)
        idles.append(idle)
        for n, v in per.items():
            shares[n].append(v)
        counts.update(n for _, _, n, _ in t)
        walls.append(t[-1][1] - t[0][0])
    nt = len(toks)
    print("%d tokens: median %.1f us from a token's first kernel's start to its pick's end; %.1f us from pick to pick "
          "(%.0f tok/s)" % (nt, statistics.median(walls) / 1e3, statistics.median(periods) / 1e3, 1e9 / statistics.median(periods)))
    print("GPU idle a token (median): %.1f us" % (statistics.median(idles) / 1e3))
    print("%-28s %8s %10s %12s" % ("kernel", "a token", "us each", "us a token"))
    for n in sorted(shares, key=lambda n: -statistics.median(shares[n])):
        print("%-28s %8.1f %10.2f %12.1f" % (n, counts[n] / nt, statistics.median(durs[n]) / 1e3,
                                           statistics.median(shares[n]) / 1e3))
    if a.layer:
        t = toks[len(toks) // 2]
        t0, t1 = t[0][0], t[-1][1]
        host = [r for r in every if r[2].startswith("api:") and t0 <= r[1] and r[0] <= t1]
        print("\none token, kernel by kernel: start, duration, gap after the previous end (negative: overlap)")
        prev_end = t0
        for s, e, n, g in sorted(t + host):
            if n.startswith("api:"):
                print("%9.2f %8.2f %8s  (host) %s" % ((s - t0) / 1e3, (e - s) / 1e3, "", n[4:]))
                continue
            what = "%d CTAs" % g if not n.startswith("mem") else "%d bytes" % g
            print("%9.2f %8.2f %8.2f  %s (%s)" % ((s - t0) / 1e3, (e - s) / 1e3, (s - prev_end) / 1e3, n, what))
            prev_end = max(prev_end, e)


if __name__ == "__main__":
    main()
