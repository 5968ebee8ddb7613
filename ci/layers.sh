#!/usr/bin/env bash
# The layering rule of src/lib.rs: a module's code names only modules of its own layer or
# below. Every `crate::name` path in code (comments and doc comments excluded: a doc may point
# anywhere) of every file under src/ is looked up in the table below, and a path from a lower
# layer to a higher one fails the step, naming the file, the line and both layers. Paths
# through the crate root's re-exports are resolved to the module they come from. `super::`
# paths stay inside a module and are not checked; `src/lib.rs`, `src/tests/` (unit tests,
# which may use anything) and `src/model/` (the sequential test model) are not checked.
#
# Usage: ci/layers.sh [--graph]   (--graph prints which layer uses which, and checks)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec python3 - "$root/src" "${1:-}" <<'EOF'
import os, re, sys

src, mode = sys.argv[1], sys.argv[2]
# Layer of each top-level module (keep in step with the comments in src/lib.rs).
LAYER = {
    "cpu": 0, "epoch": 0, "fallible": 0, "padded": 0, "sync": 0,
    # items of src/lib.rs itself
    "const_fn": 0, "abort": 0,
    "counter": 1,
    "stock": 2,
    "groups": 3,
    "engine": 4,
    "obj": 5,
    "tree": 6,
    "alloc": 7, "reservation": 7,
    "api": 8, "group": 8, "objgroup": 8,
}
# Names the crate root re-exports, by the module they come from.
REEXPORT = {
    "COUNTER_MAX": "counter", "ChargeError": "counter", "Counter": "counter",
    "Reservation": "reservation", "ShrinkError": "reservation",
    "alloc_crate": "cpu", "std": "cpu", "core": "cpu",
}
NAMES = ["platform", "counter", "stock", "groups", "engine", "obj", "tree", "drop-ins", "api"]


def code_lines(text):
    """Yields (line number, code) with comments and string literals removed."""
    in_block = 0
    for no, line in enumerate(text.splitlines(), 1):
        out, i = [], 0
        while i < len(line):
            if in_block:
                j = line.find("*/", i)
                k = line.find("/*", i)
                if k != -1 and (j == -1 or k < j):
                    in_block += 1
                    i = k + 2
                elif j != -1:
                    in_block -= 1
                    i = j + 2
                else:
                    i = len(line)
                continue
            if line.startswith("//", i):
                break
            if line.startswith("/*", i):
                in_block += 1
                i += 2
                continue
            if line[i] == '"':
                j = i + 1
                while j < len(line) and line[j] != '"':
                    j += 2 if line[j] == "\\" else 1
                out.append('""')
                i = j + 1
                continue
            out.append(line[i])
            i += 1
        yield no, "".join(out)


def first_components(code):
    """Top-level module names named by `crate::` paths in a line of code."""
    for m in re.finditer(r"\bcrate::", code):
        rest = code[m.end():]
        if rest.startswith("{"):
            depth, item, items = 0, "", []
            for ch in rest[1:]:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    if depth == 0:
                        break
                    depth -= 1
                elif ch == "," and depth == 0:
                    items.append(item)
                    item = ""
                    continue
                item += ch
            items.append(item)
            for it in items:
                name = re.match(r"\s*(\w+)", it)
                if name:
                    yield name.group(1)
        else:
            name = re.match(r"(\w+)", rest)
            if name:
                yield name.group(1)


def module_of(path):
    rel = os.path.relpath(path, src)
    return rel.split(os.sep)[0].removesuffix(".rs")


bad, edges = [], {}
for dirpath, _, files in os.walk(src):
    for f in sorted(files):
        if not f.endswith(".rs"):
            continue
        path = os.path.join(dirpath, f)
        mod = module_of(path)
        if mod in ("lib", "tests", "model"):
            continue
        if mod not in LAYER:
            bad.append(f"{path}: module `{mod}` has no layer in ci/layers.sh")
            continue
        here = LAYER[mod]
        text = open(path, encoding="utf-8").read()
        # A multi-line `use crate::{...}` is joined before it is read.
        lines = list(code_lines(text))
        joined, buf, start = [], "", None
        for no, code in lines:
            if buf:
                buf += " " + code
                if buf.count("{") <= buf.count("}"):
                    joined.append((start, buf))
                    buf = ""
                continue
            if re.search(r"\bcrate::\{", code) and code.count("{") > code.count("}"):
                buf, start = code, no
                continue
            joined.append((no, code))
        for no, code in joined:
            for name in first_components(code):
                target = REEXPORT.get(name, name)
                if target not in LAYER:
                    bad.append(f"{path}:{no}: `crate::{name}` is not a module with a layer")
                    continue
                there = LAYER[target]
                edges.setdefault((here, there), 0)
                edges[(here, there)] += 1
                if there > here:
                    bad.append(
                        f"{os.path.relpath(path, os.path.dirname(src))}:{no}: {mod} "
                        f"(layer {here}, {NAMES[here]}) names crate::{name} "
                        f"(layer {there}, {NAMES[there]})"
                    )

if mode == "--graph":
    for (a, b), n in sorted(edges.items()):
        if a != b:
            print(f"{NAMES[a]:>9} -> {NAMES[b]:<9} {n} paths")
if bad:
    print("layers: upward references:", file=sys.stderr)
    for b in bad:
        print("  " + b, file=sys.stderr)
    sys.exit(1)
print(f"layers: ok ({sum(edges.values())} crate:: paths, none upward)")
EOF
