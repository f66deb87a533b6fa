#!/usr/bin/env python3
"""The hottest frames of a folded-stack file (inferno-collapse-perf): self time, and the
inclusive share of the frames that match each given pattern (a substring).

Usage: top.py FILE.folded [N] [PATTERN...]"""
import re
import sys
from collections import Counter


def short(frame):
    # Drop generic arguments and closures' noise so that one function is one row.
    frame = re.sub(r"::\{\{closure\}\}", "", frame)
    frame = re.sub(r"<[^<>]*>", "<>", frame)
    return frame[:110]


def main():
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    patterns = sys.argv[3:]
    self_time, total = Counter(), 0
    inclusive, every = Counter(), Counter()
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        count = int(count)
        total += count
        frames = stack.split(";")
        self_time[short(frames[-1])] += count
        for f in set(short(f) for f in frames):
            every[f] += count
        for p in patterns:
            if any(p in f for f in frames):
                inclusive[p] += count
    print(f"{total} samples")
    print("self:")
    for frame, count in self_time.most_common(n):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    print("inclusive, the largest:")
    for frame, count in every.most_common(2 * n):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    if patterns:
        print("inclusive:")
        for p in patterns:
            print(f"  {100 * inclusive[p] / total:5.1f} %  {p}")


main()
