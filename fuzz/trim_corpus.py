#!/usr/bin/env python3
"""Cuts a fuzz target's corpus to the few inputs that cover the most code.

`cargo fuzz cmin` keeps every input that adds any coverage: hundreds per target here. This keeps
at most KEEP of them (default 60), chosen greedily: the input that covers the most code not yet
covered, the smaller on a tie, until nothing new is covered or KEEP are chosen. Coverage is read
from libFuzzer's own merge (its control file lists the code each input reaches).

Usage: fuzz/trim_corpus.py BINARY CORPUS_DIR [MORE_DIRS...] [--keep N] [--max-bytes B]
  BINARY     the built target (fuzz/target/x86_64-unknown-linux-gnu/release/<target>, or under
             $CARGO_TARGET_DIR)
  CORPUS_DIR the corpus to replace with the kept inputs (fuzz/corpus/<target>)
  MORE_DIRS  more inputs to choose from, e.g. what a long run found (FUZZ_NEW of fuzz/run.sh)
Inputs larger than B bytes (default 4096) are left out.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile


def coverage(binary, dirs, work):
    """Each input's path and the set of code locations it reaches, from libFuzzer's merge."""
    control = os.path.join(work, "control")
    out = os.path.join(work, "out")
    os.mkdir(out)
    subprocess.run([binary, "-merge=1", f"-merge_control_file={control}", out, *dirs],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(control) as f:
        lines = f.read().splitlines()
    count = int(lines[0])
    paths = lines[2:2 + count]
    reached = {}
    for line in lines[2 + count:]:
        parts = line.split()
        if parts and parts[0] == "COV":
            reached[int(parts[1])] = set(parts[2:])
    return [(paths[i], cov) for i, cov in reached.items()]


def choose(inputs, keep, max_bytes):
    """Greedy: the most new code, the smaller input on a tie."""
    candidates = [(p, c, os.path.getsize(p)) for p, c in inputs if os.path.getsize(p) <= max_bytes]
    covered, kept = set(), []
    while candidates and len(kept) < keep:
        best = max(candidates, key=lambda x: (len(x[1] - covered), -x[2]))
        if not best[1] - covered:
            break
        kept.append(best[0])
        covered |= best[1]
        candidates.remove(best)
    return kept, covered


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("corpus")
    ap.add_argument("more", nargs="*")
    ap.add_argument("--keep", type=int, default=60)
    ap.add_argument("--max-bytes", type=int, default=4096)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        inputs = coverage(args.binary, [args.corpus, *args.more], work)
        everything = set().union(*(c for _, c in inputs)) if inputs else set()
        kept, covered = choose(inputs, args.keep, args.max_bytes)
        contents = [open(p, "rb").read() for p in kept]
    shutil.rmtree(args.corpus)
    os.makedirs(args.corpus)
    for data in contents:
        with open(os.path.join(args.corpus, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)
    print(f"{args.corpus}: kept {len(kept)} of {len(inputs)} inputs, "
          f"{sum(map(len, contents))} bytes, covering {len(covered)} of {len(everything)} locations")


if __name__ == "__main__":
    sys.exit(main())
