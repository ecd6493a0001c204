#!/usr/bin/env bash
# bench-api.sh: the daemon through its HTTP API: freeze+thaw cycle, thaw latency, footprint.
#
# Creates two loop-mounted filesystems (ext4 + xfs by default) in a temporary directory under
# /tmp, starts `quiesce daemon` restricted to them (freeze.include_mounts; state_dir on a tmpfs
# in the temporary directory; auth hmac on 127.0.0.1), and measures:
#   1. a freeze+thaw cycle of the two idle mounts through the API, against util-linux fsfreeze:
#      (a) the agent's frozen_ms when a small client POSTs a snapshot, long-polls wait=frozen
#          and POSTs the thaw at once; (b) that client's own times (POST -> thaw's 200, frozen
#          answer -> thaw's 200); (c) `fsfreeze -f A; fsfreeze -f B; fsfreeze -u B;
#          fsfreeze -u A` in a bash script (whole, and the window from the first -f to the last
#          -u); (d) the reference client `quiesce snapshot --agent URL --exec true`;
#   2. the thaw latency: POST .../thaw written -> 200 read, next to its parts (raw FITHAW of
#      both mounts, the HTTP floor of GET /v1/health);
#   3. the RSS of the daemon (after start, after the runs), of the watchdog while frozen
#      (VmRSS, VmLck) and of the hook helper while a pre hook runs (second daemon, one hook);
#   4. the release binary's size and the idle daemon's thread count;
#   5. the idle daemon's CPU time (utime+stime ticks; perf task-clock when perf works) and
#      wakeups (context switches) over idle windows: right after start, then right after the
#      runs and in the following window (the first after any request includes the exit of
#      tokio's idle blocking-pool thread, 10 s after its last use).
# Every timed freeze starts after 0.2 s of idleness (docs/BENCHMARKS.md: RCU).
# Prints a table on stdout; with --markdown FILE also writes it as a markdown section.
#
# Each round also runs the fsfreeze script with /sys/kernel/rcu_expedited at 1 around it (c'),
# the fair comparison with quiesce, which expedites RCU during its FIFREEZE calls.
#
# Safety: it freezes nothing but the loop mounts it created (never /, /work or /tmp); of the
# sysctls it touches only /sys/kernel/rcu_expedited (global: it refuses to start unless it reads
# 0, and puts it back to 0 after each use and on exit); its EXIT trap stops the daemon it started (by pid), thaws (fsfreeze -u), unmounts and
# detaches only its own loop devices and removes its temporary files. Needs root. Installs
# nothing but xfsprogs when mkfs.xfs is missing (apt-get install -y; --no-install to skip).
#
# Usage: sudo scripts/bench-api.sh [--markdown FILE] [--results DIR] [--runs N] [--idle-seconds S]
#                                  [--second-fs xfs|ext4] [--quiesce PATH] [--no-install]
# --results DIR keeps the raw results (JSON lines, daemon logs) in DIR.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$REPO/scripts/bench"
# Where cargo put the release build (CARGO_TARGET_DIR honoured).
QUIESCE="${QUIESCE:-$("$REPO/scripts/cargo-target-dir.sh")/release/quiesce}"
RUNS=20            # runs of each timed measurement
IDLE=10            # seconds of each idle window (CPU, wakeups)
PROBES=3           # snapshots during which the watchdog is read
GAP=0.2            # idle seconds before every timed freeze (see docs/BENCHMARKS.md: RCU)
IMG_MIB=1024       # sparse image size of each filesystem (xfs needs >= 300 MiB)
SECOND_FS=xfs
MARKDOWN=""
KEEP=""
INSTALL=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "bench-api: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

while (($#)); do
    case $1 in
        --markdown) MARKDOWN=${2:?--markdown needs a file}; shift 2 ;;
        --results) KEEP=${2:?--results needs a directory}; shift 2 ;;
        --runs) RUNS=${2:?}; shift 2 ;;
        --idle-seconds) IDLE=${2:?}; shift 2 ;;
        --second-fs) SECOND_FS=${2:?}; shift 2 ;;
        --quiesce) QUIESCE=${2:?}; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ && $IDLE =~ ^[1-9][0-9]*$ ]] \
    || die "--runs and --idle-seconds take positive integers"
[[ $SECOND_FS == xfs || $SECOND_FS == ext4 ]] || die "--second-fs is xfs or ext4"
if [[ -n $MARKDOWN ]]; then
    MARKDOWN=$(realpath -m -- "$MARKDOWN")
fi
if [[ -n $KEEP ]]; then
    KEEP=$(realpath -m -- "$KEEP")
fi

[[ $EUID -eq 0 ]] || die "must run as root (it creates loop devices and freezes them): sudo $0"
[[ $(cat /sys/kernel/rcu_expedited) == 0 ]] || die "/sys/kernel/rcu_expedited is 1: someone set it; the comparison needs it at 0"
[[ -x $QUIESCE ]] || die "no quiesce binary at $QUIESCE: run 'cargo build --release' first (or --quiesce PATH)"
QUIESCE=$(realpath -- "$QUIESCE")
for c in losetup mkfs.ext4 mount umount findmnt fsfreeze python3 sync; do
    command -v "$c" >/dev/null || die "missing command: $c"
done

apt_install() {
    ((INSTALL)) || return 1
    command -v apt-get >/dev/null || return 1
    say "installing $1 (apt-get install -y $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >/dev/null 2>&1 && return 0
    DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >/dev/null 2>&1
}
if [[ $SECOND_FS == xfs ]] && ! command -v mkfs.xfs >/dev/null; then
    apt_install xfsprogs || { say "mkfs.xfs unavailable: using ext4 for both mounts"; SECOND_FS=ext4; }
fi

# --- workspace and cleanup ------------------------------------------------------------------
WORK=$(mktemp -d /tmp/quiesce-bench-api.XXXXXX)
RES="$WORK/results"
DPID=""               # the daemon we started, while it runs
MOUNTS=()             # our loop mount points, in mount order (the only ones ever frozen)
TMPFS=()              # our tmpfs mounts (the daemons' state_dir, like /run): never frozen
IMAGES=()             # our image files

# stop_daemon: SIGTERM to the daemon we started (it thaws and stops), SIGKILL after 10 s.
stop_daemon() {
    [[ -n $DPID ]] || return 0
    local i t0=${EPOCHREALTIME/./}
    kill -TERM "$DPID" 2>/dev/null || true
    for ((i = 0; i < 1000; i++)); do
        kill -0 "$DPID" 2>/dev/null || break
        sleep 0.01
    done
    [[ -d ${RES:-} ]] && echo "$(((${EPOCHREALTIME/./} - t0) / 1000))" >>"$RES/stop_ms.txt"
    if kill -0 "$DPID" 2>/dev/null; then
        say "the daemon did not stop within 10 s: SIGKILL"
        kill -KILL "$DPID" 2>/dev/null || true
    fi
    wait "$DPID" 2>/dev/null || true
    DPID=""
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # 1. the daemon (its watchdog thaws by itself when the daemon is gone)
    stop_daemon
    echo 0 >/sys/kernel/rcu_expedited
    # 2. thaw (ours only; harmless when not frozen)
    local m
    for m in "${MOUNTS[@]}"; do mountpoint -q "$m" && fsfreeze -u "$m" 2>/dev/null; done
    # 3. unmount
    for m in "${TMPFS[@]}"; do mountpoint -q "$m" && umount "$m"; done
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        mountpoint -q "$m" || continue
        umount "$m" 2>/dev/null || { sleep 1; fsfreeze -u "$m" 2>/dev/null; umount "$m"; } ||
            umount -l "$m"
    done
    # 4. detach exactly the loop devices backed by our images
    local img dev
    for img in "${IMAGES[@]}"; do
        for dev in $(losetup --list --noheadings --output NAME -j "$img" 2>/dev/null); do
            losetup -d "$dev"
        done
    done
    # 5. temporary files
    rm -rf --one-file-system -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$RES" "$WORK/state" "$WORK/state-hook" "$WORK/mnt" "$WORK/cfg" "$WORK/cfg-hook" "$WORK/hooks" "$WORK/bin"
chmod 0755 "$WORK/hooks" "$WORK/bin"
# state_dir on a small tmpfs, as /run/quiesce is in production (the watchdog writes and removes a
# record there around every FIFREEZE/FITHAW; on the disk-backed /tmp that would cost more).
for d in "$WORK/state" "$WORK/state-hook"; do
    TMPFS+=("$d")
    mount -t tmpfs -o size=1m,mode=0700 quiesce-bench-state "$d"
done
# A private copy of the binary: a concurrent `cargo build` cannot replace it during the runs.
BIN_SIZE=$(stat -c %s "$QUIESCE")
cp -- "$QUIESCE" "$WORK/bin/quiesce"
QUIESCE_ORIG=$QUIESCE
QUIESCE="$WORK/bin/quiesce"

# shellcheck source=bench/loopfs.sh
source "$BENCH/loopfs.sh"

say "creating the filesystems in $WORK"
A="$WORK/mnt/a"; B="$WORK/mnt/b"
IMAGES=("$WORK/a.img" "$WORK/b.img")
MOUNTS=("$A" "$B")
DEV_A=$(make_fs a ext4)
DEV_B=$(make_fs b "$SECOND_FS")
refuse_unless_own_loop "$A" "$B"
sync -f "$A"; sync -f "$B"

# The hook of the second daemon (part 3: the hook helper's RSS): sleeps 1 s.
printf '#!/bin/sh\nsleep 1\n' >"$WORK/hooks/pre.sh"
chmod 0755 "$WORK/hooks/pre.sh"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# HMAC on TCP, as in production (auth none is refused on TCP); the Python clients sign with
# $QUIESCE_KEY_FILE.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/host.key"
chmod 600 "$WORK/host.key"
export QUIESCE_KEY_FILE="$WORK/host.key"

# write_config DIR STATE_DIR PORT [hook]: the daemon's config, restricted to our two mounts.
write_config() {
    local dir=$1 state=$2 port=$3 hooks="[]"
    if [[ ${4:-} == hook ]]; then
        hooks="
  - name: bench
    pre: [$WORK/hooks/pre.sh]
    timeout: 10s"
    fi
    cat >"$dir/config.yaml" <<EOF
# generated by scripts/bench-api.sh
listen: 127.0.0.1:$port
state_dir: $state
auth: {mode: hmac, key_file: "$WORK/host.key"}
freeze:
  timeout: 30s
  include_mounts: [$A, $B]
hooks: $hooks
EOF
}

# start_daemon CFG_DIR STATE_DIR [hook]: starts the daemon on a free port; sets DPID and URL.
start_daemon() {
    local dir=$1 state=$2 kind=${3:-} try port i log
    for try in 1 2 3; do
        port=$(free_port)
        write_config "$dir" "$state" "$port" "$kind"
        log="$RES/daemon${kind:+-$kind}.stderr"
        : >"$log"
        "$QUIESCE" daemon --config "$dir/config.yaml" 2>>"$log" &
        DPID=$!
        for ((i = 0; i < 100; i++)); do
            grep -q 'listening on' "$log" && break
            kill -0 "$DPID" 2>/dev/null || break
            sleep 0.05
        done
        if grep -q 'listening on' "$log"; then
            URL="http://127.0.0.1:$port"
            return 0
        fi
        say "the daemon did not start (try $try):"; cat "$log" >&2
        stop_daemon
    done
    die "cannot start the daemon"
}

apib() { python3 "$BENCH/apibench.py" "$@"; }

# --- machine facts --------------------------------------------------------------------------
fact() { printf '%s\t%s\n' "$1" "$2" >>"$RES/facts.tsv"; }
dio() { cat "/sys/block/$(basename "$1")/loop/dio" 2>/dev/null || echo "?"; }
fact date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
fact kernel "$(uname -r) ($(uname -m))"
fact cpus "$(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
fact memory "$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
fact "backing disk" "$(findmnt -n -o SOURCE,FSTYPE --target "$WORK" | tr -s ' ') (images in $WORK)"
fact "mount A" "ext4, ${IMG_MIB} MiB sparse image on $DEV_A (direct I/O: $(dio "$DEV_A"))"
fact "mount B" "$SECOND_FS, ${IMG_MIB} MiB sparse image on $DEV_B (direct I/O: $(dio "$DEV_B"))"
# Which sources the binary matches: HEAD, unless the tree has uncommitted changes, or sources
# newer than the binary (it was built before them).
src_state() {
    git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'
    git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ', src modified'
    [[ -z $(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$QUIESCE_ORIG" -print -quit 2>/dev/null) ]] ||
        echo ', sources newer than the binary: it may not match'
}
fact quiesce "$("$QUIESCE" --version) ($QUIESCE_ORIG, built $(date -u -r "$QUIESCE_ORIG" +%Y-%m-%dT%H:%M:%SZ), git $(src_state | tr -d '\n'))"
fact "binary size" "$BIN_SIZE"
fact fsfreeze "$(fsfreeze --version 2>&1 | head -1)"
fact python3 "$(python3 --version 2>&1) (http.client, one connection per request)"
fact "rcu_expedited" "$(cat /sys/kernel/rcu_expedited 2>/dev/null || echo '?')"
fact settings "runs=$RUNS gap=${GAP}s idle=${IDLE}s probes=$PROBES"
fact "state_dir" "tmpfs (like /run/quiesce)"
HAVE_PERF=0
if command -v perf >/dev/null && perf stat -e task-clock -o /dev/null -- true >/dev/null 2>&1; then
    HAVE_PERF=1
fi
fact perf "$( ((HAVE_PERF)) && perf --version || echo 'not available: idle CPU from /proc ticks only')"
CURL_FLAG=()
command -v curl >/dev/null && CURL_FLAG=(--curl)
fact "load average at start" "$(cut -d' ' -f1-3 /proc/loadavg)"
cpu_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
read -r BUSY0 IDLE0 < <(cpu_jiffies)

# --- the daemon -----------------------------------------------------------------------------
say "starting the daemon"
start_daemon "$WORK/cfg" "$WORK/state"
fact "daemon" "pid $DPID, $URL, auth hmac, include_mounts [A, B], hooks []"
sleep 1   # let start-up finish before the first reading
apib proc --pid "$DPID" >"$RES/proc_start.json"

# idle_window NAME: IDLE seconds in which nothing talks to the daemon; /proc before and after,
# and perf's task-clock and context switches of all its threads over the window when available.
idle_window() {
    apib proc --pid "$DPID" >"$RES/$1_before.json"
    if ((HAVE_PERF)); then
        perf stat -x, -e task-clock,context-switches,cpu-migrations -p "$DPID" -o "$RES/$1_perf.csv" \
            -- sleep "$IDLE" >/dev/null 2>&1 || sleep "$IDLE"
    else
        sleep "$IDLE"
    fi
    apib proc --pid "$DPID" >"$RES/$1_after.json"
}

say "idle window after start: ${IDLE} s"
idle_window idle1

say "HTTP floor: GET /v1/health and a TCP echo, $RUNS runs"
apib health --url "$URL" --runs "$RUNS" --gap "$GAP" >"$RES/health.jsonl"

say "1, 2: $RUNS rounds of (API cycle, fsfreeze script, raw FITHAW${CURL_FLAG:+, API cycle whose thaw curl sends}), ${GAP} s idle before each"
apib cycles --url "$URL" --runs "$RUNS" --gap "$GAP" --pid "$DPID" --mounts "$A" "$B" "${CURL_FLAG[@]}" >"$RES/cycles.jsonl"
apib proc --pid "$DPID" >"$RES/proc_after_cycles.json"

say "1d: quiesce snapshot --agent $URL --exec true, $RUNS runs"
apib cli --quiesce "$QUIESCE" --url "$URL" --runs "$RUNS" --gap "$GAP" >"$RES/cli.jsonl"

say "3: the watchdog's footprint while frozen, $PROBES snapshots"
for ((i = 0; i < PROBES; i++)); do
    sleep "$GAP"
    apib probe --url "$URL" --pid "$DPID" >>"$RES/probes.jsonl"
done
apib proc --pid "$DPID" >"$RES/proc_after_all.json"

say "idle windows after the runs: 2 x ${IDLE} s"
idle_window idle2
idle_window idle3
curl -sS --max-time 5 "$URL/metrics" >"$RES/metrics.txt" || true
stop_daemon

say "3: the hook helper's footprint (a second daemon with one 1 s pre hook)"
start_daemon "$WORK/cfg-hook" "$WORK/state-hook" hook
apib probe --url "$URL" --pid "$DPID" --hook >"$RES/hookprobe.jsonl" || true
stop_daemon

fact "load average at the end" "$(cut -d' ' -f1-3 /proc/loadavg)"
read -r BUSY1 IDLE1 < <(cpu_jiffies)
fact "machine CPU busy during the run" "$(awk -v b=$((BUSY1 - BUSY0)) -v i=$((IDLE1 - IDLE0)) 'BEGIN {printf "%.0f %% of %d CPUs (/proc/stat; this benchmark included)", 100 * b / (b + i), '"$(nproc)"'}')"

# --- report ---------------------------------------------------------------------------------
python3 "$BENCH/report_api.py" "$RES" ${MARKDOWN:+--markdown "$MARKDOWN"}
if [[ -n $KEEP ]]; then
    mkdir -p -- "$KEEP"
    cp -r -- "$RES"/. "$KEEP"/
    say "raw results kept in $KEEP"
fi
