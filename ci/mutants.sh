#!/usr/bin/env bash
# Mutation testing of the counter (issue 11, "Guards"): cargo-mutants on the files where one
# wrong operator corrupts accounting, against the tests that cover them. Run by hand, NOT in
# CI: it takes one to two hours on two cores.
#
# Usage:
#   bash ci/mutants.sh [--head] [-j N] [--timeout SECS] [--out DIR] [--again]
#
#   --head          test the committed HEAD in a temporary git worktree (removed at the end)
#                   instead of the working tree, so that uncommitted edits do not leak in
#   -j N            cargo-mutants jobs (default 2, or $MUTANTS_JOBS); each job builds in its
#                   own copy of the tree
#   --timeout SECS  per-mutant test timeout (default 300, or $MUTANTS_TIMEOUT); the race
#                   tests slow down a lot on a loaded machine, and an equivalent mutant that
#                   times out is still accepted, but a real one is not
#   --out DIR       where the mutants.out directories go (default target/mutants)
#   --again         skip phase 1 and reuse DIR/phase1 (after editing the list or the loom
#                   models)
#
# The list is read from the working tree, also with --head.
#
# Two phases:
#   1. every mutant of FILES, built and tested with TESTS (unit, property, rule and race
#      tests, and tests/counter_mutants.rs);
#   2. the mutants that phase 1 missed or that timed out, and that are not accepted by
#      ci/mutants-equivalent.txt, again under loom (`--cfg loom`, release, debug assertions
#      on) against the loom models of the counter (src/tests/loom_counter.rs and the
#      loom_counter_models of tests/counter_mutants.rs): races too narrow for real threads.
#
# Fails (exit 1) if a mutant survives both phases and is not on the list, or if a baseline
# fails. Entries of the list that match no surviving mutant are reported (the code moved or a
# test kills the mutant now): judge them again and update the list. Matching ignores line and
# column numbers (see the header of ci/mutants-equivalent.txt).
#
# Needs cargo-mutants (installed with `cargo install --locked` if missing), python3 and git.
# Everything runs under `nice -n 10`.
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=(src/counter/charge.rs src/counter/protection.rs src/counter/peak.rs src/counter/limits.rs)
TESTS=(--lib --test=counter_charging --test=counter_limits --test=counter_protection --test=counter_invariants
  --test=counter_races --test=counter_mutants)
LOOM_TESTS=(--lib --test=counter_mutants)
LOOM_FILTER=loom_counter
CARGO_MUTANTS_VERSION=27.1.0
LIST=ci/mutants-equivalent.txt

jobs=${MUTANTS_JOBS:-2}
timeout=${MUTANTS_TIMEOUT:-300}
out=${MUTANTS_OUT:-target/mutants}
head=0
again=0
while [ $# -gt 0 ]; do
  case "$1" in
    --head) head=1 ;;
    -j) jobs=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    --out) out=$2; shift ;;
    --again) again=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ! cargo mutants --version >/dev/null 2>&1; then
  echo "--- installing cargo-mutants $CARGO_MUTANTS_VERSION"
  cargo install cargo-mutants --locked --version "$CARGO_MUTANTS_VERSION"
fi
installed=$(cargo mutants --version | awk '{print $2}')
if [ "$installed" != "$CARGO_MUTANTS_VERSION" ]; then
  echo "note: cargo-mutants $installed, this script was written against $CARGO_MUTANTS_VERSION"
fi

list=$(pwd)/$LIST
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$(pwd)
worktree=
if [ "$head" = 1 ]; then
  worktree=$(mktemp -d "${TMPDIR:-/tmp}/chargetree-mutants.XXXXXX")
  git worktree add --detach "$worktree" HEAD >/dev/null
  trap 'git -C "$src" worktree remove --force "$worktree"' EXIT
  src=$worktree
  echo "--- testing HEAD ($(git rev-parse --short HEAD)) in $worktree"
fi

file_args=()
for f in "${FILES[@]}"; do file_args+=(-f "$f"); done
cargo_args() { for a in "$@"; do printf '%s\n' "--cargo-arg=$a"; done; }

start=$(date +%s)
rm -rf "$out/phase2"
if [ "$again" = 0 ]; then
  rm -rf "$out/phase1"
  echo "--- phase 1: ${FILES[*]} against ${TESTS[*]}"
  # Exit status 2/3 only says that mutants were missed / timed out: read outcomes.json.
  (cd "$src" && nice -n 10 cargo mutants -j "$jobs" --timeout "$timeout" -o "$out/phase1" \
    "${file_args[@]}" $(cargo_args "${TESTS[@]}")) || true
fi

# Prints the mutants to try again under loom (one exact-name regex per line) into
# phase2.re, and the phase 1 report; with `final`, also reads phase 2 and decides.
analyse() {
  python3 - "$out" "$list" "$1" <<'PY'
import json, os, re, sys
from collections import Counter, defaultdict

out, list_path, stage = sys.argv[1], sys.argv[2], sys.argv[3]
MARK = "/* ~ changed by cargo-mutants ~ */"

def norm(s):
    return " ".join(s.replace(MARK, " ").split())

def load(phase):
    d = os.path.join(out, phase, "mutants.out")
    path = os.path.join(d, "outcomes.json")
    if not os.path.exists(path):
        sys.exit(f"{phase}: no {path}: cargo-mutants did not run (see its output above)")
    outcomes = json.load(open(path))["outcomes"]
    diffs = {m["name"]: m.get("diff", "") for m in json.load(open(os.path.join(d, "mutants.json")))}
    tested = sum(1 for o in outcomes if isinstance(o["scenario"], dict))
    if tested < len(diffs):
        sys.exit(f"{phase}: only {tested} of {len(diffs)} mutants were tested (interrupted?)")
    base = [o for o in outcomes if o["scenario"] == "Baseline"]
    if base and base[0]["summary"] != "Success":
        sys.exit(f"{phase}: the unmutated baseline failed ({base[0]['summary']}): see {d}/log/baseline.log")
    res = []
    for o in outcomes:
        mu = o["scenario"].get("Mutant") if isinstance(o["scenario"], dict) else None
        if not mu:
            continue
        name = mu["name"]
        desc = re.sub(r"^(.*?):\d+:\d+: ", r"\1: ", name)
        plus = [l[1:] for l in diffs.get(name, "").splitlines() if l.startswith("+") and not l.startswith("+++")]
        summary = o["summary"]
        if summary == "Unviable":
            # A mutant that does not compile fails with rustc's "could not compile"; anything
            # else (a toolchain being reinstalled under us, a full disk) is no verdict.
            log = os.path.join(d, o.get("log_path", ""))
            if "could not compile" not in (open(log, errors="replace").read() if os.path.isfile(log) else ""):
                summary = "BuildTrouble"
        res.append(dict(name=name, file=mu["file"], desc=desc, line=norm(plus[0]) if plus else "",
                        summary=summary))
    return res

entries = []
for n, raw in enumerate(open(list_path), 1):
    line = raw.strip()
    if not line or line.startswith("#"):
        continue
    m = re.match(r"^(equivalent|untestable|hangs)\s+(.*?)\s+#\s+(\S.*)$", line)
    if not m:
        sys.exit(f"{list_path}:{n}: not `KIND FILE: DESCRIPTION [@ CODE]  # REASON`: {line}")
    kind, what, reason = m.groups()
    desc, _, code = what.partition(" @ ")
    entries.append(dict(n=n, kind=kind, desc=desc.strip(), code=norm(code), used=0, caught=0, missed=0))

def accepted(m):
    for e in entries:
        if e["desc"] == m["desc"] and e["code"] in m["line"]:
            if m["summary"] == "CaughtMutant":
                e["caught"] += 1
                continue
            if e["kind"] == "hangs" and m["summary"] != "Timeout":
                e["missed"] += 1
                continue
            e["used"] += 1
            return e
    return None

p1 = load("phase1")
trouble = [m for m in p1 if m["summary"] == "BuildTrouble"]
if trouble:
    print(f"{len(trouble)} mutant(s) did not build, but not because of a compile error (see their logs):")
    for m in trouble:
        print("  " + m["name"])
    sys.exit("phase 1 has no verdict for them: run again")
survivors = [m for m in p1 if m["summary"] in ("MissedMutant", "Timeout")]
for m in p1:
    if m["summary"] == "CaughtMutant":
        accepted(m)  # only to notice list entries that match caught mutants
listed = {m["name"]: accepted(m) for m in survivors}
again = [m for m in survivors if not listed[m["name"]]]

if stage == "phase1":
    with open(os.path.join(out, "phase2.re"), "w") as f:
        for m in again:
            f.write("^" + re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", m["name"]) + "$\n")
    sys.exit(0)

p2 = {m["name"]: m for m in load("phase2")} if again else {}
failed = []
per_file = defaultdict(Counter)
for m in p1:
    c = per_file[m["file"]]
    s = m["summary"]
    if s == "Unviable":
        c["unviable"] += 1
        continue
    c["viable"] += 1
    if s == "CaughtMutant":
        c["caught"] += 1
    elif listed.get(m["name"]):
        c[listed[m["name"]]["kind"]] += 1
    elif p2.get(m["name"], {}).get("summary") == "CaughtMutant":
        c["loom"] += 1
    else:
        c["FAILED"] += 1
        failed.append(m)

cols = ["viable", "caught", "loom", "equivalent", "untestable", "hangs", "FAILED", "unviable"]
print(f"{'file':28}" + "".join(f"{c:>11}" for c in cols))
for f in sorted(per_file):
    print(f"{f:28}" + "".join(f"{per_file[f][c]:>11}" for c in cols))
print("caught: by the tests of phase 1; loom: missed by them, caught by the loom models (phase 2);")
print("equivalent / untestable / hangs: accepted by " + os.path.relpath(list_path) + ".")
for e in entries:
    if not e["used"]:
        why = ("listed as hanging, but the mutant was missed" if e["missed"]
               else "matches a mutant that is caught now" if e["caught"] else "matches no surviving mutant")
        print(f"stale list entry ({why}): {os.path.relpath(list_path)}:{e['n']}: {e['desc']}"
              + (f" @ {e['code']}" if e["code"] else ""))
if failed:
    print(f"\n{len(failed)} surviving mutant(s) not on the list:")
    for m in failed:
        p2s = p2.get(m["name"], {}).get("summary", "not run")
        print(f"  {m['summary']:12} (loom: {p2s}) {m['name']}\n      {m['line']}")
    print("Kill each with a test (tests/counter_mutants.rs), or list it with its reason in "
          + os.path.relpath(list_path) + ".")
    sys.exit(1)
print("\nevery surviving mutant is accounted for")
PY
}

analyse phase1
n_again=$(grep -c . "$out/phase2.re" || true)
if [ "$n_again" -gt 0 ]; then
  echo "--- phase 2: $n_again mutant(s) under loom (${LOOM_TESTS[*]}, tests named *$LOOM_FILTER*)"
  re_args=()
  while IFS= read -r re; do re_args+=(-F "$re"); done < "$out/phase2.re"
  (cd "$src" && RUSTFLAGS="--cfg loom --cfg crossbeam_loom -C debug-assertions=on" \
    LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" \
    nice -n 10 cargo mutants -j "$jobs" --timeout "$timeout" -o "$out/phase2" \
      "${file_args[@]}" "${re_args[@]}" --cargo-arg=--release $(cargo_args "${LOOM_TESTS[@]}") \
      -- -- "$LOOM_FILTER") || true
fi

echo "--- summary ($(( ($(date +%s) - start) / 60 )) min; reports in $out/phase{1,2}/mutants.out)"
analyse final
