#!/usr/bin/env bash
# Make `cargo build --features cuda` work offline. burn's CUDA backend pulls in cubecl's LLVM
# through tracel-llvm-bundler, whose build script downloads an LLVM archive; here only Debian's
# packages can be reached, so Debian's LLVM 22 is installed and presented to the bundler as its
# own installation. Idempotent.
#
#   bash ci/setup-cuda-build.sh
#
# What it sets up (the bundler's expectations, read from its source, tracel-llvm-bundler 23.1.0-4):
#   - $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4 (default ~/.local/share/...) -> /usr/lib/llvm-22
#   - an empty .tracel-llvm-installed marker in that folder, so the bundler skips its download
#   - liblibz3.so in LLVM's lib folder -> the system libz3.so, because the bundler links -llibz3
set -euo pipefail

llvm=/usr/lib/llvm-22
bundle=tracel-llvm-23.1.0-4

if [[ ! -x "$llvm/bin/llvm-config" ]] || ! dpkg -s libpolly-22-dev libzstd-dev libz3-dev >/dev/null 2>&1; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq llvm-22-dev libpolly-22-dev libzstd-dev libz3-dev >/dev/null
fi

data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
mkdir -p "$data_home/tracel"
link="$data_home/tracel/$bundle"
if [[ "$(readlink "$link" 2>/dev/null)" != "$llvm" ]]; then
  rm -rf "$link"
  ln -s "$llvm" "$link"
fi

marker="$llvm/.tracel-llvm-installed"
[[ -f "$marker" ]] || touch "$marker"

z3=$(ls /usr/lib/*-linux-gnu/libz3.so 2>/dev/null | head -n 1)
[[ -n "$z3" ]] || { echo "setup-cuda-build: libz3.so not found after installing libz3-dev" >&2; exit 1; }
[[ -e "$llvm/lib/liblibz3.so" ]] || ln -s "$z3" "$llvm/lib/liblibz3.so"

echo "CUDA build: Debian LLVM 22 at $llvm stands in for $bundle ($link)"
