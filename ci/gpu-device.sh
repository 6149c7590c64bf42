#!/usr/bin/env bash
# The device half of ci/gpu-check.sh: runs on the lent GPU machine (no Rust, no network; Python
# with PyTorch), from the repository root, with the pack that the local half made. Everything it
# writes goes under OUT; the report is OUT/gpu-report.md.
#
#   bash ci/gpu-device.sh --pack gpu-pack/relkd-gpu.tar.xz --out "$OUT"
#   bash ci/gpu-device.sh --dry-run --bin DIR [--device D] --out DIR  # here, tiny shapes (CI)
#
# A dry run computes on --device D of this machine: cpu (flex), or cubecl-cpu with a `train`
# built with that feature, which runs the CubeCL kernels the GPU run will (issue #30).
#
# Order = priority, under one deadline (DEADLINE_S, default 450 s): the per-network step times
# (burn-cuda, then PyTorch), the quick run on --device cuda, the data-parallel path, export and
# infer of the CUDA-trained student. A command that runs out of time or fails is recorded as
# such in the report, and the rest still run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry=0 pack="" bin="" out="" dry_device=cpu
while (($#)); do
  case "$1" in
    --dry-run) dry=1 ;;
    --pack) pack=$2; shift ;;
    --bin) bin=$2; shift ;;
    --out) out=$2; shift ;;
    --device) dry_device=$2; shift ;;
    *) echo "usage: $0 (--pack FILE | --dry-run --bin DIR [--device D]) --out DIR" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$out" ]] || { echo "gpu-device: --out DIR is required" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
started=$(date +%s)
deadline=$((started + ${DEADLINE_S:-450}))
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ((dry)); then
  [[ -x "$bin/train" ]] || { echo "gpu-device: no train binary in $bin" >&2; exit 2; }
  device=$dry_device devices=$dry_device,$dry_device size=32 batches="2" runs=2 warmup=1 config=tests/fixtures/tiny-run.yaml
else
  [[ -f "$pack" ]] || { echo "gpu-device: no pack at $pack (run ci/gpu-check.sh here first)" >&2; exit 2; }
  tar -xJf "$pack" -C "$work"
  bin="$work/bin"
  device=cuda devices=cuda:0 size=384 batches="16 8 4 2" runs=10 warmup=3 config=configs/quick.yaml
fi
bin=$(cd "$bin" && pwd)
export RELKD_CACHE="$work/cache"
# The Python that has PyTorch (the GPU machine's python3; elsewhere e.g. a virtual environment).
torch_python=${RELKD_TORCH_PYTHON:-python3}
log="$out/log.txt"
: >"$log"
{
  echo "dry_run=$dry"
  echo "device=$device"
  echo "started=$(date -u +%FT%TZ)"
  "$bin/train" --version
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; fi
  "$torch_python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null ||
    echo "torch: not importable by $torch_python"
} >"$out/machine.txt" 2>&1

# run NAME CAP_S CMD…: runs CMD with at most CAP_S seconds (less when the deadline is nearer),
# sampling the GPU's used memory meanwhile; writes OUT/results/NAME.{out,status,seconds,peak_mib}.
mkdir -p "$out/results"
run() {
  local name=$1 cap=$2
  shift 2
  local left=$((deadline - $(date +%s)))
  local limit=$((cap < left ? cap : left))
  local r="$out/results/$name"
  if ((limit < 10)); then
    echo "skipped: out of time" >"$r.status"
    return 1
  fi
  local sampler=""
  if command -v nvidia-smi >/dev/null; then
    local before
    before=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$r.mem" 2>/dev/null &
    sampler=$!
  fi
  echo "== $name (limit ${limit}s): $*" >>"$log"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$r.out" 2>>"$log"
  rc=$?
  t1=$(date +%s.%N)
  if [[ -n "$sampler" ]]; then
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    sort -n "$r.mem" | tail -1 | awk -v b="$before" '{print $1 - b}' >"$r.peak_mib"
  fi
  python3 -c "print(f'{$t1 - $t0:.1f}')" >"$r.seconds"
  case $rc in
    0) echo ok >"$r.status" ;;
    124) echo "timed out after ${limit}s" >"$r.status" ;;
    *) echo "failed (exit $rc)" >"$r.status" ;;
  esac
  tail -3 "$r.out" >>"$log"
  return $rc
}

torch_ok=0
"$torch_python" -c 'import torch' 2>/dev/null && torch_ok=1
if ((torch_ok)); then
  run torch-params 60 "$torch_python" ci/torch_reference.py --check-params
fi

# Step times, the largest batch that fits first. burn-cuda tunes its kernels in the warm-up.
for arch in espnet enet erfnet unetpp deeplabv3plus; do
  for b in $batches; do
    run "burn-$arch-b$b" 90 "$bin/train" step-time --arch "$arch" --batch "$b" --size "$size" \
      --device "$device" --warmup "$warmup" --runs "$runs" --json && break
  done
done
if ((torch_ok)); then
  torch_device=$([[ $device == cuda* ]] && echo cuda || echo cpu)
  for arch in espnet enet erfnet unetpp deeplabv3plus; do
    for b in $batches; do
      run "torch-$arch-b$b" 60 "$torch_python" ci/torch_reference.py --arch "$arch" --batch "$b" --size "$size" \
        --device "$torch_device" --warmup "$warmup" --runs "$runs" && break
    done
  done
fi

# The quick run (teacher, baseline, distilled student), then the data-parallel path for the
# students with the teacher the quick run cached.
run quick 240 "$bin/train" --teacher unetpp --student enet --config "$config" --device "$device" \
  --out "$work/quick"
cp "$work/quick/report.md" "$out/quick-report.md" 2>/dev/null
cp "$work/quick/metrics.csv" "$out/quick-metrics.csv" 2>/dev/null
run data-parallel 120 "$bin/train" --teacher unetpp --student enet --config "$config" --devices "$devices" \
  --out "$work/data-parallel"
cp "$work/data-parallel/report.md" "$out/data-parallel-report.md" 2>/dev/null

# The CUDA-trained student through export and infer (CPU provider: onnxruntime-gpu is not
# carried). Needs libonnxruntime (in the pack, or ci/setup-ort.sh's); skipped without it.
ort=$(ls "$bin"/libonnxruntime.so.* vendor/onnxruntime/libonnxruntime.so.* 2>/dev/null | head -1)
volume=$(find "$RELKD_CACHE" -name 'Case*_segmentation.nii.gz' 2>/dev/null | sort | tail -1)
if [[ -n "$ort" && -n "$volume" && -f "$work/quick/student.bpk" ]]; then
  run export 60 "$bin/export" --checkpoint "$work/quick/student.bpk" --out "$work/student.onnx"
  export ORT_DYLIB_PATH="$ort"
  run infer 60 "$bin/infer" --model "$work/student.onnx" --volume "${volume%_segmentation.nii.gz}.nii.gz" \
    --label "$volume" --provider cpu --out "$work/mask.nii.gz"
fi

echo "finished=$(date -u +%FT%TZ) after $(($(date +%s) - started)) s" >>"$out/machine.txt"
# The quick run's wall time on the 2-core CPU, from the README (release build).
cpu_quick_seconds=${CPU_QUICK_SECONDS:-}
python3 ci/gpu_report.py "$out" ${cpu_quick_seconds:+--cpu-quick-seconds "$cpu_quick_seconds"}
