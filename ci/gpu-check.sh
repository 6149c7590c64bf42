#!/usr/bin/env bash
# The GPU check, in two halves (issue #17). Here (this script): build `train` with burn-cuda,
# `export` and `infer` in release, strip them and pack them with the configs and ONNX Runtime's
# CPU library into gpu-pack/relkd-gpu.tar.xz (git-ignored, at most 60 MiB: what the device
# tool carries). There (one command on the lent GPU machine, from the repository root):
#
#   bash ci/gpu-check.sh                 # here: build and pack (release; cold: tens of minutes)
#   device run, carry ["gpu-pack"]:  bash ci/gpu-device.sh --pack gpu-pack/relkd-gpu.tar.xz --out "$OUT"
#   bash ci/gpu-check.sh --dry-run       # CI: the same build in the cuda-check profile, the pack,
#                                        # its size, then the device half on CPU binaries, tiny shapes
#
# The report is OUT/gpu-report.md (ci/gpu_report.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
limit_bytes=$((60 * 1024 * 1024))
# Only `train` runs on the GPU (burn-cuda links LLVM statically, for its PTX compiler); `export`
# and `infer` are CPU builds. The dry run packs what CI has already built, so it adds no
# compile: `train` from the CUDA test step of .ci/run (same packages and features; the
# `cuda-check` profile leaves dependencies unoptimised, so that binary is larger than the
# release one) and `export` and `infer` from ci/test.sh's build.
bash ci/setup-cuda-build.sh
bash ci/setup-ort.sh
if ((dry)); then
  echo "--- the builds of .ci/run: train with burn-cuda (cuda-check), export and infer (dev)"
  cargo build --locked --profile cuda-check -p relkd-train -p relkd-export -p relkd-infer \
    --features relkd-models/cuda,relkd-train/cuda --bins
  cargo test --workspace --locked --no-run
  cuda_dir=cuda-check cpu_dir=debug
else
  echo "--- building train with burn-cuda, export and infer (release)"
  cargo build --locked --release -p relkd-train --features relkd-train/cuda --bin train
  cargo build --locked --release -p relkd-export -p relkd-infer --bins
  cuda_dir=release cpu_dir=release
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" gpu-pack
strip -o "$stage/bin/train" "$CARGO_TARGET_DIR/$cuda_dir/train"
for b in export infer; do
  strip -o "$stage/bin/$b" "$CARGO_TARGET_DIR/$cpu_dir/$b"
done
cp vendor/onnxruntime/libonnxruntime.so.* "$stage/bin/"
cp -r configs "$stage/"
pack=gpu-pack/relkd-gpu.tar.xz
tar -c -C "$stage" bin configs | xz -T0 -6 >"$pack.partial"
mv "$pack.partial" "$pack"
bytes=$(stat -c %s "$pack")
ls -l "$stage/bin"
echo "pack: $pack, $((bytes / 1024 / 1024)) MiB ($bytes bytes; limit 60 MiB)"
if ((bytes > limit_bytes)); then
  echo "gpu-check: the pack is over 60 MiB and cannot be carried to the GPU machine" >&2
  exit 1
fi
tar -tJf "$pack" bin/train >/dev/null

if ((dry)); then
  # The packed binaries start; then the device half runs on the CPU build of ci/test.sh.
  unpacked=$(mktemp -d)
  tar -xJf "$pack" -C "$unpacked"
  "$unpacked/bin/train" --version
  rm -rf "$unpacked"
  echo "--- the device half, dry: CPU binaries, tiny shapes"
  out=$(mktemp -d)
  DEADLINE_S=900 bash ci/gpu-device.sh --dry-run --bin "$CARGO_TARGET_DIR/debug" --out "$out"
  # Every step ran (each network's burn step; the quick and data-parallel runs; export, infer).
  failed=$(grep -L '^ok$' "$out"/results/*.status || true)
  if [[ -n "$failed" ]]; then
    echo "gpu-check --dry-run: these steps did not pass:" >&2
    for f in $failed; do echo "  $(basename "$f" .status): $(cat "$f")" >&2; done
    exit 1
  fi
  for step in burn-{espnet,enet,erfnet,unetpp,deeplabv3plus}-b2 quick data-parallel export infer; do
    [[ -f "$out/results/$step.status" ]] || { echo "gpu-check --dry-run: $step did not run" >&2; exit 1; }
  done
  grep -q '^| ENet | 2 |' "$out/gpu-report.md" || { echo "gpu-check --dry-run: no step row in the report" >&2; exit 1; }
  rm -rf "$out"
  echo "gpu-check --dry-run: passed"
fi
