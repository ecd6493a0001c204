#!/usr/bin/env bash
# Prints the directory cargo builds into for this repository, as cargo itself resolves it:
# CARGO_TARGET_DIR, `build.target-dir` of a .cargo/config.toml, or ./target. The scripts use it
# instead of a hard-coded target/, e.g. "$(scripts/cargo-target-dir.sh)/debug/quiesce".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo metadata --format-version 1 --no-deps --offline |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
