#!/usr/bin/env bash
# The main job on a fresh machine: build, write the synthetic multi-site phantom once, and
# summarise it per site. Later stages (train → export → infer) extend this script.
#
#   bash ci/demo.sh            # data in data/phantom
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash ci/setup-ort.sh
cargo build --release --locked --bin train
train=${CARGO_TARGET_DIR:-target}/release/train

data=data/phantom
if [[ ! -f "$data/phantom.txt" ]]; then
  "$train" phantom --out "$data"
else
  echo "phantom already in $data ($(cat "$data/phantom.txt" | tr -d '\n'))"
fi
"$train" data --root "$data"
