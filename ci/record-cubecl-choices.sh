#!/usr/bin/env bash
# Records the CubeCL kernel choices that CI's parity test runs on
# (tests/fixtures/cubecl-parity-choices.db; ci/gpu-check.sh copies it in): tunes the test's shapes
# in an empty CubeCL environment, and keeps the autotune entries only if the test passes on them.
# Run it after a change of the test's shapes or of Burn; it takes the cold tuning's minutes
# (about 6 on 2 cores). A new tuning can choose kernels under which CubeCL computes a wrong
# gradient (README, "The GPU code path on this CPU"); then the test fails, nothing is kept, and a
# second run tunes again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup-cuda-build.sh
features=relkd-models/cuda,relkd-train/cuda,relkd-models/cubecl-cpu,relkd-train/cubecl-cpu
name=relkd-parity-recording
mkdir -p target/environment
rm -f target/environment/"$name".db*
CUBECL_ENVIRONMENT=$name cargo test --locked --profile cuda-check -p relkd-train \
  --features "$features" --test cubecl_parity -- cubecl_cpu_trains_as_flex_does
python3 - "target/environment/$name.db" tests/fixtures/cubecl-parity-choices.db <<'EOF'
import os, sqlite3, sys
recorded, fixture = sys.argv[1:]
partial = fixture + ".partial"
if os.path.exists(partial):
    os.remove(partial)
db = sqlite3.connect(recorded)
db.execute("VACUUM INTO ?", (partial,))
db.close()
db = sqlite3.connect(partial)
db.execute("DELETE FROM entries WHERE namespace NOT LIKE 'autotune/%'")
db.commit()
db.execute("VACUUM")
kept = db.execute("SELECT count(*) FROM entries").fetchone()[0]
db.close()
os.replace(partial, fixture)
print(f"{fixture}: {kept} kernel choices")
EOF
rm -f target/environment/"$name".db*
