#!/usr/bin/env bash
# A whole snapshot cycle, safely: two loop filesystems (ext4 and xfs) made here with unsynced
# data on them, the daemon restricted to them with a sample application hook and HMAC auth,
# and `quiesce snapshot --exec` copying both images while they are frozen (the "storage
# snapshot"). The copies are then checked (e2fsck -fn, xfs_repair -n after log replay, the
# data compared). Nothing but these loop mounts is ever frozen; everything is removed at the
# end. Needs root, e2fsprogs and xfsprogs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (loop devices, mount, FIFREEZE): sudo $0" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"
for t in mkfs.ext4 mkfs.xfs e2fsck xfs_repair losetup python3; do
  command -v $t >/dev/null || { echo "demo: $t is missing (apt-get install e2fsprogs xfsprogs)" >&2; exit 1; }
done

echo "== building"
cargo build --quiet
# Where cargo put it: CARGO_TARGET_DIR (or build.target-dir) when set, else ./target.
Q=$(scripts/cargo-target-dir.sh)/debug/quiesce
W=$(mktemp -d /tmp/quiesce-demo.XXXXXX)
loops=()
daemon=
cleanup() {
  [ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
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

echo "== a sample application hook, an HMAC key, the config"
mkdir -m 0755 "$W/hooks"
cat > "$W/hooks/app.sh" <<HOOK
#!/bin/sh
# A real hook would put a database in backup mode (pre) and take it out again (post).
echo "\$(date +%T.%N) \$QUIESCE_HOOK \$QUIESCE_PHASE thaw_reason=\${QUIESCE_THAW_REASON:-n/a}" >> $W/hook.log
HOOK
chmod 0755 "$W/hooks/app.sh"
head -c 48 /dev/urandom | base64 > "$W/host.key"; chmod 0600 "$W/host.key"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/config.yaml" <<YAML
listen: 127.0.0.1:$port
state_dir: $W/state
auth: {mode: hmac, key_file: $W/host.key}
freeze:
  timeout: 30s
  include_mounts: [$W/ext4, $W/xfs]
hooks:
  - name: app
    pre: [$W/hooks/app.sh]
    post: [$W/hooks/app.sh]
    timeout: 10s
YAML
"$Q" check-config --config "$W/config.yaml" | sed -n '/^hooks/,/^skipped/p' | grep -v '^skipped'

echo "== the daemon"
"$Q" daemon --config "$W/config.yaml" 2> "$W/daemon.log" &
daemon=$!
for _ in $(seq 50); do grep -q "listening on" "$W/daemon.log" && break; sleep 0.1; done
grep -q "listening on" "$W/daemon.log" || { cat "$W/daemon.log"; exit 1; }

echo "== quiesce snapshot: hooks, freeze, copy both images as the storage snapshot, thaw"
"$Q" snapshot --agent "http://127.0.0.1:$port" --key-file "$W/host.key" \
  --exec "cp --sparse=always $W/ext4.img $W/ext4.snap && cp --sparse=always $W/xfs.img $W/xfs.snap" \
  > "$W/report.json"
python3 - "$W/report.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["snapshots"]:
    print(f"state={s['state']}  consistency={s['consistency']}  thaw_reason={s['thaw_reason']}  frozen {s['frozen_ms']} ms")
    for m in s["mounts"]:
        print(f"  mount {m['path']:<40} {m['fstype']:<5} error={m['error']}")
    for h in s["hooks"]:
        print(f"  hook  {h['name']} {h['phase']:<4} exit={h['exit_code']} {h['duration_ms']} ms")
PY
echo "-- the hook's own log:"; sed 's/^/   /' "$W/hook.log"
echo "== quiesce status: the agent as an operator sees it (--json for scripts)"
"$Q" status --agent "http://127.0.0.1:$port" --key-file "$W/host.key" | sed 's/^/   /'

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
echo "== done: an application-consistent snapshot, both copies consistent"
