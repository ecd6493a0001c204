#!/usr/bin/env bash
# Builds the .deb and the .rpm from Cargo metadata into TARGET/packages/, TARGET being cargo's
# target directory (CARGO_TARGET_DIR when set, else ./target):
#   scripts/package.sh [--version X.Y.Z]
# --version overrides Cargo.toml's version in both packages (the upgrade test builds a bumped
# one this way). Installs cargo-deb and cargo-generate-rpm (pinned) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2 ;;
    *) echo "usage: scripts/package.sh [--version X.Y.Z]" >&2; exit 2 ;;
  esac
done
crate_version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
version=${version:-$crate_version}

CARGO_DEB_VERSION=3.8.0
CARGO_RPM_VERSION=0.21.1
need_install=()
cargo deb --version >/dev/null 2>&1 || need_install+=("cargo-deb@$CARGO_DEB_VERSION")
cargo generate-rpm --version >/dev/null 2>&1 || need_install+=("cargo-generate-rpm@$CARGO_RPM_VERSION")
if [ ${#need_install[@]} -gt 0 ]; then
  echo "== cargo install ${need_install[*]}"
  cargo install --locked --quiet "${need_install[@]}"
fi

echo "== cargo build --release"
cargo build --release --locked --bin quiesce
target=$(scripts/cargo-target-dir.sh)

echo "== man pages, completions, Debian changelog ($target/assets)"
rm -rf "$target/assets"
cargo run --quiet --locked --bin quiesce-gen-docs -- "$target/assets"
# Debian wants its own changelog format: one entry for this version, its lines taken from the
# newest section of CHANGELOG.md.
python3 - "$version" > "$target/assets/changelog" <<'PY'
import os, re, sys, time
version = sys.argv[1]
text = open("CHANGELOG.md").read()
sections = re.split(r"^## .*$", text, flags=re.M)
newest = sections[1] if len(sections) > 1 else ""
items, current = [], None
for line in newest.splitlines():
    if line.startswith("- "):
        current = line[2:].strip()
        items.append(current)
    elif line.startswith("  ") and items:
        items[-1] += " " + line.strip()
when = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
print(f"quiesce ({version}-1) unstable; urgency=medium\n")
for item in items or ["See /usr/share/doc/quiesce/CHANGELOG.md."]:
    words, line = item.split(), "  *"
    for w in words:
        if len(line) + 1 + len(w) > 78:
            print(line)
            line = "   "
        line += " " + w
    print(line)
stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
print(f"\n -- quiesce developers <quiesce@users.noreply.github.com>  {stamp}")
PY

# The assets in Cargo.toml name target/release/quiesce and target/assets/: paths relative to the
# repository that the packagers read as they are written. When cargo builds elsewhere
# (CARGO_TARGET_DIR), the binary and the generated assets are staged there for them.
if [ "$target" != "$PWD/target" ]; then
  rm -rf target/assets
  mkdir -p target/release
  cp "$target/release/quiesce" target/release/quiesce
  cp -r "$target/assets" target/assets
fi
mkdir -p "$target/packages"
echo "== cargo deb"
CARGO_TARGET_DIR=$PWD/target cargo deb --no-build --locked --deb-version "$version-1" --output "$target/packages/" >/dev/null
echo "== cargo generate-rpm"
CARGO_TARGET_DIR=$PWD/target cargo generate-rpm --set-metadata "version = \"$version\"" --output "$target/packages/" >/dev/null
ls -l "$target/packages/"*"$version"*
