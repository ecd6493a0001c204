#!/usr/bin/env bash
# A whole freeze cycle, safely: two loop filesystems (ext4 and xfs) made here, some unsynced
# data written to them, `quiesce freeze` restricted to them copies both images while they are
# frozen (the "storage snapshot"), and the copies are checked (e2fsck -fn, xfs_repair -n after
# log replay, the data compared). Nothing but these loop mounts is ever frozen; everything is
# removed at the end. Needs root, e2fsprogs and xfsprogs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (loop devices, mount, FIFREEZE): sudo $0" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"
for t in mkfs.ext4 mkfs.xfs e2fsck xfs_repair losetup; do
  command -v $t >/dev/null || { echo "demo: $t is missing (apt-get install e2fsprogs xfsprogs)" >&2; exit 1; }
done

echo "== building"
cargo build --quiet
Q=$PWD/target/debug/quiesce
W=$(mktemp -d /tmp/quiesce-demo.XXXXXX)
loops=()
cleanup() {
  for m in "$W"/check "$W"/ext4 "$W"/xfs; do
    if mountpoint -q "$m" 2>/dev/null; then fsfreeze -u "$m" 2>/dev/null || true; umount "$m" || umount -l "$m"; fi
  done
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

echo "== two loop filesystems in $W"
for fs in ext4 xfs; do
  truncate -s 300M "$W/$fs.img"
  dev=$(losetup -f --show "$W/$fs.img"); loops+=("$dev")
  if [ $fs = ext4 ]; then mkfs.ext4 -q -F "$dev"; else mkfs.xfs -q -f "$dev"; fi
  mkdir "$W/$fs"; mount "$dev" "$W/$fs"
  # Unsynced data: only the freeze makes it reach the image.
  head -c 32M /dev/urandom > "$W/$fs/data"
  sha256sum "$W/$fs/data" | cut -d' ' -f1 > "$W/$fs.sha"
done
cat > "$W/config.yaml" <<YAML
state_dir: $W/state
auth: {mode: none}
freeze:
  timeout: 30s
  include_mounts: [$W/ext4, $W/xfs]
YAML
echo "== what would be frozen"
"$Q" check-config --config "$W/config.yaml" | sed -n '/^mounts/,/^skipped/p' | grep -v '^skipped'

echo "== freeze, copy both images as the storage snapshot, thaw"
"$Q" freeze --config "$W/config.yaml" \
  --exec "cp --sparse=always $W/ext4.img $W/ext4.snap && cp --sparse=always $W/xfs.img $W/xfs.snap" \
  > "$W/report.jsonl"
python3 - "$W/report.jsonl" <<'PY'
import json, sys
done = [json.loads(l) for l in open(sys.argv[1])][-1]
print(f"thaw_reason={done['thaw_reason']}  freeze window={done['frozen_ms']:.1f} ms")
for m in done["mounts"]:
    print(f"  {m['path']:<40} {m['fstype']:<5} {m['outcome']:<7} flush {m['flush_ms']:.1f} ms  FIFREEZE {m['freeze_ms']:.1f} ms")
PY

echo "== checking the snapshots"
e2fsck -fn "$W/ext4.snap" >/dev/null 2>&1 && echo "  ext4 copy: e2fsck -fn clean"
dev=$(losetup -f --show "$W/xfs.snap"); loops+=("$dev")
mkdir -p "$W/check"; mount -o nouuid "$dev" "$W/check"; umount "$W/check"   # log replay
xfs_repair -n "$dev" >/dev/null 2>&1 && echo "  xfs copy: xfs_repair -n clean"
mount -o ro,nouuid "$dev" "$W/check"
[ "$(sha256sum "$W/check/data" | cut -d' ' -f1)" = "$(cat "$W/xfs.sha")" ] && echo "  xfs copy: data intact"
umount "$W/check"
dev=$(losetup -f --show -r "$W/ext4.snap"); loops+=("$dev")
mount -o ro,noload "$dev" "$W/check"
[ "$(sha256sum "$W/check/data" | cut -d' ' -f1)" = "$(cat "$W/ext4.sha")" ] && echo "  ext4 copy: data intact"
umount "$W/check"
echo "== done: both snapshots are consistent"
