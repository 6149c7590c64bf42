#!/usr/bin/env bash
# The GPU check, in two halves (issue #17). Here (this script): build `train` with burn-cuda,
# `export` and `infer` in release, strip them and pack them with the configs and ONNX Runtime's
# CPU library into gpu-pack/relkd-gpu.tar.xz (git-ignored, at most 60 MiB: what the device
# tool carries). There (one command on the lent GPU machine, from the repository root):
#
#   bash ci/gpu-check.sh                 # here: build and pack (release; cold: tens of minutes)
#   device run, carry ["gpu-pack"]:  bash ci/gpu-device.sh --pack gpu-pack/relkd-gpu.tar.xz --out "$OUT"
#   bash ci/gpu-check.sh --dry-run       # CI: the same build in the cuda-check profile (with
#                                        # CubeCL's CPU runtime), its tests, the pack, its size,
#                                        # then the device half on flex, tiny shapes
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
# and `infer` are CPU builds. The dry run builds all three once in the `cuda-check` profile with
# burn-cuda and CubeCL's CPU runtime together (one build of burn for both), runs the tests of
# what it can check without a GPU (CUDA refused clearly; CubeCL's CPU runtime, the kernels the
# GPU run compiles to PTX, held to flex), and runs the device half with tiny shapes.
bash ci/setup-cuda-build.sh
bash ci/setup-ort.sh
if ((dry)); then
  # CubeCL keeps its compiled kernels and autotune choices in the workspace's target/environment.
  # Beside a target directory outside the clone (CI's), keep them there too, so that a warm CI
  # run does not tune every kernel again (a cold tuning takes minutes on this CPU: README).
  if [[ "$CARGO_TARGET_DIR" != "$root/target" && ! -e target/environment ]]; then
    mkdir -p target "$CARGO_TARGET_DIR/cubecl-environment"
    ln -s "$CARGO_TARGET_DIR/cubecl-environment" target/environment
  fi
  features=relkd-models/cuda,relkd-train/cuda,relkd-models/cubecl-cpu,relkd-train/cubecl-cpu
  echo "--- train with burn-cuda and CubeCL's CPU runtime, export and infer (cuda-check)"
  cargo build --locked --profile cuda-check -p relkd-train -p relkd-export -p relkd-infer \
    --features "$features" --bins
  # Without a GPU, `--device cuda` must be a clear error and `train --devices cuda:0,cuda:1`
  # (burn-train's multi-device step) must fail before writing anything.
  echo "--- the strict-device tests"
  cargo test --locked --profile cuda-check -p relkd-models -p relkd-train --features "$features" \
    --test device --test run_cli -- parse_device_names cuda_is_strict unavailable_devices
  # In processes of their own: a failed CUDA start poisons burn-cubecl's fusion registry, which
  # CubeCL's CPU runtime shares, for the rest of that process (README, "On a GPU").
  # Not every_network_runs_forward_and_trains_on_cubecl_cpu: 2 minutes on a warm tuning cache,
  # but half an hour or more on a cold one, which a cold CI run cannot afford (README).
  echo "--- CubeCL's CPU runtime: a device, and distillation held to flex"
  cargo test --locked --profile cuda-check -p relkd-models -p relkd-train --features "$features" \
    --test device -- cubecl_cpu_
  # The parity test runs on kernel choices a cold tuning made here and that pass it, not on a new
  # tuning: two of six new tunings here chose two kernels together under which CubeCL computes a
  # wrong gradient, a runtime bug (README, "The GPU code path on this CPU"; reproduction:
  # crates/models/examples/cubecl_col2im_gradient.rs). A fresh copy each run (its stale
  # write-ahead log removed with it), in an environment of its own: CUBECL_ENVIRONMENT names
  # the file.
  mkdir -p target/environment
  rm -f target/environment/relkd-parity.db*
  cp tests/fixtures/cubecl-parity-choices.db target/environment/relkd-parity.db
  CUBECL_ENVIRONMENT=relkd-parity cargo test --locked --profile cuda-check -p relkd-train \
    --features "$features" --test cubecl_parity -- cubecl_cpu_
  # The device half's binaries (flex): ci/test.sh's dev build.
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
  # On flex: with CubeCL's CPU runtime (`--bin "$CARGO_TARGET_DIR/cuda-check" --device
  # cubecl-cpu`) the paper-width step times need their kernels tuned first, minutes each on a
  # cold cache (README, "The GPU code path on this CPU"), more than this step's deadline.
  echo "--- the device half, dry: flex, tiny shapes"
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
