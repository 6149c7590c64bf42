#!/usr/bin/env bash
# The phantom judged by a real prostate model (issue #27): generates a phantom, runs TAPS
# (PyPI lavlab-taps 1.1.2, a MONAI SegResNetDS trained on real T2-weighted MRI) with its own
# `segment` on each case, and writes a per-case table and a per-site summary. A development
# tool, not part of `ci/test.sh`: 16 s to 3 minutes a case on 2 cores, about 26 minutes for 3
# cases of each of the 6 sites, and a 6 GB virtual environment (PyPI's torch wheel brings
# CUDA's libraries) under ${RELKD_CACHE:-~/.cache/relkd}/taps-venv, made once.
#
#   bash ci/realism-check.sh [--seed 11] [--cases 3] [--size 128|native] [--sites RUNMC,HK] [--out DIR] [--window | --by-window]
#
# --window: a quick proxy (one window of TAPS's network at the gland, seconds a case) for
# comparing phantom variants; only the default, TAPS's own segment, answers the issue.
# --by-window: the gland's logits in each window of TAPS's sliding window (DIR/windows.tsv; a diagnosis).
#
# Output: DIR/summary.md, DIR/cases.tsv and TAPS's masks under DIR/masks (default DIR:
# realism/seedS-SIZE, ignored by git).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seed=11 cases=3 size=128 sites=RUNMC,BMC,HCRUDB,UCL,BIDMC,HK out="" mode=""
while (($#)); do
  case "$1" in
    --seed) seed=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --sites) sites=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --window | --by-window) mode=$1; shift ;;
    *) echo "usage: $0 [--seed N] [--cases N] [--size 128|native] [--sites A,B] [--out DIR] [--window | --by-window]" >&2; exit 2 ;;
  esac
done
out=${out:-realism/seed$seed-$size${mode:+-${mode#--}}}
if [[ -e "$out/summary.md" || -e "$out/windows.tsv" ]]; then
  echo "realism-check: $out already holds a check; pass another --out or remove it" >&2
  exit 1
fi

venv="${RELKD_CACHE:-$HOME/.cache/relkd}/taps-venv"
if [[ ! -f "$venv/READY" ]]; then
  echo "realism-check: making $venv (torch, MONAI, nibabel, SciPy, ONNX Runtime, TAPS)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch==2.15.0 monai==1.6.1 nibabel==5.4.2 scipy==1.17.1 numpy==2.4.6 onnxruntime==1.32.0
  # TAPS asks for onnxruntime-gpu on Linux; the CPU build above is what runs here.
  "$venv/bin/pip" install --quiet --no-deps lavlab-taps==1.1.2
  touch "$venv/READY"
fi

cargo build --release --quiet -p relkd-train --bin train
data="$out/phantom"
rm -rf "$data"
"${CARGO_TARGET_DIR:-target}/release/train" phantom --out "$data" --sites 6 --cases "$cases" --size "$size" --seed "$seed" --tissues
# Two threads for ONNX Runtime's and torch's pools: the machine's cores.
OMP_NUM_THREADS=$(nproc) "$venv/bin/python" ci/realism_check.py "$data" "$out" --cases "$cases" --sites "$sites" ${mode:+"$mode"}
