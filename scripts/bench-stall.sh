#!/usr/bin/env bash
# bench-stall.sh: the longest write stall applications see during a snapshot, for quiesce (its
# HTTP API), util-linux fsfreeze, the QEMU guest agent and the kernel's floor (syncfs then
# parallel FIFREEZE from one process), on the same K loop filesystems, in the same run,
# alternating (scripts/bench/stall.py says what each freezer does).
#
# Creates K loop filesystems (ext4 and xfs in turn) in a temporary directory, starts a quiesce
# daemon (auth hmac on loopback, restricted to them) and qemu-ga on a unix socket (no fsfreeze
# hook), and a second daemon with `freeze.expedite_rcu: false` (quiesce_normal_rcu); the floor
# runs twice, as is and with /sys/kernel/rcu_expedited at 1 around its FIFREEZE calls
# (floor_expedited: the kernel's limit). The knob is global: the script refuses to start unless
# it reads 0, and puts it back to 0 on exit. It runs R rounds for each dirty-data size (default 0 and 256 MiB) with a hold of H ms.
# Prints a markdown table (median and min-max per freezer), with --markdown FILE also into FILE,
# and keeps the raw JSON lines with --keep FILE. Draws the comparison as PNG charts into
# --charts DIR (default ./bench-stall-charts; scripts/bench/stall_charts.py, with gnuplot): the
# longest stall per freezer and dirty size and, when --mounts lists several counts (e.g.
# --mounts "2 4 8": each count in turn, on the first K of the filesystems), against the number
# of filesystems. The charts can be drawn again from --keep files: stall_charts.py DIR FILE...
#
# qemu-ga's guest-fsfreeze-thaw thaws every frozen mount of the machine: run nothing else that
# freezes meanwhile. Safety: only the loop mounts made here are ever frozen (never /, /work or
# /tmp); the EXIT trap stops the daemon and qemu-ga, thaws, unmounts and detaches our devices.
# Needs root; installs qemu-guest-agent, xfsprogs and gnuplot-nox when missing (--no-install to
# skip).
#
# Usage: sudo scripts/bench-stall.sh [--mounts "K..."] [--runs R] [--dirty-mib "0 256"]
#                                    [--hold-ms H]
#                                    [--freezers quiesce,quiesce_normal_rcu,fsfreeze,qga,floor,floor_expedited]
#                                    [--quiesce PATH] [--markdown FILE] [--keep FILE]
#                                    [--charts DIR | --no-charts] [--no-install]
#                                    [--rcu-expedited-throughout]
# --rcu-expedited-throughout keeps /sys/kernel/rcu_expedited at 1 for the whole run (every
# freezer, the writers, the dirtying), as the measurement of issue 16 had it; back to 0 at exit.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$REPO/scripts/bench"
# Where cargo put the release build (CARGO_TARGET_DIR honoured).
QUIESCE="${QUIESCE:-$("$REPO/scripts/cargo-target-dir.sh")/release/quiesce}"
K_LIST=4
RUNS=7
DIRTY="0 256"
HOLD=0
FREEZERS=quiesce,quiesce_normal_rcu,fsfreeze,qga,floor,floor_expedited
# shellcheck disable=SC2034 # read by loopfs.sh
IMG_MIB=1024
MARKDOWN=""
KEEP=""
INSTALL=1
THROUGHOUT=0
CHARTS=$(realpath -m -- bench-stall-charts)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "bench-stall: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

while (($#)); do
    case $1 in
        --mounts) K_LIST=${2:?}; shift 2 ;;
        --runs) RUNS=${2:?}; shift 2 ;;
        --dirty-mib) DIRTY=${2:?}; shift 2 ;;
        --hold-ms) HOLD=${2:?}; shift 2 ;;
        --freezers) FREEZERS=${2:?}; shift 2 ;;
        --quiesce) QUIESCE=${2:?}; shift 2 ;;
        --markdown) MARKDOWN=$(realpath -m -- "${2:?}"); shift 2 ;;
        --keep) KEEP=$(realpath -m -- "${2:?}"); shift 2 ;;
        --charts) CHARTS=$(realpath -m -- "${2:?}"); shift 2 ;;
        --no-charts) CHARTS=""; shift ;;
        --no-install) INSTALL=0; shift ;;
        --rcu-expedited-throughout) THROUGHOUT=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ $EUID -eq 0 ]] || die "must run as root (loop devices, FIFREEZE): sudo $0"
# The largest count is made; each count in turn freezes the first K of them.
K=0
for k in $K_LIST; do
    [[ $k =~ ^[1-9][0-9]*$ ]] || die "--mounts takes counts of filesystems, e.g. \"4\" or \"2 4 8\": $k"
    ((k > K)) && K=$k
done
((K > 0)) || die "--mounts: no count given"
[[ -x $QUIESCE ]] || die "no quiesce binary at $QUIESCE: run 'cargo build --release' first"
QUIESCE=$(realpath -- "$QUIESCE")
need=()
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
[[ $FREEZERS != *qga* ]] || command -v qemu-ga >/dev/null || need+=(qemu-guest-agent)
# Checked before the runs, not after them: the charts need gnuplot.
[[ -z $CHARTS ]] || command -v gnuplot >/dev/null || need+=(gnuplot-nox)
if ((${#need[@]})); then
    ((INSTALL)) || die "missing: ${need[*]} (apt-get install ${need[*]}; --no-charts runs without gnuplot)"
    say "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
pgrep -x qemu-ga >/dev/null && die "a qemu-ga is already running: its thaw would touch ours"
[[ $(cat /sys/kernel/rcu_expedited) == 0 ]] || die "/sys/kernel/rcu_expedited is 1: someone set it; the comparison needs it at 0"

WORK=$(mktemp -d /tmp/quiesce-bench-stall.XXXXXX)
source "$BENCH/loopfs.sh"
MOUNTS=()
IMAGES=()
DPID=""
D2PID=""
QPID=""
cleanup() {
    set +e
    trap - EXIT INT TERM
    [[ -n $DPID ]] && { kill -TERM "$DPID"; wait "$DPID"; }
    [[ -n $D2PID ]] && { kill -TERM "$D2PID"; wait "$D2PID"; }
    # Whatever happened, RCU grace periods are back to normal (it read 0 when we started).
    echo 0 >/sys/kernel/rcu_expedited
    for m in "$WORK/state" "$WORK/state2"; do mountpoint -q "$m" && umount "$m"; done
    [[ -n $QPID ]] && { kill -TERM "$QPID"; wait "$QPID"; }
    local m img dev
    for m in "${MOUNTS[@]}"; do mountpoint -q "$m" && fsfreeze -u "$m" 2>/dev/null; done
    for m in "${MOUNTS[@]}"; do mountpoint -q "$m" && { umount "$m" || umount -l "$m"; }; done
    for img in "${IMAGES[@]}"; do
        for dev in $(losetup -j "$img" -O NAME -n); do losetup -d "$dev"; done
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say "$K loop filesystems in $WORK"
for ((i = 0; i < K; i++)); do
    fs=ext4
    ((i % 2)) && fs=xfs
    name=$(printf "\\x$(printf %x $((97 + i)))")
    IMAGES+=("$WORK/$name.img")
    MOUNTS+=("$WORK/mnt/$name")
    make_fs "$name" "$fs" >/dev/null
done
refuse_unless_own_loop "${MOUNTS[@]}"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mounts_yaml=$(printf '"%s", ' "${MOUNTS[@]}")
# HMAC on TCP, as in production (auth none is refused on TCP); the Python clients sign with
# $QUIESCE_KEY_FILE.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/host.key"
chmod 600 "$WORK/host.key"
export QUIESCE_KEY_FILE="$WORK/host.key"
# write_config FILE PORT STATE_DIR EXPEDITE: a daemon restricted to the loop mounts.
write_config() {
    cat >"$1" <<EOF
listen: 127.0.0.1:$2
state_dir: $3
auth: {mode: hmac, key_file: "$WORK/host.key"}
freeze:
  timeout: 30s
  include_mounts: [${mounts_yaml%, }]
  expedite_rcu: $4
hooks: []
EOF
}
# start_daemon CONFIG LOG: starts it in the background ($! is its pid).
start_daemon() {
    QUIESCE_LOG_TARGET=stderr "$QUIESCE" daemon --config "$1" 2>"$2" &
}
wait_listening() {
    for _ in $(seq 100); do grep -q "listening on" "$1" && return 0; sleep 0.05; done
    die "the daemon did not start: $(cat "$1")"
}
# state_dir on a small tmpfs, as /run/quiesce is in production: the watchdog writes a record
# there before each FIFREEZE, and on the disk that holds the loop images those writes would wait
# behind the pre-flush's writeback.
for d in "$WORK/state" "$WORK/state2"; do
    mkdir -p "$d"
    mount -t tmpfs -o size=1m,mode=0700 quiesce-bench-state "$d"
done
write_config "$WORK/config.yaml" "$port" "$WORK/state" true
if [[ ,$FREEZERS, == *,quiesce,* ]]; then
    start_daemon "$WORK/config.yaml" "$WORK/daemon.log"
    DPID=$!
    wait_listening "$WORK/daemon.log"
fi
port2=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
write_config "$WORK/config-normal-rcu.yaml" "$port2" "$WORK/state2" false
if [[ $FREEZERS == *quiesce_normal_rcu* ]]; then
    start_daemon "$WORK/config-normal-rcu.yaml" "$WORK/daemon2.log"
    D2PID=$!
    wait_listening "$WORK/daemon2.log"
fi
if [[ $FREEZERS == *qga* ]]; then
    mkdir -p "$WORK/qga"
    qemu-ga -m unix-listen -p "$WORK/qga.sock" -t "$WORK/qga" -f "$WORK/qga.pid" 2>"$WORK/qga.log" &
    QPID=$!
    for _ in $(seq 100); do [[ -S $WORK/qga.sock ]] && break; sleep 0.05; done
    [[ -S $WORK/qga.sock ]] || die "qemu-ga did not start: $(cat "$WORK/qga.log")"
fi

RAW="$WORK/raw.jsonl"
if ((THROUGHOUT)); then
    say "/sys/kernel/rcu_expedited at 1 for the whole run"
    echo 1 >/sys/kernel/rcu_expedited
fi
: >"$WORK/table.md"
for k in $K_LIST; do
    for d in $DIRTY; do
        say "$k filesystems, dirty $d MiB, hold $HOLD ms, $RUNS rounds of: $FREEZERS"
        python3 "$BENCH/stall.py" --mounts "${MOUNTS[@]:0:k}" --runs "$RUNS" --dirty-mib "$d" \
            --hold-ms "$HOLD" --freezers "$FREEZERS" --quiesce-url "http://127.0.0.1:$port" \
            --quiesce-normal-rcu-url "http://127.0.0.1:$port2" \
            --qga-socket "$WORK/qga.sock" | tee -a "$WORK/raw-$k.jsonl" >&2
    done
    cat "$WORK/raw-$k.jsonl" >>"$RAW"
    python3 "$BENCH/stall_report.py" "$WORK/raw-$k.jsonl" "$k" "$HOLD" >>"$WORK/table.md"
    echo >>"$WORK/table.md"
done
[[ -n $KEEP ]] && cp "$RAW" "$KEEP"

cat "$WORK/table.md"
[[ -n $MARKDOWN ]] && cp "$WORK/table.md" "$MARKDOWN"
if [[ -n $CHARTS ]]; then
    say "charts in $CHARTS"
    python3 "$BENCH/stall_charts.py" "$CHARTS" "$RAW" >&2
fi
exit 0
