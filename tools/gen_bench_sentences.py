#!/usr/bin/env python3
"""bench/data/sentences.txt: 256 English sentences of about 16 words (14-18), the input
of wick bench's embed cases and bench/compare/embed_st.py. Deterministic (seeded).

    python3 tools/gen_bench_sentences.py
"""
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBJECTS = ["The old fisherman", "A young engineer", "Our neighbour's cat", "The city council", "My grandmother",
            "A group of students", "The research team", "An experienced pilot", "The small bakery", "Her brother",
            "The local library", "A famous painter", "The night nurse", "Two curious children", "The new manager",
            "A quiet musician"]
VERBS = ["carefully repaired", "quickly painted", "slowly explained", "happily shared", "eagerly studied",
         "secretly planned", "patiently organised", "proudly presented", "quietly finished", "bravely defended"]
OBJECTS = ["the broken wooden fence", "a detailed map of the coast", "the results of the long experiment",
           "an unusual recipe for apple pie", "the history of the ancient bridge", "a plan for the summer festival",
           "the small garden behind the house", "a letter to the editor", "the noisy engine of the truck",
           "a collection of rare stamps"]
TAILS = ["before the heavy rain started in the evening", "while everyone else was asleep upstairs",
         "during the first week of the cold winter", "after a long and tiring day at work",
         "with help from a few good friends", "in front of a large and cheerful crowd",
         "without telling anyone about it at all", "on a bright morning in early spring"]


def main():
    rng = random.Random(16)
    out = []
    while len(out) < 256:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."
        if 14 <= len(s.split()) <= 18 and s not in out:
            out.append(s)
    path = os.path.join(ROOT, "bench", "data", "sentences.txt")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    words = [len(s.split()) for s in out]
    print(f"{path}: {len(out)} sentences, {sum(words) / len(words):.1f} words on average")


if __name__ == "__main__":
    main()
