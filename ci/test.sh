#!/usr/bin/env bash
# Every test of the workspace. Provisions ONNX Runtime (the runtime tests load it), ONNX Runtime
# Web and Debian's Chromium (the web page's browser test) first.
#
#   bash ci/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash ci/setup-ort.sh
bash ci/setup-ort-web.sh
if ! command -v chromium >/dev/null; then
  echo "installing Debian's chromium for the browser test"
  install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
  if ! { [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null && { install || { apt-get update -q >/dev/null && install; }; }; }; then
    echo "note: Chromium could not be installed here; the browser test will report SKIPPED" >&2
  fi
fi
cargo test --workspace --locked
