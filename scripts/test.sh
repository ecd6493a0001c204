#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the real freezes on loop devices.
# Needs root (loop devices, mount, FIFREEZE) and e2fsprogs, xfsprogs, util-linux;
# `.ci/run` installs those on a fresh machine. Every test freezes only loop mounts it made.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the freezer tests need root (loop devices, mount, FIFREEZE): run it as root, e.g. sudo scripts/test.sh" >&2
  exit 1
fi
missing=()
for tool in mkfs.ext4 e2fsck dumpe2fs mkfs.xfs xfs_repair xfs_logprint losetup fsfreeze blkid mount unshare \
    systemd-analyze systemd-tmpfiles dbus-daemon /usr/lib/postgresql/15/bin/initdb mariadbd shellcheck promtool qemu-ga; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: missing tools: ${missing[*]} (apt-get install e2fsprogs xfsprogs util-linux mount systemd dbus-daemon postgresql mariadb-server shellcheck prometheus qemu-guest-agent)" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== shellcheck (the shipped hooks and the project's scripts)"
shellcheck -S warning scripts/hooks/* scripts/*.sh scripts/bench/loopfs.sh tests/packages/run.sh tests/vm/*.sh .ci/run
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
pkglog=$(mktemp)
trap 'rm -f "$log" "$pkglog"' EXIT
set +e
cargo test --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The packages, built and installed for real (slower: a release build and a Debian root), and
# the system tests in a real VM (QEMU, the .deb under systemd, a QMP storage snapshot, a
# PostgreSQL restore; then the same guest under libvirt, driven by virsh over the QEMU guest
# agent protocol). QUIESCE_SKIP_PACKAGES=1 / QUIESCE_SKIP_VM=1 leave them out of a quick
# local run; CI always runs them.
pkg_status=0
vm_status=0
libvirt_status=0
if [ "${QUIESCE_SKIP_PACKAGES:-0}" != 1 ] || [ "${CI:-}" = true ]; then
  echo "== tests/packages/run.sh"
  tests/packages/run.sh 2>&1 | tee "$pkglog"
  pkg_status=${PIPESTATUS[0]}
fi
if [ "${QUIESCE_SKIP_VM:-0}" != 1 ] || [ "${CI:-}" = true ]; then
  echo "== tests/vm/run.sh"
  tests/vm/run.sh 2>&1 | tee -a "$pkglog"
  vm_status=${PIPESTATUS[0]}
  echo "== tests/vm/libvirt.sh"
  tests/vm/libvirt.sh 2>&1 | tee -a "$pkglog"
  libvirt_status=${PIPESTATUS[0]}
fi
set -e
# One closing line with the totals of every test binary, the package checks and the VM tests.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$/ && FILENAME != ARGV[1] { p += $1; f += $3 }
     END { printf "%d passed, %d failed\n", p, f }' "$log" "$pkglog"
[ "$status" -eq 0 ] && [ "$pkg_status" -eq 0 ] && [ "$vm_status" -eq 0 ] && [ "$libvirt_status" -eq 0 ]
