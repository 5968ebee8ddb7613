#!/usr/bin/env python3
"""Prints criterion's medians from target/criterion as a Markdown table, with each case's
ratio to the baselines of its group (the cases named on the command line with --base).

Usage: python3 ci/bench-table.py [--base NAME ...] [GROUP ...]
A case's "group" is criterion's benchmark group ("stock", "pair", ...); with no GROUP, all.
Run after `cargo bench`; reads target/criterion/<group>/<case>/new/{benchmark,estimates}.json.
"""
import json
import pathlib
import sys

args = sys.argv[1:]
bases = []
groups = []
while args:
    a = args.pop(0)
    if a == "--base":
        bases.append(args.pop(0))
    else:
        groups.append(a)

root = pathlib.Path("target/criterion")
rows = []
for bench in sorted(root.glob("*/*/new/benchmark.json")) + sorted(root.glob("*/*/*/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    group = meta["group_id"]
    if groups and group not in groups:
        continue
    name = meta["function_id"] or ""
    if meta.get("value_str"):
        name = f"{name}/{meta['value_str']}"
    rows.append((group, name, est["median"]["point_estimate"]))

by_group = {}
for group, name, ns in rows:
    by_group.setdefault(group, []).append((name, ns))

for group, cases in by_group.items():
    base = [(n, ns) for n, ns in cases if n in bases]
    head = "| case | median ns |" + "".join(f" × {n} |" for n, _ in base)
    print(f"\n**{group}**\n")
    print(head)
    print("|---|---:|" + "---:|" * len(base))
    for name, ns in cases:
        ratios = "".join(f" {ns / b:.2f} |" for _, b in base)
        print(f"| {name} | {ns:.2f} |{ratios}")
