#!/usr/bin/env bash
# Provision onnxruntime-web (the WebAssembly build of ONNX Runtime) for `export --web`, from the
# npm registry, once. Idempotent. Only the three files the page loads are kept:
#   ort.wasm.min.js               the JavaScript API (global `ort`, WebAssembly backend only)
#   ort-wasm-simd-threaded.mjs    its loader
#   ort-wasm-simd-threaded.wasm   the runtime
#
#   bash ci/setup-ort-web.sh     # -> vendor/onnxruntime-web/ (found by export; or RELKD_ORT_WEB)
set -euo pipefail

version=1.31.1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/vendor/onnxruntime-web"
files=(ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm)
if [[ -f "$dest/VERSION" && "$(cat "$dest/VERSION")" == "$version" ]]; then
  echo "onnxruntime-web $version already in $dest"
  exit 0
fi
command -v npm >/dev/null || { echo "setup-ort-web: npm is needed to fetch onnxruntime-web" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "onnxruntime-web@$version" >/dev/null && tar xzf "onnxruntime-web-$version.tgz")
rm -rf "$dest.new"
mkdir -p "$dest.new"
for f in "${files[@]}"; do cp "$tmp/package/dist/$f" "$dest.new/"; done
echo "$version" > "$dest.new/VERSION"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "onnxruntime-web $version in $dest"
