#!/usr/bin/env bash
# mmdebstrap customize hook of tests/vm/run.sh: makes the Debian root ($1) a bootable test guest.
#   guest-setup.sh ROOT
# Environment (set by run.sh): VM_WORK (the run's work directory: deb, key, ssh key), VM_DATA
# (an empty directory that becomes the data disk's content; PostgreSQL's cluster is moved there).
# Runs on the host, as root, while mmdebstrap has proc/sys/dev mounted in ROOT.
set -euo pipefail
root=$1
: "${VM_WORK:?}" "${VM_DATA:?}"
here=$(cd "$(dirname "$0")" && pwd)
in_root() { chroot "$root" "$@"; }

# --- base system: name, disks, network, a login for the host (ssh with a key of this run).
echo quiesce-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 quiesce-vm\n' > "$root/etc/hosts"
# Disks by label (the PCI order of virtio disks is not the order on the command line). udev is
# slow under TCG: the data disk gets a long device timeout instead of failing the boot.
cat > "$root/etc/fstab" <<'EOF'
LABEL=vmroot  /      ext4  defaults,errors=remount-ro                 0 1
LABEL=vmdata  /data  ext4  defaults,x-systemd.device-timeout=300s     0 2
EOF
mkdir -p "$root/data"
cat > "$root/etc/systemd/network/10-virtio.network" <<'EOF'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
EOF
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
# Nothing in the test needs network-online.target; no boot waits for it.
in_root systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$VM_WORK/ssh_key.pub" "$root/root/.ssh/authorized_keys"
cat > "$root/etc/ssh/sshd_config.d/quiesce-vm.conf" <<'EOF'
PermitRootLogin prohibit-password
UseDNS no
EOF
# A shell on the first serial console too, for whoever debugs a run by hand (console.log).
in_root systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1 || true

# --- PostgreSQL: the cluster Debian made at installation moves to the data disk (/data/pg15).
in_root pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
mv "$root/var/lib/postgresql/15/main" "$VM_DATA/pg15"
sed -i "s|^data_directory = .*|data_directory = '/data/pg15'|" "$root/etc/postgresql/15/main/postgresql.conf"
grep -q "^data_directory = '/data/pg15'" "$root/etc/postgresql/15/main/postgresql.conf"
cat >> "$root/etc/postgresql/15/main/postgresql.conf" <<'EOF'
# quiesce VM test: small and quiet
shared_buffers = 32MB
max_wal_size = 256MB
log_checkpoints = on
EOF
mkdir -p "$root/etc/systemd/system/postgresql@15-main.service.d"
printf '[Unit]\nRequiresMountsFor=/data\n' > "$root/etc/systemd/system/postgresql@15-main.service.d/data.conf"

# --- quiesce: the host's key first (postinst keeps an existing one), then the package.
install -d -m 0700 "$root/etc/quiesce"
install -m 0600 "$VM_WORK/host.key" "$root/etc/quiesce/host.key"
# run.sh builds the package while mmdebstrap runs: wait for it.
for _ in $(seq 900); do
  [ -e "$VM_WORK/deb.ready" ] || [ -e "$VM_WORK/deb.failed" ] && break
  sleep 1
done
[ -e "$VM_WORK/deb.ready" ] || { echo "guest-setup: no quiesce .deb (scripts/package.sh failed?)" >&2; exit 1; }
cp "$VM_WORK/quiesce.deb" "$root/tmp/quiesce.deb"
in_root dpkg -i /tmp/quiesce.deb
rm -f "$root/tmp/quiesce.deb"
test -L "$root/etc/systemd/system/multi-user.target.wants/quiesce.service" || {
  echo "guest-setup: the package did not enable quiesce.service" >&2; exit 1; }
# The main config (a conffile; drop-ins may only add hooks): reachable through QEMU's user
# networking (HMAC stays on), and only the data disk is ever frozen. / holds the journal, the
# logs and the ssh session the test drives the guest with.
cfg=$root/etc/quiesce/config.yaml
sed -i -e 's|^listen: .*|listen: 0.0.0.0:7380|' \
       -e 's|^  include_mounts: \[\].*|  include_mounts: [/data]|' \
       -e 's|^  max_timeout: .*|  max_timeout: 120s|' "$cfg"
grep -q '^listen: 0.0.0.0:7380' "$cfg"
grep -q '^  include_mounts: \[/data\]' "$cfg"
# Two hooks, in this order: the test's marker (notes when pre began: the bound of the restore
# check) and the shipped PostgreSQL hook from the package (CHECKPOINT), as docs/hooks.md
# configures it.
install -m 0700 -o root -g root "$here/guest-marker-hook" "$root/etc/quiesce/hooks/vm-marker"
test -x "$root/usr/share/quiesce/hooks/postgresql" || {
  echo "guest-setup: the package did not install /usr/share/quiesce/hooks/postgresql" >&2; exit 1; }
cat > "$root/etc/quiesce/config.d/10-postgres.yaml" <<'EOF'
hooks:
  - name: vm-marker
    pre:  [/etc/quiesce/hooks/vm-marker, pre]
    post: [/etc/quiesce/hooks/vm-marker, post]
    timeout: 10s
    on_failure: abort
  - name: postgres
    pre:  [/usr/share/quiesce/hooks/postgresql, pre]
    post: [/usr/share/quiesce/hooks/postgresql, post]
    timeout: 60s
    on_failure: abort
EOF
chmod 0600 "$root/etc/quiesce/config.d/10-postgres.yaml"
# check-config needs /data to be a mount to list it; here only the parse and the hooks count.
in_root quiesce check-config --config /etc/quiesce/config.yaml >/dev/null 2>&1 || true

# --- tests/vm/libvirt.sh (VM_QGA=1): quiesce alone on the virtio-serial port, docs/qga.md setup
# (a). Debian's qemu-guest-agent is installed (the test switches to it and to setup (b) later) but
# masked: its udev rule would start it when the port appears.
if [ "${VM_QGA:-0}" = 1 ]; then
  in_root systemctl mask qemu-guest-agent.service >/dev/null 2>&1
  sed -i -e '/^qga:/,/^$/ s|^  enabled: .*|  enabled: true|' "$cfg"
  sed -n '/^qga:/,/^$/p' "$cfg" | grep -q '^  enabled: true'
  test -e "$root/usr/share/quiesce/qemu-guest-agent-forward.conf" || {
    echo "guest-setup: the package did not install qemu-guest-agent-forward.conf" >&2; exit 1; }
fi

# --- the workload's script and pgbench's logs, on / so that they are never frozen.
mkdir -p "$root/var/tmp/bench"
cp "$here/ledger.sql" "$root/var/tmp/bench/ledger.sql"
in_root chown -R postgres:postgres /var/tmp/bench

# --- what stays out of the way under TCG.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  fstrim.timer man-db.timer >/dev/null 2>&1 || true
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* || true
