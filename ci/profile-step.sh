#!/usr/bin/env bash
# Where a CPU training step's time goes, by Burn operation, forward and backward: `perf record`
# with call graphs over `train step-time`, summarised by ci/profile_step.py as a markdown table.
#
#   bash ci/profile-step.sh [ARCH ...]     # default: enet espnet erfnet; batch 8, 1×128×128
#
# Needs perf (Debian's linux-perf) and a built `train`: $TRAIN, else $CARGO_TARGET_DIR/release/train, else
# target/release/train: `cargo build --release -p relkd-train`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
train="${TRAIN:-${CARGO_TARGET_DIR:-target}/release/train}"
[[ -x "$train" ]] || { echo "profile-step: build it first: cargo build --release -p relkd-train ($train)" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile-step: perf is needed (apt-get install linux-perf)" >&2; exit 1; }
hz=499 warmup=1 runs=6
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for arch in "${@:-enet espnet erfnet}"; do
  for a in $arch; do
    perf record -q -F "$hz" --call-graph dwarf,16384 -o "$tmp/$a.data" -- \
      "$train" step-time --arch "$a" --batch 8 --size 128 --warmup "$warmup" --runs "$runs" >"$tmp/$a.txt"
    cat "$tmp/$a.txt"
    perf script -i "$tmp/$a.data" 2>/dev/null >"$tmp/$a.script"
    python3 ci/profile_step.py "$tmp/$a.script" --steps $((warmup + runs)) --hz "$hz" --title "$a"
    echo
  done
done
