#!/usr/bin/env bash
# The libvirt system test (issue 15, "tests with the real clients"): the quiesce .deb of this build
# in a Debian bookworm guest booted by libvirt 9 (qemu:///system, TCG), quiesce serving the QEMU
# guest agent protocol on the virtio-serial port org.qemu.guest_agent.0 (qga.enabled), driven by
# virsh: domfsfreeze/domfsthaw, snapshot-create-as --quiesce with a PostgreSQL restore, a freeze
# without a thaw, qemu-agent-command, setup (b) with domifaddr --source agent. See
# tests/vm/README.md.
#
#   sudo tests/vm/libvirt.sh
#
# Starts its own libvirtd (no systemd here) after setting security_driver, cgroup_controllers and
# stdio_handler in /etc/libvirt/qemu.conf (the original is put back at the end), and stops it,
# by its pid, on exit. Refuses to run when a libvirtd is already running. Freezes nothing on this
# host: only the guest freezes its own disks. Prints "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/tests/vm
t_start=$(date +%s)

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/vm/libvirt.sh: needs root (mmdebstrap, libvirtd)" >&2
  exit 1
fi
need=()
for pair in mmdebstrap:mmdebstrap qemu-system-x86_64:qemu-system-x86 ssh:openssh-client \
            ssh-keygen:openssh-client debugfs:e2fsprogs curl:curl jq:jq python3:python3 \
            qemu-img:qemu-utils virsh:libvirt-clients /usr/sbin/libvirtd:libvirt-daemon-system \
            /usr/lib/postgresql/15/bin/pg_ctl:postgresql-15 \
            /usr/lib/postgresql/15/bin/pg_amcheck:postgresql-client-15; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # libvirt-daemon-system's postinst would start a libvirtd (and qemu-guest-agent's its agent):
  # this test starts its own.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    policy=/usr/sbin/policy-rc.d
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ -z "$policy" ] || rm -f "$policy"
fi
if [ -s /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null; then
  echo "tests/vm/libvirt.sh: a libvirtd is already running (pid $(cat /run/libvirtd.pid)): not mine to use or stop" >&2
  exit 1
fi

work=$(mktemp -d /var/tmp/quiesce-virsh.XXXXXX)
chmod 0755 "$work" # QEMU (libvirt-qemu) and the host's postgres user read below it
dom=quiesce-virsh-$$
export LIBVIRT_DEFAULT_URI=qemu:///system
bg_pids=()
libvirtd_pid=""
pg_restore_dir=""
pg_started=""
qemu_conf=/etc/libvirt/qemu.conf
cleanup() {
  local rc=$? pid
  set +e
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null; done
  if [ -n "$libvirtd_pid" ] && kill -0 "$libvirtd_pid" 2>/dev/null; then
    timeout 60 virsh destroy "$dom" >/dev/null 2>&1
    timeout 30 virsh undefine "$dom" --snapshots-metadata >/dev/null 2>&1
  fi
  # QEMU outlives a libvirtd that died: its pid file is libvirt's.
  if [ -s "/run/libvirt/qemu/$dom.pid" ]; then kill -9 "$(cat "/run/libvirt/qemu/$dom.pid")" 2>/dev/null; fi
  if [ -n "$libvirtd_pid" ]; then
    kill "$libvirtd_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$libvirtd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$libvirtd_pid" 2>/dev/null
  fi
  [ -e "$work/qemu.conf.orig" ] && cp "$work/qemu.conf.orig" "$qemu_conf"
  if [ -n "$pg_started" ] && [ -s "$pg_restore_dir/postmaster.pid" ]; then
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pg_restore_dir" -m immediate -w stop >/dev/null 2>&1
  fi
  findmnt -rno TARGET | grep -F "$work/" | sort -r | while read -r m; do umount -l "$m"; done
  if [ "${QUIESCE_VM_KEEP:-0}" = 1 ]; then
    echo "work directory kept: $work"
  else
    rm -rf --one-file-system "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"

# ---------------------------------------------------------------------------------------------
echo "== image: scripts/package.sh and mmdebstrap (bookworm, with qemu-guest-agent) side by side"
# Set by lib.sh's functions:
version="" image_s="" initrd_kib="" rows_ledger="?" rows_history="?"
export VM_QGA=1 # guest-setup.sh: qga enabled, qemu-guest-agent masked
vm_build_image qemu-guest-agent
unset VM_QGA
echo "   image built in ${image_s}s (initramfs ${initrd_kib} KiB)"

# ---------------------------------------------------------------------------------------------
echo "== libvirtd (qemu:///system, TCG)"
cp "$qemu_conf" "$work/qemu.conf.orig"
# No MAC driver and no cgroups on these machines (no systemd as PID 1); QEMU's output to a file
# rather than through virtlogd, so that there is one daemon fewer to start and stop.
sed -i -E '/^(security_driver|cgroup_controllers|stdio_handler) *=/d' "$qemu_conf"
printf '%s\n' 'security_driver = "none"' 'cgroup_controllers = [ ]' 'stdio_handler = "file"' >> "$qemu_conf"
# In a mount namespace of its own where /dev/kvm is /dev/null: the domain is TCG anyway, and
# where /dev/kvm is there but KVM does not boot a kernel (these machines), libvirt finds its
# cached QEMU capabilities stale at every start and probes QEMU with KVM again (about 75 s).
# unshare and sh exec: the pid is libvirtd's.
if [ -e /dev/kvm ]; then
  unshare -m --propagation private sh -c 'mount --bind /dev/null /dev/kvm && exec /usr/sbin/libvirtd' > "$work/libvirtd.log" 2>&1 &
else
  /usr/sbin/libvirtd > "$work/libvirtd.log" 2>&1 &
fi
libvirtd_pid=$!
for _ in $(seq 100); do virsh version >/dev/null 2>&1 && break; sleep 0.2; done
virsh version > "$work/virsh-version.txt" 2>&1 || { cat "$work/virsh-version.txt" "$work/libvirtd.log"; fatal "libvirtd answers on qemu:///system"; }
sed 's/^/   /' "$work/virsh-version.txt" | grep -E 'library|hypervisor'
t_define=$(now)

agent_port=$(free_port)
ssh_port=$(free_port)
while [ "$ssh_port" = "$agent_port" ]; do ssh_port=$(free_port); done
agent=http://127.0.0.1:$agent_port
# The data disk is vdb (the snapshots name it); the root disk never takes part in a snapshot.
# User networking with two forwarded ports (qemu:commandline: libvirt 9's user interface has no
# port forwarding without passt).
cat > "$work/domain.xml" <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$dom</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$work/vmlinuz</kernel>
    <initrd>$work/initrd.img</initrd>
    <cmdline>root=LABEL=vmroot rw console=ttyS0 systemd.show_status=1</cmdline>
  </os>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk' snapshot='no'>
      <driver name='qemu' type='raw' cache='unsafe'/>
      <source file='$work/root.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$work/data.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$work/console.log'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=qnet0,hostfwd=tcp:127.0.0.1:$agent_port-:7380,hostfwd=tcp:127.0.0.1:$ssh_port-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=qnet0,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>
EOF
virsh define "$work/domain.xml" > "$work/define.log" 2>&1 || { cat "$work/define.log"; fatal "virsh define"; }
echo "   defined in $(since "$t_define")s"

# A guard in case this script itself is killed (SIGKILL, a CI timeout): when it is gone, or after
# QUIESCE_VM_TIMEOUT seconds (default 1500) asks it to stop, the domain, libvirtd and the restored
# PostgreSQL go too. The normal exit's trap does the same and ends the guard.
(
  trap '' INT HUP
  main=$$
  t_end=$(( $(date +%s) + ${QUIESCE_VM_TIMEOUT:-1500} ))
  while kill -0 "$main" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$t_end" ]; then
      echo "tests/vm/libvirt.sh: over ${QUIESCE_VM_TIMEOUT:-1500} s, stopping" >&2
      kill -TERM "$main" 2>/dev/null; t_end=$(( t_end + 120 ))
    fi
    sleep 2
  done
  timeout 30 virsh destroy "$dom"; timeout 30 virsh undefine "$dom" --snapshots-metadata
  [ -s "/run/libvirt/qemu/$dom.pid" ] && kill -9 "$(cat "/run/libvirt/qemu/$dom.pid")"
  kill "$libvirtd_pid"; sleep 2; kill -9 "$libvirtd_pid"
  [ -e "$work/qemu.conf.orig" ] && cp "$work/qemu.conf.orig" "$qemu_conf"
  [ -s "$work/pgrestore/pg15/postmaster.pid" ] && \
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pgrestore/pg15" -m immediate -w stop
  sleep 1
  [ "${QUIESCE_VM_KEEP:-0}" = 1 ] || rm -rf --one-file-system "$work"
) >/dev/null 2>&1 &
bg_pids+=("$!")

echo "== boot ($dom; agent on 127.0.0.1:$agent_port, ssh on 127.0.0.1:$ssh_port)"
t_boot=$(date +%s.%N)
virsh start "$dom" > "$work/start.log" 2>&1 || { cat "$work/start.log"; tail -20 "/var/log/libvirt/qemu/$dom.log" 2>/dev/null; fatal "virsh start"; }
ready=""
for _ in $(seq 600); do
  [ "$(virsh domstate "$dom" 2>/dev/null)" = running ] || fatal "the domain keeps running while the guest boots"
  if curl -sf -m 5 "$agent/v1/health" > "$work/health.json" 2>/dev/null; then ready=1; break; fi
  sleep 1
done
[ -n "$ready" ] || fatal "the agent answers /v1/health within 600 s of the boot"
boot_s=$(since "$t_boot")
echo "   agent ready ${boot_s}s after virsh start"
set +e

ssh_opts=(-q -i "$work/ssh_key" -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no
          -o UserKnownHostsFile=/dev/null -o ConnectTimeout=20 -o ServerAliveInterval=10 -o LogLevel=ERROR)
printf '#!/bin/sh\nexec ssh %s root@127.0.0.1 "cd /tmp && $*"\n' "${ssh_opts[*]}" > "$work/vm"
chmod 0755 "$work/vm"
vm() { "$work/vm" "$@"; }
for _ in $(seq 120); do vm true 2>/dev/null && break; sleep 1; done
vm true || fatal "ssh into the guest"
# jq -e on an empty input (a virsh that failed) would pass: jqe needs one JSON value and the filter
# true.
printf '#!/bin/sh\nf=$1; shift\nexec jq -e -s "length > 0 and (.[0] | $f)" "$@"\n' > "$work/jqe"
chmod 0755 "$work/jqe"
agent_cmd() { virsh qemu-agent-command "$dom" --timeout 30 "$1"; }
# The agent channel: libvirt marks it connected once the guest opened the port.
for _ in $(seq 60); do agent_cmd '{"execute":"guest-ping"}' >/dev/null 2>&1 && break; sleep 1; done
check "quiesce.service runs, qemu-guest-agent is masked (setup (a))" \
  sh -c "[ \"\$($work/vm 'systemctl is-active quiesce; systemctl is-enabled qemu-guest-agent' | tr '\n' ' ')\" = 'active masked ' ]"
check "/data is the data disk vdb (ext4)" \
  sh -c "$work/vm 'findmnt -no SOURCE,FSTYPE /data' | grep -q '^/dev/vdb *ext4'"
# The guest's own view of its snapshots (quiesce status --json through its HTTP API).
gstatus() { vm 'quiesce status --json --agent http://127.0.0.1:7380 --key-file /etc/quiesce/host.key'; }
last_snap() { gstatus | jq -c '.snapshots[0] | {id, channel, state, consistency, thaw_reason, mounts: [.mounts[] | .path]}'; }

# ---------------------------------------------------------------------------------------------
echo "== virsh qemu-agent-command: ping, info, sync-delimited"
check "guest-ping answers {\"return\":{}}" \
  sh -c "virsh qemu-agent-command '$dom' '{\"execute\":\"guest-ping\"}' | tee /dev/stderr | '$work/jqe' '.return == {}'"
agent_cmd '{"execute":"guest-info"}' > "$work/guest-info.json" 2>&1
check "guest-info: quiesce's version, the freeze commands enabled" \
  "$work/jqe" '.return.version == $v and
      ([.return.supported_commands[] | select(.enabled) | .name] | index("guest-fsfreeze-freeze") and index("guest-fsfreeze-thaw") and index("guest-fsfreeze-freeze-list"))' \
      --arg v "$version" "$work/guest-info.json"
check "an unknown command (setup (a), no forward): CommandNotFound" \
  sh -c "virsh qemu-agent-command '$dom' '{\"execute\":\"guest-network-get-interfaces\"}' 2>&1 | tee /dev/stderr | grep -q 'has not been found'"

# ---------------------------------------------------------------------------------------------
echo "== virsh domfsfreeze / domfsthaw"
t0=$(now)
virsh domfsfreeze "$dom" > "$work/freeze1.out" 2>&1
freeze_s=$(since "$t0")
echo "   $(cat "$work/freeze1.out") (answered in ${freeze_s}s)"
check "virsh domfsfreeze: 1 filesystem frozen (the data disk)" grep -q 'Froze 1 filesystem' "$work/freeze1.out"
check "guest-fsfreeze-status while frozen: \"frozen\"" \
  sh -c "virsh qemu-agent-command '$dom' '{\"execute\":\"guest-fsfreeze-status\"}' | '$work/jqe' '.return == \"frozen\"'"
# A write to /data in the background: it blocks while /data is frozen (and cannot be killed).
vm "rm -f /run/qvm-probe; (touch /data/probe-frozen && date +%s.%N > /run/qvm-probe) >/dev/null 2>&1 </dev/null &"
sleep 2
check "while frozen, a write to /data blocks (the guest's view)" sh -c "[ -z \"\$($work/vm 'cat /run/qvm-probe 2>/dev/null')\" ]"
t0=$(now)
virsh domfsthaw "$dom" > "$work/thaw1.out" 2>&1
thaw_s=$(since "$t0")
echo "   $(cat "$work/thaw1.out") (answered in ${thaw_s}s)"
check "virsh domfsthaw: 1 filesystem thawed" grep -q 'Thawed 1 filesystem' "$work/thaw1.out"
check "after the thaw the blocked write completes" vm 'for i in $(seq 50); do [ -s /run/qvm-probe ] && exit 0; sleep 0.2; done; exit 1'
sleep 1
last_snap > "$work/snap1.json"; sed 's/^/   /' "$work/snap1.json"
check "quiesce status --json in the guest: channel qga, succeeded, application, /data, thawed by the host" \
  "$work/jqe" '.channel == "qga" and .state == "succeeded" and .consistency == "application" and .thaw_reason == "host" and .mounts == ["/data"]' "$work/snap1.json"
t0=$(now)
virsh domfsfreeze "$dom" --mountpoint /data > "$work/freeze2.out" 2>&1
freeze_list_s=$(since "$t0")
check "virsh domfsfreeze --mountpoint /data (guest-fsfreeze-freeze-list): 1 frozen" grep -q 'Froze 1 filesystem' "$work/freeze2.out"
check "virsh domfsthaw after it: 1 thawed" sh -c "virsh domfsthaw '$dom' | grep -q 'Thawed 1 filesystem'"
sleep 1
last_snap > "$work/snap2.json"; sed 's/^/   /' "$work/snap2.json"
check "that snapshot: channel qga, succeeded" \
  "$work/jqe" '.channel == "qga" and .state == "succeeded" and .id != $id' --arg id "$(jq -r .id "$work/snap1.json")" "$work/snap2.json"
check "virsh domfsfreeze --mountpoint / (not a candidate): an error, nothing frozen" \
  sh -c "! virsh domfsfreeze '$dom' --mountpoint / && virsh qemu-agent-command '$dom' '{\"execute\":\"guest-fsfreeze-status\"}' | '$work/jqe' '.return == \"thawed\"'"

# ---------------------------------------------------------------------------------------------
echo "== PostgreSQL on /data: pgbench tables, a ledger and a marker table"
for _ in $(seq 120); do vm 'runuser -u postgres -- pg_isready -q' && break; sleep 1; done
t_init=$(date +%s)
vm 'set -e
  cd /var/tmp/bench
  runuser -u postgres -- createdb bench
  runuser -u postgres -- pgbench -q -i -s 1 -I dtGp bench 2>&1 | tail -1
  runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 bench -c "
    CREATE TABLE ledger (id bigserial PRIMARY KEY, client int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
    CREATE TABLE marker (tag text PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());"' \
  || fatal "pgbench -i in the guest"
echo "   pgbench -i -s 1 in $(elapsed "$t_init")s"

echo "== virsh snapshot-create-as --disk-only --atomic --quiesce while pgbench writes"
vm 'systemd-run --quiet --unit=qvm-bench --uid=postgres --working-directory=/var/tmp/bench \
  /usr/bin/pgbench -n -c 2 -j 2 -T 25 -l --log-prefix=/var/tmp/bench/txlog \
  -f /var/tmp/bench/ledger.sql@1 -b tpcb-like@1 bench' || fatal "pgbench starts in the guest"
sleep 6
tag=marker-$(date +%s)-$$
vm "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 bench -c \"INSERT INTO marker (tag) VALUES ('$tag')\"" \
  || fatal "the marker row commits"
t0=$(now)
virsh snapshot-create-as "$dom" snap-pg --disk-only --atomic --quiesce \
  --diskspec vda,snapshot=no --diskspec "vdb,snapshot=external,file=$work/data-overlay.qcow2" \
  > "$work/snapshot.out" 2>&1
snap_rc=$?
snap_s=$(since "$t0")
sed 's/^/   /' "$work/snapshot.out"
check "virsh snapshot-create-as --quiesce exits 0 (${snap_s}s)" expect "$snap_rc" 0
check "vdb is now the overlay; data.img its backing file (the point-in-time copy)" \
  sh -c "virsh domblklist '$dom' | grep -q 'vdb .*data-overlay.qcow2' &&
         qemu-img info -U --output=json '$work/data-overlay.qcow2' | '$work/jqe' '(.\"backing-filename\" // \"\") | endswith(\"/data.img\")'"
last_snap > "$work/snap-pg.json"; sed 's/^/   /' "$work/snap-pg.json"
snap_id=$(jq -r .id "$work/snap-pg.json")
check "the guest's snapshot: channel qga, succeeded, application, thawed by the host" \
  "$work/jqe" '.channel == "qga" and .state == "succeeded" and .consistency == "application" and .thaw_reason == "host"' "$work/snap-pg.json"
gstatus | jq -c '.snapshots[0].hooks | map("\(.name) \(.phase):\(.exit_code)")' > "$work/snap-pg-hooks.json"
check "its hooks ran: vm-marker and postgres, pre and post, exit 0" \
  "$work/jqe" 'sort == (["vm-marker pre:0", "postgres pre:0", "postgres post:0", "vm-marker post:0"] | sort)' "$work/snap-pg-hooks.json"
echo "   waiting for pgbench to finish"
for _ in $(seq 120); do
  [ "$(vm 'systemctl is-active qvm-bench' 2>/dev/null)" = active ] || break
  sleep 2
done
vm 'journalctl -u qvm-bench -o cat | grep -E "^(number of transactions actually processed|tps|number of failed)"' | sed 's/^/   /'
vm 'cat /var/tmp/bench/txlog.*' > "$work/pgbench-tx.log"
vm 'cat /run/quiesce-vm/pre.log' > "$work/pre.log"
t_pre=$(awk -v id="$snap_id" '$2 == id { print $1 }' "$work/pre.log" | tail -1)
check "the pre hook noted when it started" test -n "$t_pre"
echo "== the backing image data.img (frozen at the snapshot), restored on the host"
vm_restore_check "$work/data.img" "$tag" "${t_pre:-0}" "$work/pgbench-tx.log"

# ---------------------------------------------------------------------------------------------
echo "== a freeze without a thaw: qga.freeze_timeout 5s thaws it"
vm "sed -i -e '/^qga:/,/^\$/ s|^  freeze_timeout: .*|  freeze_timeout: 5s|' /etc/quiesce/config.yaml && systemctl reload quiesce"
sleep 2
virsh domfsfreeze "$dom" > "$work/freeze3.out" 2>&1
check "virsh domfsfreeze: 1 frozen (and libvirt sends no thaw)" grep -q 'Froze 1 filesystem' "$work/freeze3.out"
t_frozen=$(now)
# The deadline counts from the first FIFREEZE; a write that blocked completes once it passed.
check "a write to /data blocked by the freeze completes by itself within 15 s" timeout 30 "$work/vm" 'touch /data/probe-deadline'
deadline_s=$(since "$t_frozen")
last_snap > "$work/snap3.json"; sed 's/^/   /' "$work/snap3.json"
check "the snapshot ended failed, crash, thawed by the deadline" \
  "$work/jqe" '.channel == "qga" and .state == "failed" and .consistency == "crash" and .thaw_reason == "deadline"' "$work/snap3.json"
check "a later virsh domfsthaw answers 0" sh -c "virsh domfsthaw '$dom' | tee /dev/stderr | grep -q 'Thawed 0 filesystem'"
vm "sed -i -e '/^qga:/,/^\$/ s|^  freeze_timeout: .*|  freeze_timeout: 60s|' /etc/quiesce/config.yaml && systemctl reload quiesce"
sleep 2

# ---------------------------------------------------------------------------------------------
echo "== the writers' stall for snapshot-create-as --quiesce: quiesce, then the guest's own qemu-ga"
# A writer appends to /data (it blocks while /data is frozen) and notes each completion on /run
# (tmpfs, never frozen). The stall is the longest gap between two notes.
start_writer() { vm "rm -f /run/qvm-writer.log; systemd-run --quiet --unit=qvm-writer sh -c 'while :; do echo x >> /data/writer.dat; date +%s.%N; done > /run/qvm-writer.log'"; }
stop_writer() { vm 'systemctl stop qvm-writer; cat /run/qvm-writer.log' > "$work/writer-$1.log"; }
max_gap() { awk 'NR > 1 { g = $1 - p; if (g > m) m = g } { p = $1 } END { printf "%.3f\n", m }' "$1"; }
# The writer's usual gap (a fork and an exec under TCG), the resolution of the stall measured.
median_gap() { awk 'NR > 1 { print $1 - p } { p = $1 }' "$1" | sort -n | awk '{ a[NR] = $1 } END { printf "%.3f\n", a[int((NR + 1) / 2)] }'; }
stall_snapshot() { # stall_snapshot NAME OVERLAY: prints nothing, sets stall_NAME via files
  start_writer
  sleep 2
  local t0 rc=0
  t0=$(now)
  virsh snapshot-create-as "$dom" "snap-$1" --disk-only --atomic --quiesce \
    --diskspec vda,snapshot=no --diskspec "vdb,snapshot=external,file=$2" > "$work/snapshot-$1.out" 2>&1 || rc=$?
  since "$t0" > "$work/snapshot-$1.s"
  sleep 1
  stop_writer "$1"
  return "$rc"
}
check "snapshot-create-as --quiesce with quiesce on the port" stall_snapshot quiesce "$work/data-overlay2.qcow2"
stall_quiesce=$(max_gap "$work/writer-quiesce.log")
check "the writer stalled (the freeze is real): $stall_quiesce s" python3 -c "import sys; sys.exit(0 if $stall_quiesce > 0.01 else 1)"
# The guest's own qemu-ga instead (quiesce stopped, qemu-ga unmasked): it freezes every mount
# it sees, / included, and has no hooks.
vm 'systemctl stop quiesce && systemctl unmask qemu-guest-agent && systemctl start qemu-guest-agent && sleep 1 && systemctl is-active qemu-guest-agent' > "$work/qemu-ga-start.log" 2>&1
for _ in $(seq 30); do agent_cmd '{"execute":"guest-ping"}' >/dev/null 2>&1 && break; sleep 1; done
check "qemu-ga answers guest-info with its own version" \
  sh -c "virsh qemu-agent-command '$dom' '{\"execute\":\"guest-info\"}' | '$work/jqe' '.return.version | startswith(\"7.2\")'"
check "snapshot-create-as --quiesce with Debian's qemu-ga on the port" stall_snapshot qemu-ga "$work/data-overlay3.qcow2"
stall_qemuga=$(max_gap "$work/writer-qemu-ga.log")
gap_quiesce=$(median_gap "$work/writer-quiesce.log")
gap_qemuga=$(median_gap "$work/writer-qemu-ga.log")
ratio=$(python3 -c "print(f'{$stall_quiesce / $stall_qemuga:.2f}' if $stall_qemuga > 0 else '?')")
snapq_s=$(cat "$work/snapshot-quiesce.s"); snapg_s=$(cat "$work/snapshot-qemu-ga.s")
echo "   writer's stall: quiesce ${stall_quiesce}s (snapshot-create-as ${snapq_s}s, hooks included), qemu-ga ${stall_qemuga}s (${snapg_s}s); ratio quiesce/qemu-ga $ratio; the writer's usual gap ${gap_quiesce}s / ${gap_qemuga}s"

# ---------------------------------------------------------------------------------------------
echo "== setup (b): qemu-ga on a unix socket behind quiesce (the shipped drop-in, qga.forward)"
vm 'set -e
  systemctl stop qemu-guest-agent
  mkdir -p /etc/systemd/system/qemu-guest-agent.service.d
  ln -sf /usr/share/quiesce/qemu-guest-agent-forward.conf /etc/systemd/system/qemu-guest-agent.service.d/quiesce-forward.conf
  sed -i -e "/^qga:/,/^\$/ s|^  forward: .*|  forward: \"unix:/run/qemu-ga/qga.sock\"|" /etc/quiesce/config.yaml
  systemctl daemon-reload
  systemctl start qemu-guest-agent quiesce
  for i in $(seq 30); do [ -S /run/qemu-ga/qga.sock ] && break; sleep 1; done' > "$work/setup-b.log" 2>&1 \
  || { sed 's/^/   /' "$work/setup-b.log"; }
for _ in $(seq 30); do agent_cmd '{"execute":"guest-ping"}' >/dev/null 2>&1 && break; sleep 1; done
if ! agent_cmd '{"execute":"guest-ping"}' >/dev/null 2>&1; then # what each side saw, for the record
  sed 's/^/   /' "$work/setup-b.log"
  vm 'systemctl status --no-pager -n 0 quiesce qemu-guest-agent | grep -E "Loaded|Active|Drop-In|conf"; journalctl -o short-monotonic -n 25 -u quiesce -u qemu-guest-agent' | sed 's/^/   guest: /'
  grep -a -iE 'agent|vserport|channel' "$work/libvirtd.log" | tail -10 | sed 's/^/   libvirtd: /'
fi
check "quiesce on the port again: guest-info has quiesce's version" \
  sh -c "virsh qemu-agent-command '$dom' '{\"execute\":\"guest-info\"}' | tee '$work/guest-info-b.json' | '$work/jqe' '.return.version == \$v' --arg v '$version'"
check "guest-info lists qemu-ga's commands too (merged)" \
  "$work/jqe" '[.return.supported_commands[].name] | index("guest-network-get-interfaces")' "$work/guest-info-b.json"
check "virsh domifaddr --source agent (relayed to qemu-ga) lists the guest's interface" \
  sh -c "virsh domifaddr '$dom' --source agent | tee /dev/stderr | grep -E 'ipv4 +10\.0\.2\.'"
check "virsh domfsfreeze/domfsthaw in setup (b): 1 frozen, 1 thawed, by quiesce" \
  sh -c "virsh domfsfreeze '$dom' | grep -q 'Froze 1 filesystem' && virsh domfsthaw '$dom' | grep -q 'Thawed 1 filesystem'"
sleep 1
check "that snapshot is quiesce's: channel qga, succeeded" \
  sh -c "$work/vm 'quiesce status --json --agent http://127.0.0.1:7380 --key-file /etc/quiesce/host.key' | '$work/jqe' '.snapshots[0] | .channel == \"qga\" and .state == \"succeeded\"'"

# ---------------------------------------------------------------------------------------------
# Last, because libvirt's agent reader parses each line it receives as JSON: the 0xFF that
# precedes this reply (as qemu-ga's does) makes it mark the agent unusable until the guest
# reopens the port. What the guest sent is in libvirtd's log.
echo "== guest-sync-delimited through virsh qemu-agent-command"
virsh qemu-agent-command "$dom" '{"execute":"guest-sync-delimited","arguments":{"id":4242}}' > "$work/sync-delimited.out" 2>&1
sed 's/^/   /' "$work/sync-delimited.out"
check "guest-sync-delimited {id}: the reply libvirt received is 0xFF then {\"return\":4242}" \
  grep -aqF $'\xff{"return":4242}' "$work/libvirtd.log"

# ---------------------------------------------------------------------------------------------
echo "== summary"
echo "   image ${image_s}s; boot to READY ${boot_s}s; domfsfreeze answered in ${freeze_s}s (--mountpoint ${freeze_list_s}s), domfsthaw in ${thaw_s}s"
echo "   snapshot-create-as --quiesce with pgbench ${snap_s}s; restored rows: ledger ${rows_ledger:-?}, pgbench_history ${rows_history:-?}"
echo "   freeze without a thaw: the blocked write completed ${deadline_s}s after domfsfreeze answered (deadline 5s)"
echo "   writer's stall for snapshot-create-as --quiesce: quiesce ${stall_quiesce}s, qemu-ga ${stall_qemuga}s, ratio $ratio (one run, TCG; usual gap ${gap_quiesce}s / ${gap_qemuga}s; snapshot-create-as ${snapq_s}s / ${snapg_s}s)"
echo "   total $(elapsed "$t_start")s"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
