#!/usr/bin/env bash
# Every test of the workspace. Provisions ONNX Runtime first (the runtime tests load it).
#
#   bash ci/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash ci/setup-ort.sh
cargo test --workspace --locked
