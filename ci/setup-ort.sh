#!/usr/bin/env bash
# Provision ONNX Runtime's shared library without any download but PyPI's: the library ships
# inside the onnxruntime wheel. Idempotent: does nothing when the right wheel is already unpacked.
#
#   bash ci/setup-ort.sh         # CPU execution provider   (onnxruntime==1.31.1)
#   bash ci/setup-ort.sh --gpu   # adds the CUDA provider    (onnxruntime-gpu==1.31.1, CUDA 13)
#
# Result: vendor/onnxruntime/libonnxruntime.so.1.31.1 (+ provider libraries with --gpu), found at
# run time after ORT_DYLIB_PATH and the executable's own folder.
set -euo pipefail

version=1.31.1
package=onnxruntime
case "${1:-}" in
  --gpu) package=onnxruntime-gpu ;;
  "") ;;
  *) echo "usage: $0 [--gpu]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/vendor/onnxruntime"
stamp="$dest/WHEEL"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$package==$version" && -f "$dest/libonnxruntime.so.$version" ]]; then
  echo "ONNX Runtime: $package==$version already in $dest"
  exit 0
fi

python=$(command -v python3 || command -v python) || { echo "setup-ort: python3 with pip is needed to fetch the wheel" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

arch=$(uname -m)
# Pinned tags so the wheel does not depend on the host's own Python version.
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux_2_17_$arch" \
  -d "$tmp" "$package==$version"

rm -rf "$dest.new"
mkdir -p "$dest.new"
"$python" - "$tmp" "$dest.new" <<'PY'
import glob, os, sys, zipfile
wheel_dir, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime")]
    for name in libs:
        with z.open(name) as src, open(os.path.join(out, os.path.basename(name)), "wb") as dst:
            dst.write(src.read())
    print("extracted:", ", ".join(os.path.basename(n) for n in libs))
PY
ln -sf "libonnxruntime.so.$version" "$dest.new/libonnxruntime.so"
echo "$package==$version" > "$dest.new/WHEEL"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "ONNX Runtime: $package==$version in $dest"
