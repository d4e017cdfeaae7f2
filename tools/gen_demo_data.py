#!/usr/bin/env python3
"""Writes the `make demo` task into data/demo/: dates to rewrite in ISO 8601.

Each line is a chat example {"messages": [user, assistant]}: the user asks for a date
written as "March 5, 2021" or "5 March 2021" in YYYY-MM-DD form; the assistant's
answer is exactly that ("2021-03-05"), so a held-out answer is right or wrong by string
equality. train.jsonl (400 lines) and heldout.jsonl (40 lines) come from different
seeds and share no question. Standard library only; deterministic.
    python3 tools/gen_demo_data.py
"""
import json
import os
import random

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "demo")


def example(r):
    y, m, d = r.randint(1950, 2049), r.randint(1, 12), r.randint(1, 28)
    written = f"{MONTHS[m - 1]} {d}, {y}" if r.random() < 0.5 else f"{d} {MONTHS[m - 1]} {y}"
    q = f"Rewrite the date {written} in ISO format (YYYY-MM-DD)."
    return q, f"{y:04d}-{m:02d}-{d:02d}"


def write(name, n, seed, avoid):
    r = random.Random(seed)
    seen = []
    with open(os.path.join(OUT, name), "w") as f:
        while len(seen) < n:
            q, a = example(r)
            if q in avoid or q in seen:
                continue
            seen.append(q)
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    return set(seen)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    held = write("heldout.jsonl", 40, 2, set())
    write("train.jsonl", 400, 1, held)
