#!/usr/bin/env bash
# bench-freeze.sh: how long quiesce keeps filesystems frozen, and how long writers stall.
#
# Creates two loop-mounted filesystems (ext4 + xfs by default) in a temporary directory under
# /tmp and measures, on them only:
#   1. freeze+thaw of the two idle mounts:
#      (a) quiesce's freeze window (frozen_ms of the done line) and its FIFREEZE call times;
#      (b) whole-command wall time of `quiesce freeze --exec true` against the sequential
#          `fsfreeze -f A && fsfreeze -f B && fsfreeze -u B && fsfreeze -u A` (hyperfine when
#          available, else a timing loop);
#      (c) the FIFREEZE pair alone: sequential fsfreeze processes, and raw ioctls from one
#          process in sequence and in parallel, against quiesce's parallel calls;
#   2. the longest write() stall of a paced appender on the ext4 mount when 256 MiB of dirty
#      data sits on that mount at freeze time, with quiesce's syncfs pre-flush and without it
#      (--no-flush), alternating.
# Prints a table on stdout; with --markdown FILE also writes it as a markdown section.
#
# Safety: it freezes nothing but the loop mounts it created (never /, /work or /tmp), changes no
# sysctl, and its EXIT trap thaws (fsfreeze -u), unmounts and detaches only its own loop devices
# and removes its temporary files. Needs root. Installs nothing but, when missing, the Debian
# packages hyperfine and xfsprogs (apt-get install -y; --no-install to skip).
#
# Usage: sudo scripts/bench-freeze.sh [--markdown FILE] [--runs N] [--stall-runs N]
#                                     [--dirty-mib N] [--second-fs xfs|ext4] [--quiesce PATH]
#                                     [--no-install] [--no-hyperfine]
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$REPO/scripts/bench"
# Where cargo put the release build (CARGO_TARGET_DIR honoured).
QUIESCE="${QUIESCE:-$("$REPO/scripts/cargo-target-dir.sh")/release/quiesce}"
RUNS=20            # part 1: runs per measurement
STALL_RUNS=5       # part 2: runs per variant (with / without pre-flush), alternating
DIRTY_MIB=256      # part 2: dirty data written right before the freeze
WRITER_SECONDS=3   # part 2: how long the appender runs
WRITER_INTERVAL_MS=1
GAP=0.2            # idle seconds before every timed freeze (see docs/BENCHMARKS.md: RCU)
IMG_MIB=1024       # sparse image size of each filesystem (xfs needs >= 300 MiB)
SECOND_FS=xfs
MARKDOWN=""
INSTALL=1
USE_HYPERFINE=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "bench-freeze: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

while (($#)); do
    case $1 in
        --markdown) MARKDOWN=${2:?--markdown needs a file}; shift 2 ;;
        --runs) RUNS=${2:?}; shift 2 ;;
        --stall-runs) STALL_RUNS=${2:?}; shift 2 ;;
        --dirty-mib) DIRTY_MIB=${2:?}; shift 2 ;;
        --second-fs) SECOND_FS=${2:?}; shift 2 ;;
        --quiesce) QUIESCE=${2:?}; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --no-hyperfine) USE_HYPERFINE=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ && $STALL_RUNS =~ ^[1-9][0-9]*$ && $DIRTY_MIB =~ ^[1-9][0-9]*$ ]] \
    || die "--runs, --stall-runs and --dirty-mib take positive integers"
[[ $SECOND_FS == xfs || $SECOND_FS == ext4 ]] || die "--second-fs is xfs or ext4"
if [[ -n $MARKDOWN ]]; then
    # Resolved now: the script changes no directory, but the path must not depend on it.
    MARKDOWN=$(realpath -m -- "$MARKDOWN")
fi

[[ $EUID -eq 0 ]] || die "must run as root (it creates loop devices and freezes them): sudo $0"
[[ -x $QUIESCE ]] || die "no quiesce binary at $QUIESCE: run 'cargo build --release' first (or --quiesce PATH)"
for c in losetup mkfs.ext4 mount umount findmnt fsfreeze dd python3 sync; do
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
HAVE_HYPERFINE=0
if ((USE_HYPERFINE)) && { command -v hyperfine >/dev/null || apt_install hyperfine; }; then
    command -v hyperfine >/dev/null && HAVE_HYPERFINE=1
fi
((HAVE_HYPERFINE)) || say "hyperfine not used: timing loop instead"

# --- workspace and cleanup ------------------------------------------------------------------
WORK=$(mktemp -d /tmp/quiesce-bench.XXXXXX)
RES="$WORK/results"
SRC=""                # pre-generated random data, in /dev/shm (tmpfs)
WPID=""               # the appender, while it runs
MOUNTS=()             # our mount points, in mount order
IMAGES=()             # our image files

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # 1. thaw (ours only; harmless when not frozen)
    local m
    for m in "${MOUNTS[@]}"; do mountpoint -q "$m" && fsfreeze -u "$m" 2>/dev/null; done
    if [[ -n $WPID ]]; then kill "$WPID" 2>/dev/null; wait "$WPID" 2>/dev/null; fi
    # 2. unmount
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        mountpoint -q "$m" || continue
        umount "$m" 2>/dev/null || { sleep 1; fsfreeze -u "$m" 2>/dev/null; umount "$m"; } ||
            umount -l "$m"
    done
    # 3. detach exactly the loop devices backed by our images
    local img dev
    for img in "${IMAGES[@]}"; do
        for dev in $(losetup --list --noheadings --output NAME -j "$img" 2>/dev/null); do
            losetup -d "$dev"
        done
    done
    # 4. temporary files
    [[ -n $SRC ]] && rm -f -- "$SRC"
    rm -rf --one-file-system -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$RES" "$WORK/state" "$WORK/mnt"

# shellcheck source=bench/loopfs.sh
source "$BENCH/loopfs.sh"

say "creating the filesystems in $WORK"
A="$WORK/mnt/a"; B="$WORK/mnt/b"
IMAGES=("$WORK/a.img" "$WORK/b.img")
MOUNTS=("$A" "$B")
DEV_A=$(make_fs a ext4)
DEV_B=$(make_fs b "$SECOND_FS")
refuse_unless_own_loop "$A" "$B"

CFG="$WORK/config.yaml"
cat >"$CFG" <<EOF
# generated by scripts/bench-freeze.sh
state_dir: $WORK/state
freeze:
  timeout: 30s
  include_mounts: [$A, $B]
EOF

# --- machine facts --------------------------------------------------------------------------
fact() { printf '%s\t%s\n' "$1" "$2" >>"$RES/facts.tsv"; }
dio() { cat "/sys/block/$(basename "$1")/loop/dio" 2>/dev/null || echo "?"; }
img_fact() {
    local blocks bsize
    read -r blocks bsize < <(stat -c '%b %B' "$1")
    printf '%s, %s MiB sparse image (%s MiB allocated) on %s (direct I/O: %s)' "$2" "$IMG_MIB" \
        "$((blocks * bsize / 1048576))" "$3" "$(dio "$3")"
}
fact date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
fact kernel "$(uname -r) ($(uname -m))"
fact cpus "$(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
fact memory "$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
fact "backing disk" "$(findmnt -n -o SOURCE,FSTYPE --target "$WORK" | tr -s ' ') (images in $WORK)"
fact "mount A" "$(img_fact "$WORK/a.img" ext4 "$DEV_A")"
fact "mount B" "$(img_fact "$WORK/b.img" "$SECOND_FS" "$DEV_B")"
fact quiesce "$("$QUIESCE" --version) ($QUIESCE, git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ', src modified'))"
fact fsfreeze "$(fsfreeze --version 2>&1 | head -1)"
fact hyperfine "$( ((HAVE_HYPERFINE)) && hyperfine --version || echo 'not available (timing loop)')"
fact "vm.dirty" "$(for k in dirty_background_bytes dirty_background_ratio dirty_bytes dirty_ratio dirty_expire_centisecs dirty_writeback_centisecs; do printf '%s=%s ' "$k" "$(cat /proc/sys/vm/$k)"; done)"
fact "dirty thresholds" "$(awk '/^nr_dirty_background_threshold/ {b=$2} /^nr_dirty_threshold/ {t=$2} END {printf "background writeback starts at %d MiB, writers throttled at %d MiB (/proc/vmstat)", b*4/1024, t*4/1024}' /proc/vmstat)"
fact "rcu_expedited" "$(cat /sys/kernel/rcu_expedited 2>/dev/null || echo '?')"
fact settings "runs=$RUNS stall_runs=$STALL_RUNS dirty=${DIRTY_MIB}MiB writer=${WRITER_SECONDS}s@${WRITER_INTERVAL_MS}ms gap=${GAP}s"

us_now() { echo "${EPOCHREALTIME/./}"; }

# run_quiesce OUT [ARGS...]: one `quiesce freeze --exec true`; appends {"rc","wall_us","done"}
# as JSON to OUT.
run_quiesce() {
    local out=$1 t0 t1 rc=0
    shift
    t0=$(us_now)
    "$QUIESCE" freeze --config "$CFG" --exec true "$@" >"$WORK/q.out" 2>>"$RES/quiesce.stderr" || rc=$?
    t1=$(us_now)
    local done_line
    done_line=$(grep -m1 '"event":"done"' "$WORK/q.out" || true)
    printf '{"rc":%d,"wall_us":%d,"done":%s}\n' "$rc" "$((t1 - t0))" "${done_line:-null}" >>"$out"
}

# --- part 1: two idle mounts ----------------------------------------------------------------
sync -f "$A"; sync -f "$B"

say "1a: quiesce freeze --exec true, $RUNS runs"
for ((i = 0; i < RUNS; i++)); do
    sleep "$GAP"
    run_quiesce "$RES/p1_quiesce.jsonl"
done

say "1b: whole-command wall time, $RUNS runs each"
SEQ_CMD="fsfreeze -f $A && fsfreeze -f $B && fsfreeze -u $B && fsfreeze -u $A"
Q_CMD="$QUIESCE freeze --config $CFG --exec true"
hyperfine_ok=0
if ((HAVE_HYPERFINE)); then
    if hyperfine --runs "$RUNS" --warmup 2 --prepare "sleep $GAP" --style basic \
        --export-json "$RES/hyperfine.json" \
        -n "quiesce freeze --exec true" "$Q_CMD" \
        -n "fsfreeze -f A && -f B && -u B && -u A" "$SEQ_CMD" >"$RES/hyperfine.log" 2>&1; then
        hyperfine_ok=1
    else
        say "hyperfine failed (see below): timing loop instead"; cat "$RES/hyperfine.log" >&2
        for m in "$A" "$B"; do fsfreeze -u "$m" 2>/dev/null || true; done
    fi
fi
if ((!hyperfine_ok)); then
    for name in quiesce fsfreeze; do
        for ((i = 0; i < RUNS; i++)); do
            sleep "$GAP"
            t0=$(us_now)
            if [[ $name == quiesce ]]; then $Q_CMD >/dev/null 2>&1; else sh -c "$SEQ_CMD"; fi
            t1=$(us_now)
            printf '{"name":"%s","wall_us":%d}\n' "$name" "$((t1 - t0))" >>"$RES/wall_loop.jsonl"
        done
    done
fi

say "1c: the freeze pair alone (fsfreeze processes; raw ioctls in sequence and in parallel), $RUNS runs each"
for ((i = 0; i < RUNS; i++)); do
    sleep "$GAP"
    t0=$(us_now); fsfreeze -f "$A"; t1=$(us_now); fsfreeze -f "$B"; t2=$(us_now)
    true
    fsfreeze -u "$B"; fsfreeze -u "$A"; t3=$(us_now)
    printf '{"a_us":%d,"b_us":%d,"pair_us":%d,"window_us":%d}\n' \
        "$((t1 - t0))" "$((t2 - t1))" "$((t2 - t0))" "$((t3 - t0))" >>"$RES/p1_fsfreeze.jsonl"
done
python3 "$BENCH/rawfreeze.py" --runs "$RUNS" --gap "$GAP" "$A" "$B" >"$RES/p1_ioctl.jsonl"
python3 "$BENCH/rawfreeze.py" --runs "$RUNS" --gap "$GAP" --parallel "$A" "$B" >"$RES/p1_ioctl_par.jsonl"
python3 "$BENCH/rawfreeze.py" --runs "$RUNS" --gap 0 "$A" "$B" >"$RES/p1_ioctl_b2b.jsonl"

# --- part 2: write stall with dirty data ----------------------------------------------------
say "2: longest write stall with $DIRTY_MIB MiB dirty on $A, $STALL_RUNS runs per variant"
SRC=$(mktemp /dev/shm/quiesce-bench.XXXXXX)
dd if=/dev/urandom of="$SRC" bs=1M count="$DIRTY_MIB" status=none
# The target file exists and is on disk beforehand: each run only re-dirties its pages
# (conv=notrunc), so every run does the same work (no block allocation at freeze time).
dd if="$SRC" of="$A/dirty.bin" bs=1M status=none
sync -f "$A/dirty.bin"

meminfo_kb() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }

for ((i = 0; i < 2 * STALL_RUNS; i++)); do
    if ((i % 2 == 0)); then variant=flush; extra=(); else variant=no-flush; extra=(--no-flush); fi
    sync -f "$A"
    sleep "$GAP"
    rm -f "$WORK/ready"
    python3 "$BENCH/writer.py" "$A/writer.log" --seconds "$WRITER_SECONDS" \
        --interval-ms "$WRITER_INTERVAL_MS" --ready "$WORK/ready" >"$WORK/writer.out" &
    WPID=$!
    for ((w = 0; w < 500; w++)); do [[ -e $WORK/ready ]] && break; sleep 0.01; done
    [[ -e $WORK/ready ]] || die "the writer did not start"
    sleep 0.2                       # some undisturbed writes first
    dirty_before=$(meminfo_kb Dirty)
    dd if="$SRC" of="$A/dirty.bin" bs=1M conv=notrunc status=none
    dirty_kb=$(meminfo_kb Dirty); writeback_kb=$(meminfo_kb Writeback)
    run_quiesce "$WORK/q2.jsonl" "${extra[@]}"
    wait "$WPID"; WPID=""
    printf '{"variant":"%s","dirty_before_kb":%d,"dirty_kb":%d,"writeback_kb":%d,"writer":%s,"q":%s}\n' \
        "$variant" "$dirty_before" "$dirty_kb" "$writeback_kb" "$(cat "$WORK/writer.out")" \
        "$(tail -n1 "$WORK/q2.jsonl")" >>"$RES/p2_stall.jsonl"
done

# --- report ---------------------------------------------------------------------------------
python3 "$BENCH/report.py" "$RES" ${MARKDOWN:+--markdown "$MARKDOWN"}
