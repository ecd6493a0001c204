#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target in fuzz/fuzz_targets/ for SECONDS each (default 30):
#   scripts/fuzz.sh [SECONDS]
# Runs on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo fuzz pass its nightly-only
# sanitizer flags. The first run builds the targets with AddressSanitizer (a few minutes);
# later runs start within seconds. A crash stops the script with a non-zero exit and leaves the
# input in fuzz/artifacts/TARGET/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
case $secs in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2 ;;
esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

cd fuzz
for src in fuzz_targets/*.rs; do
  target=$(basename "$src" .rs)
  corpus=corpus/$target
  mkdir -p "$corpus"
  # Seeds: the shipped example and the YAML fixtures, for the config parser.
  if [ "$target" = config ]; then
    cp ../config.example.yaml "$corpus/seed-config.example.yaml"
    while IFS= read -r -d '' f; do
      rel=${f#../tests/fixtures/config/}
      cp "$f" "$corpus/seed-${rel//\//_}"
    done < <(find ../tests/fixtures/config -name '*.yaml' -print0)
  fi
  args=(-max_total_time="$secs")
  if [ -f "$target.dict" ]; then
    args+=(-dict="$target.dict")
  fi
  echo "== fuzzing $target for ${secs}s"
  cargo fuzz run "$target" -- "${args[@]}"
done
echo "== no crash"
