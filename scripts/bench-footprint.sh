#!/usr/bin/env bash
# bench-footprint.sh: what quiesce costs a VM that runs it all the time, and the 1,000-cycle
# soak: start to READY (notify socket), idle RSS/PSS/threads/fds, CPU used while idle, the
# freezer watchdog's and the hook helper's RSS, the release binary's size; then C snapshot
# cycles through the API, each required to succeed, every Nth with the image copied while
# frozen and checked (e2fsck -fn, needs_recovery clear, a marker written before the freeze),
# and RSS/fds sampled every 100 cycles (no growth allowed; the first 100 fill the history of
# reports the contract keeps). RSS is split into code and libraries (RssFile: the binary's and
# the shared libraries' pages, shared with the page cache) and private memory (RssAnon).
#
# One ext4 loop filesystem in a temporary directory; the daemon is restricted to it (auth none
# on loopback). Safety: nothing else is ever frozen; the EXIT trap thaws, unmounts, detaches.
# Needs root and a release build (cargo build --release).
#
# Usage: sudo scripts/bench-footprint.sh [--cycles C] [--check-every N] [--idle-seconds S]
#                                        [--ready-runs R] [--quiesce PATH] [--markdown FILE]
#                                        [--keep FILE]
# --keep FILE keeps the raw JSON lines (every reading) in FILE.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$REPO/scripts/bench"
# Where cargo put the release build (CARGO_TARGET_DIR honoured).
QUIESCE="${QUIESCE:-$("$REPO/scripts/cargo-target-dir.sh")/release/quiesce}"
CYCLES=1000
CHECK_EVERY=100
IDLE=60
READY_RUNS=20
# shellcheck disable=SC2034 # read by loopfs.sh
IMG_MIB=128
MARKDOWN=""
KEEP=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "bench-footprint: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }
while (($#)); do
    case $1 in
        --cycles) CYCLES=${2:?}; shift 2 ;;
        --check-every) CHECK_EVERY=${2:?}; shift 2 ;;
        --idle-seconds) IDLE=${2:?}; shift 2 ;;
        --ready-runs) READY_RUNS=${2:?}; shift 2 ;;
        --quiesce) QUIESCE=${2:?}; shift 2 ;;
        --markdown) MARKDOWN=$(realpath -m -- "${2:?}"); shift 2 ;;
        --keep) KEEP=$(realpath -m -- "${2:?}"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ $EUID -eq 0 ]] || die "must run as root: sudo $0"
[[ -x $QUIESCE ]] || die "no quiesce binary at $QUIESCE: run 'cargo build --release' first"
QUIESCE=$(realpath -- "$QUIESCE")

WORK=$(mktemp -d /tmp/quiesce-bench-footprint.XXXXXX)
source "$BENCH/loopfs.sh"
MNT="$WORK/mnt/a"
cleanup() {
    set +e
    trap - EXIT INT TERM
    cp "$WORK/daemon.log" /tmp/bench-footprint-daemon.log 2>/dev/null
    pkill -TERM -f "quiesce daemon --config $WORK/" 2>/dev/null
    sleep 0.5
    mountpoint -q "$MNT" && { fsfreeze -u "$MNT" 2>/dev/null; umount "$MNT" || umount -l "$MNT"; }
    local dev
    for dev in $(losetup -j "$WORK/a.img" -O NAME -n); do losetup -d "$dev"; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
make_fs a ext4 >/dev/null
refuse_unless_own_loop "$MNT"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/hooks"
printf '#!/bin/sh\n[ -e %s/slow ] && sleep 1\nexit 0\n' "$WORK" >"$WORK/hooks/app"
chmod 700 "$WORK/hooks" "$WORK/hooks/app"
cat >"$WORK/config.yaml" <<EOF
listen: 127.0.0.1:$port
state_dir: $WORK/state
auth: {mode: none}
freeze:
  timeout: 30s
  include_mounts: ["$MNT"]
hooks:
  - {name: app, pre: ["$WORK/hooks/app", pre], post: ["$WORK/hooks/app", post]}
EOF
ARGS=(--quiesce "$QUIESCE" --config "$WORK/config.yaml" --log "$WORK/daemon.log"
      --url "http://127.0.0.1:$port" --mounts "$MNT")
RAW="$WORK/raw.jsonl"

say "start to READY, $READY_RUNS runs"
python3 "$BENCH/footprint.py" ready "${ARGS[@]}" --runs "$READY_RUNS" | tee -a "$RAW" >&2
say "idle for $IDLE s, then the helpers' RSS"
touch "$WORK/slow"
python3 "$BENCH/footprint.py" idle "${ARGS[@]}" --idle-seconds "$IDLE" --hook | tee -a "$RAW" >&2
rm -f "$WORK/slow"
say "soak: $CYCLES cycles, an image check every $CHECK_EVERY"
python3 "$BENCH/footprint.py" soak "${ARGS[@]}" --cycles "$CYCLES" --check-every "$CHECK_EVERY" \
    --image "$WORK/a.img" | tee -a "$RAW" >&2

python3 - "$RAW" "$(stat -c %s "$QUIESCE")" >"$WORK/table.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
size = int(sys.argv[2])
by = lambda k: [r for r in rows if r["kind"] == k]
ready = [r["ready_ms"] for r in by("ready")]
idle, cpu = by("idle")[0], by("idle_cpu")[0]
wd = by("watchdog")[0]["rss_kib"] if by("watchdog") else None
hk = by("hook_helper")[0]["rss_kib"] if by("hook_helper") else None
samples = by("sample")
soak = by("soak")[0]
mib = lambda kib: f"{kib / 1024:.1f} MiB"
print("| measure | value | target |")
print("| --- | --- | --- |")
print(f"| start to READY=1 (median of {len(ready)}, min-max) | {statistics.median(ready):.0f} ms ({min(ready):.0f}-{max(ready):.0f}) | <= 100 ms |")
split = lambda r: f"code and libraries {mib(r['file_kib'])}, private {mib(r['anon_kib'])}"
print(f"| daemon RSS after start | {mib(idle['rss_kib'])} ({split(idle)}) | <= 6 MiB |")
print(f"| daemon threads, open fds after start | {idle['threads']}, {idle['fds']} | |")
print(f"| CPU used while idle for {cpu['seconds']} s | {cpu['cpu_ms']:.0f} ms | |")
print(f"| freezer watchdog RSS while frozen | {mib(wd) if wd else 'n/a'} | |")
print(f"| hook helper RSS while a hook runs | {mib(hk) if hk else 'n/a'} | |")
full = next((r for r in samples if r["cycle"] == 100), samples[0])
print(f"| daemon RSS after cycle 1 / {full['cycle']} / {samples[-1]['cycle']} | {mib(samples[0]['rss_kib'])} / {mib(full['rss_kib'])} / {mib(samples[-1]['rss_kib'])} | no growth |")
print(f"| of which private, after cycle 1 / {full['cycle']} / {samples[-1]['cycle']} | {mib(samples[0]['anon_kib'])} / {mib(full['anon_kib'])} / {mib(samples[-1]['anon_kib'])} | |")
print(f"| daemon fds after cycle 1 / after {samples[-1]['cycle']} | {samples[0]['fds']} / {samples[-1]['fds']} | no growth |")
print(f"| soak cycles that did not succeed | {soak['bad']} of {soak['cycles']} ({soak['seconds']} s) | 0 |")
print(f"| images copied while frozen and found consistent | {soak['images_consistent']} of {soak['images_checked']} | all |")
print(f"| release binary | {size / 1e6:.2f} MB | <= 8 MB |")
PY
cat "$WORK/table.md"
[[ -n $MARKDOWN ]] && cp "$WORK/table.md" "$MARKDOWN"
[[ -n $KEEP ]] && cp "$RAW" "$KEEP"
exit 0
