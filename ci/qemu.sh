#!/usr/bin/env bash
# The bare-metal images of baremetal/ under QEMU (issue 15):
#
# * baremetal/cortex-m, no heap: static counters charged by the main loop and by SysTick, on a
#   Cortex-M4F (thumbv7em-none-eabihf, QEMU mps2-an386) and a Cortex-M0 without
#   compare-and-swap (thumbv6m-none-eabi, QEMU microbit); verdict through semihosting;
# * baremetal/riscv: groups, per-CPU stocks and epochs on four harts with timer interrupts
#   (riscv32imac-unknown-none-elf, QEMU virt -smp 4); verdict through the virt test device.
#
# Each image's verdict is QEMU's exit code, and each run is bounded by `timeout`
# (QEMU_RUN_SECS, default 45). The QEMU command lines are the runners in each package's
# .cargo/config.toml (`cargo run` prints them). Installs QEMU from Debian's packages if it is
# missing.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."

RUN_SECS="${QEMU_RUN_SECS:-45}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_qemu() {
  export DEBIAN_FRONTEND=noninteractive
  local pkgs=(qemu-system-arm qemu-system-misc)
  as_root apt-get update -q
  if as_root apt-get install -y -q --no-install-recommends --no-remove "${pkgs[@]}"; then
    return
  fi
  # Machines whose qemu-utils comes from the backports suite refuse the stable emulators
  # (qemu-utils Breaks the older qemu-system-common): take them from the same suite, through
  # a temporary copy of the source lists, leaving the machine's own lists as they are.
  local codename tmp
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  tmp=$(mktemp -d)
  cp /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list "$tmp/" 2>/dev/null || true
  if [ -f /etc/apt/sources.list ]; then cp /etc/apt/sources.list "$tmp/base.list"; fi
  cat > "$tmp/backports.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${codename}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  local opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$tmp")
  as_root apt-get "${opts[@]}" update -q
  as_root apt-get "${opts[@]}" install -y -q --no-install-recommends --no-remove -t "${codename}-backports" "${pkgs[@]}"
  rm -rf "$tmp"
}

if ! command -v qemu-system-arm >/dev/null || ! command -v qemu-system-riscv32 >/dev/null; then
  start=$(date +%s)
  echo "-- installing QEMU"
  log=$(mktemp)
  install_qemu > "$log" 2>&1 || { tail -40 "$log"; exit 1; }
  rm -f "$log"
  echo "installed QEMU in $(( $(date +%s) - start ))s"
fi
qemu-system-arm --version | head -1

# ci/setup.sh installs these targets; added here too when the script runs on its own.
installed=$(rustup target list --installed)
for t in thumbv7em-none-eabihf thumbv6m-none-eabi riscv32imac-unknown-none-elf; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

echo "-- rustfmt on the images' packages (ci/fmt.sh covers the crate's workspace only)"
(cd baremetal/cortex-m && cargo fmt -- --check)
(cd baremetal/riscv && cargo fmt -- --check)

echo "-- building the images"
(cd baremetal/cortex-m && cargo build --release --target thumbv7em-none-eabihf \
  && cargo build --release --target thumbv6m-none-eabi)
(cd baremetal/riscv && cargo build --release)

passed=0
failed=()
# run NAME DIR [cargo run arguments]: runs an image with its package's runner, bounded.
run() {
  local name=$1 dir=$2 rc=0 start ms
  shift 2
  echo
  echo "=== $name"
  start=$(date +%s%N)
  # `cargo run` execs the runner (it prints the QEMU command line), so `timeout` signals
  # QEMU itself. No stdin: QEMU's serial console is on stdio.
  (cd "$dir" && exec timeout "$RUN_SECS" cargo run --release "$@" </dev/null) || rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "$name: passed in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
  else
    [ "$rc" -eq 124 ] && echo "$name: timed out after ${RUN_SECS}s"
    failed+=("$name")
    echo "$name: FAILED (exit code $rc) after $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
  fi
}

run "cortex-m4f (mps2-an386)" baremetal/cortex-m --target thumbv7em-none-eabihf
run "cortex-m0 (microbit)" baremetal/cortex-m --target thumbv6m-none-eabi
run "riscv32 virt, 4 harts" baremetal/riscv

echo
echo "qemu: ${passed} passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
