#!/usr/bin/env python3
"""Picks a small seed corpus that keeps most of a large corpus's edge coverage.

    python3 fuzz/pick-seeds.py <fuzz binary> <large corpus dir> <out dir> [max files] [candidates]

`cargo fuzz cmin` keeps every input that adds a feature: hundreds of files. For the
committed corpus we want a handful. This runs libFuzzer's merge on each input alone (so the
merge control file lists every edge that input covers), then greedily picks the input that
adds the most uncovered edges, smaller first on ties, until `max files` (default 12) or no
input adds anything. Only the `candidates` largest inputs are measured (default 400; about
0.2 s each). The fuzz binary is the one `cargo +nightly fuzz build` leaves in
`fuzz/target/<triple>/release/<target>`. Prints the coverage kept.
"""

import os
import shutil
import subprocess
import sys
import tempfile


def edges(binary, path, scratch):
    """The set of PC-table indices that `path` covers."""
    one = os.path.join(scratch, "one")
    out = os.path.join(scratch, "out")
    ctl = os.path.join(scratch, "ctl")
    for d in (one, out):
        shutil.rmtree(d, ignore_errors=True)
        os.mkdir(d)
    if os.path.exists(ctl):
        os.remove(ctl)  # an existing control file would make libFuzzer resume that merge
    shutil.copy(path, one)
    subprocess.run(
        [binary, "-merge=1", f"-merge_control_file={ctl}", "-detect_leaks=0", out, one],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    cov = set()
    with open(ctl) as f:
        for line in f:
            if line.startswith("COV "):
                cov.update(int(x) for x in line.split()[2:])
    return cov


def main():
    binary, corpus, out = sys.argv[1:4]
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else 12
    candidates = int(sys.argv[5]) if len(sys.argv) > 5 else 400
    files = sorted(
        (os.path.join(corpus, f) for f in os.listdir(corpus) if not f.startswith(".")),
        key=lambda p: (-os.path.getsize(p), p),
    )[:candidates]
    with tempfile.TemporaryDirectory() as scratch:
        cov = {p: edges(binary, p, scratch) for p in files}
    total = set().union(*cov.values()) if cov else set()
    covered, picked = set(), []
    while len(picked) < limit:
        best = max(files, key=lambda p: (len(cov[p] - covered), -os.path.getsize(p)), default=None)
        if best is None or not cov[best] - covered:
            break
        covered |= cov[best]
        picked.append(best)
    os.makedirs(out, exist_ok=True)
    for p in picked:
        shutil.copy(p, out)
    size = sum(os.path.getsize(p) for p in picked)
    print(f"{len(picked)} of {len(files)} inputs ({size} bytes) cover {len(covered)} of their {len(total)} edges")


if __name__ == "__main__":
    main()
