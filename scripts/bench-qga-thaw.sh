#!/usr/bin/env bash
# The thaw answer time over the QEMU guest agent protocol on a unix socket: quiesce against
# Debian's qemu-ga, on the same loop-mounted ext4, one after the other.
#
# qemu-ga's thaw thaws every frozen mount it can see and its freeze freezes every mount it sees,
# so it runs pivot_rooted into a private mount namespace that holds a tmpfs root (skipped by
# qemu-ga: its source is not a device), /proc and the loop mount, and nothing else: a guard
# reads the namespace's mountinfo and refuses to start qemu-ga when anything else is there.
#
# Usage: sudo scripts/bench-qga-thaw.sh [ROUNDS] (after `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-30}
quiesce=${QUIESCE:-target/release/quiesce}
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (loop devices, FIFREEZE)" >&2; exit 1; }
[ -x /usr/sbin/qemu-ga ] || { echo "$0: apt-get install qemu-guest-agent (its service is not needed)" >&2; exit 1; }
[ -x "$quiesce" ] || { echo "$0: $quiesce is missing: cargo build --release" >&2; exit 1; }
quiesce=$(readlink -f "$quiesce")

work=$(mktemp -d /tmp/qga-thaw.XXXXXX)
ga_pid=""
q_pid=""
cleanup() {
  fsfreeze -u "$work/data" 2>/dev/null || true
  [ -z "$q_pid" ] || kill "$q_pid" 2>/dev/null || true
  [ -z "$ga_pid" ] || kill "$ga_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  fsfreeze -u "$work/data" 2>/dev/null || true
  umount "$work/data" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s 64M "$work/data.img"
mkfs.ext4 -q -F "$work/data.img"
mkdir -p "$work/data" "$work/root" "$work/state"
mount -o loop "$work/data.img" "$work/data"

# qemu-ga, alone with the loop mount.
cat > "$work/inner.sh" <<EOF
set -euo pipefail
root=$work/root
mount -t tmpfs -o mode=0755 tmpfs "\$root"
mkdir -p "\$root/proc" "\$root/data" "\$root/old" "\$root/run"
for f in /usr/sbin/qemu-ga /bin/bash /bin/umount \$(ldd /usr/sbin/qemu-ga /bin/bash /bin/umount | grep -o '/[^ :]*' | sort -u); do
  mkdir -p "\$root\$(dirname "\$f")"
  cp -L "\$f" "\$root\$f"
done
mount --bind $work/data "\$root/data"
mount -t proc proc "\$root/proc"
cd "\$root"
pivot_root . old
exec /bin/bash -c '
  umount -l /old
  while read -r _ _ _ _ mp _; do
    case \$mp in /|/data|/proc) ;; *) echo "guard: \$mp is visible: not starting qemu-ga" >&2; exit 1 ;; esac
  done < /proc/self/mountinfo
  exec /usr/sbin/qemu-ga -m unix-listen -p /run/ga.sock -t /run -f /run/ga.pid'
EOF
unshare -m --propagation private /bin/bash "$work/inner.sh" &
ga_pid=$!
ga_sock=/proc/$ga_pid/root/run/ga.sock

cat > "$work/config.yaml" <<EOF
listen: unix:$work/api.sock
state_dir: $work/state
auth: {mode: none}
freeze: {include_mounts: [$work/data]}
qga: {enabled: true, path: "unix:$work/q.sock"}
EOF
"$quiesce" daemon --config "$work/config.yaml" 2>"$work/daemon.log" &
q_pid=$!

for _ in $(seq 100); do
  [ -S "$ga_sock" ] && [ -S "$work/q.sock" ] && break
  kill -0 "$ga_pid" 2>/dev/null || { echo "$0: qemu-ga did not start" >&2; exit 1; }
  sleep 0.1
done

python3 - "$rounds" "$ga_sock" "$work/q.sock" <<'EOF'
import json, socket, statistics, sys, time

rounds, ga, q = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class Agent:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""

    def call(self, cmd):
        self.s.sendall(json.dumps({"execute": cmd}).encode())
        while b"\n" not in self.buf:
            data = self.s.recv(65536)
            if not data:
                sys.exit("the agent closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

def freeze(a):
    for _ in range(500):
        r = a.call("guest-fsfreeze-freeze")
        if "return" in r:
            if r["return"] != 1:
                a.call("guest-fsfreeze-thaw")
                sys.exit(f"froze {r['return']} mounts, expected 1: stopping")
            return
        time.sleep(0.01)  # quiesce: the previous snapshot is still ending
    sys.exit(f"cannot freeze: {r}")

agents = {"qemu-ga": Agent(ga), "quiesce": Agent(q)}
times = {k: [] for k in agents}
for _ in range(rounds):
    for name, a in agents.items():
        freeze(a)
        time.sleep(0.05)
        t = time.perf_counter()
        r = a.call("guest-fsfreeze-thaw")
        times[name].append((time.perf_counter() - t) * 1000)
        assert r == {"return": 1}, r
for name, t in times.items():
    t.sort()
    print(f"{name:8} thaw answer: median {statistics.median(t):.2f} ms, "
          f"p90 {t[int(len(t) * 0.9) - 1]:.2f} ms, max {t[-1]:.2f} ms ({len(t)} rounds)")
EOF
