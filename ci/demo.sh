#!/usr/bin/env bash
# The main job on a fresh machine: the three commands of the README, in order, on the phantom.
#   1. train a teacher, a baseline and a distilled student (configs/quick.yaml);
#   2. export the distilled student (and the teacher) to ONNX, verified against Burn;
#   3. segment an unseen-site volume with ONNX Runtime, and time the student against the teacher.
#
#   bash ci/demo.sh            # everything under runs/ and demo/
#
# On a fresh 2-core machine it takes about 20 minutes, most of it compiling (measured in the README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
step() { printf '\n=== [%s] %s\n' "$(date -u -d @$((SECONDS - started)) +%M:%S)" "$*"; }

step "ONNX Runtime (PyPI wheel, once)"
bash ci/setup-ort.sh
step "compiling train, export and infer (release; several minutes on a cold machine)"
cargo build --release --locked --bin train --bin export --bin infer --example paper_models
bin=${CARGO_TARGET_DIR:-target}/release
mkdir -p demo

step "training: teacher, baseline and distilled student (configs/quick.yaml)"
"$bin/train" --teacher unetpp --student enet --config configs/quick.yaml
run=runs/$(cat runs/latest)
step "export to ONNX, verified against Burn"
# The teacher first: `infer` takes the most recent export, the student.
"$bin/export" --model teacher --out demo/unetpp.onnx --force
"$bin/export" --out demo/enet.onnx --force

step "segmenting an unseen-site volume with ONNX Runtime"
# A case of the target site that no student saw, copied as a user would hand it over.
case_file=$(cut -d, -f3,4 "$run/scores.csv" | sed -n 2p | tr , /)
data_root=$(sed -n 's/^Data: phantom (\([^)]*\)).*/\1/p' "$run/report.md")
cp "$data_root/$case_file.nii.gz" demo/case.nii.gz
cp "$data_root/${case_file}_segmentation.nii.gz" demo/case_segmentation.nii.gz
"$bin/infer" --volume demo/case.nii.gz --provider cuda || echo "(no CUDA here: the CPU provider follows)"
"$bin/infer" --volume demo/case.nii.gz --provider cpu --force \
  --label demo/case_segmentation.nii.gz --overlay demo/overlays
step "benchmark: the trained student against its teacher (the quick config's reduced widths, 64×64)"
"$bin/infer" bench --models demo/unetpp.onnx demo/enet.onnx --size 64 --batch 1,16 --runs 20 \
  --volume demo/case.nii.gz --out demo/bench --force
step "benchmark at the paper's scale: the five networks at full width, 384×384 (random weights), and the int8 students"
# Timing and storage do not depend on the weights' values; the files are verified against Burn.
"$bin/examples/paper_models" demo/paper
"$bin/infer" bench --models demo/paper/unetpp.onnx demo/paper/deeplabv3plus.onnx demo/paper/enet.onnx \
  demo/paper/espnet.onnx demo/paper/erfnet.onnx demo/paper/enet-int8.onnx demo/paper/espnet-int8.onnx \
  demo/paper/erfnet-int8.onnx --size 384 --batch 1 --runs 5 --volume-runs 1 --out demo/paper-bench --force

step "done in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
echo
sed -n '/## Dice/,/## Training/p' "$run/report.md" | sed '$d'
echo "(One run, one seed: an anecdote. The comparison of w/ against w/o over three seeds, paired on the"
echo " same test cases, is the grid 'train experiment configs/experiments/quick-seeds.yaml';"
echo " its figures are in the README.)"
echo
echo "## Efficiency of the demo's own models (demo/bench.md; reduced widths, 64×64)"
echo
cat demo/bench.md
echo
echo "## The paper's efficiency table, measured here (demo/paper-bench.md; paper widths, 384×384, random weights;"
echo "   the *-int8 rows are the students quantised to int8)"
echo
cat demo/paper-bench.md
echo
echo "wrote: $run/ (report.md, metrics.csv, scores.csv, loss_curves.png, overlays/), demo/enet.onnx, demo/unetpp.onnx,"
echo "       demo/case_mask.nii.gz, demo/overlays/, demo/bench.{md,csv}, demo/paper/*.onnx, demo/paper-bench.{md,csv}"
