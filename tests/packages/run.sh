#!/usr/bin/env bash
# The packages, built by scripts/package.sh and installed for real (issue 6):
# - the .deb: lintian with no error; dpkg -i into a Debian bookworm root made with mmdebstrap
#   (minbase), where files, owners, modes, the conffile, the generated key and the enabled unit
#   are checked and the installed binary accepts the shipped configuration; an upgrade to a
#   bumped version keeps an edited configuration and the key; remove keeps the conffile, purge
#   leaves the root as it was before the installation;
# - the .rpm: rpm -qlp/-qip/--scripts show the same payload and the scriptlets; rpm --root
#   installs it into an empty root, and into a copy of the Debian root with its scriptlets run.
# Needs root. Run by .ci/run; prints "N passed, N failed" at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/packages/run.sh: needs root (chroot, dpkg into a root)" >&2
  exit 1
fi
need=()
for pair in lintian:lintian rpm:rpm mmdebstrap:mmdebstrap python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d /var/tmp/quiesce-packages.XXXXXX)
root=$work/debian
mounted=()
cleanup() {
  local m
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() { # check DESCRIPTION COMMAND...: one line per check, the run goes on after a failure
  local what=$1; shift
  if "$@" >"$work/check.out" 2>&1; then
    echo "ok   $what"; passed=$((passed + 1))
  else
    echo "FAIL $what"; sed 's/^/     /' "$work/check.out" | head -20; failed=$((failed + 1))
  fi
}
mode_owner() { stat -c '%a %U:%G' "$root$1"; }
expect() { # expect ACTUAL EXPECTED
  [ "$1" = "$2" ] || { echo "got '$1', expected '$2'"; return 1; }
}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
bumped=$(echo "$version" | awk -F. '{ printf "%d.%d.%d", $1, $2, $3 + 1 }')
scripts/package.sh
# scripts/package.sh writes into cargo's target directory (CARGO_TARGET_DIR honoured).
packages=$(scripts/cargo-target-dir.sh)/packages
deb=$packages/quiesce_${version}-1_amd64.deb
rpm_file=$(ls "$packages"/quiesce-"$version"-*.rpm)

echo "== lintian"
lintian --fail-on error --no-tag-display-limit "$deb" | tee "$work/lintian.txt" || true
check "lintian finds no error" lintian --fail-on error "$deb"

echo "== a Debian bookworm root (mmdebstrap, minbase)"
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mmdebstrap --quiet --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}"
for m in proc dev; do
  mount --bind "/$m" "$root/$m"
  mounted=("$root/$m" "${mounted[@]}")
done
in_root() { chroot "$root" "$@"; }
# Everything but dpkg's own bookkeeping, to compare before the installation and after purge.
snapshot_files() {
  (cd "$root" && find . -xdev \( -path ./proc -o -path ./dev -o -path ./var/lib/dpkg -o -path ./var/log -o -path ./var/cache -o -path ./tmp \) -prune -o -print | sort)
}
snapshot_files > "$work/before.txt"

echo "== dpkg -i $(basename "$deb")"
cp "$deb" "$root/tmp/quiesce.deb"
check "dpkg -i installs it" in_root dpkg -i /tmp/quiesce.deb
check "the binary: /usr/bin/quiesce 755 root" expect "$(mode_owner /usr/bin/quiesce)" "755 root:root"
check "the installed binary runs" in_root quiesce --version
check "the config: 600 root, a conffile" sh -c "
  [ \"\$(stat -c '%a %U' $root/etc/quiesce/config.yaml)\" = '600 root' ] &&
  grep -qx /etc/quiesce/config.yaml $root/var/lib/dpkg/info/quiesce.conffiles"
check "config.d and hooks: 700 root" sh -c "
  [ \"\$(stat -c '%a %U' $root/etc/quiesce/config.d)\" = '700 root' ] &&
  [ \"\$(stat -c '%a %U' $root/etc/quiesce/hooks)\" = '700 root' ]"
check "host.key: 600 root, 32 random bytes as 64 hex digits" sh -c "
  [ \"\$(stat -c '%a %U' $root/etc/quiesce/host.key)\" = '600 root' ] &&
  grep -qxE '[0-9a-f]{64}' $root/etc/quiesce/host.key"
check "the unit, tmpfiles.d and the preset are in place" sh -c "
  test -f $root/lib/systemd/system/quiesce.service &&
  test -f $root/usr/lib/tmpfiles.d/quiesce.conf &&
  test -f $root/lib/systemd/system-preset/50-quiesce.preset"
check "the unit is enabled (multi-user.target.wants)" test -L "$root/etc/systemd/system/multi-user.target.wants/quiesce.service"
check "man pages and completions" sh -c "
  test -f $root/usr/share/man/man8/quiesce.8.gz && test -f $root/usr/share/man/man8/quiesce-daemon.8.gz &&
  test -f $root/usr/share/bash-completion/completions/quiesce &&
  test -f $root/usr/share/zsh/vendor-completions/_quiesce &&
  test -f $root/usr/share/fish/vendor_completions.d/quiesce.fish"
check "the application hooks: /usr/share/quiesce/hooks, 755 root" sh -c "
  for h in postgresql mariadb systemd-service container; do
    [ \"\$(stat -c '%a %U' $root/usr/share/quiesce/hooks/\$h)\" = '755 root' ] || exit 1
  done"
# The shipped configuration with the generated key is one the daemon accepts.
check "check-config accepts the shipped config and key" in_root quiesce check-config --config /etc/quiesce/config.yaml
# And with a drop-in that uses a shipped hook (the hook path and permission walk included).
printf 'hooks:\n  - name: postgresql\n    pre: [/usr/share/quiesce/hooks/postgresql, pre]\n    post: [/usr/share/quiesce/hooks/postgresql, post]\n' \
  > "$root/etc/quiesce/config.d/postgresql.yaml"
check "check-config accepts a drop-in with a shipped hook" sh -c "
  chroot $root quiesce check-config --config /etc/quiesce/config.yaml | grep -q /usr/share/quiesce/hooks/postgresql"
rm "$root/etc/quiesce/config.d/postgresql.yaml"
key_before=$(cat "$root/etc/quiesce/host.key")

echo "== upgrade to $bumped with an edited configuration"
sed -i 's/^  timeout: 10s /  timeout: 7s  /' "$root/etc/quiesce/config.yaml"
grep -q '^  timeout: 7s' "$root/etc/quiesce/config.yaml"
config_before=$(sha256sum < "$root/etc/quiesce/config.yaml")
scripts/package.sh --version "$bumped" >/dev/null
cp "$packages/quiesce_${bumped}-1_amd64.deb" "$root/tmp/quiesce-new.deb"
check "dpkg -i upgrades it" in_root dpkg -i /tmp/quiesce-new.deb
check "the new version is installed" expect "$(in_root dpkg-query -W -f '${Version}' quiesce)" "${bumped}-1"
check "the edited config is kept" expect "$(sha256sum < "$root/etc/quiesce/config.yaml")" "$config_before"
check "the key is kept" expect "$(cat "$root/etc/quiesce/host.key")" "$key_before"
check "still enabled after the upgrade" test -L "$root/etc/systemd/system/multi-user.target.wants/quiesce.service"

echo "== remove, then purge"
check "dpkg -r removes it" in_root dpkg -r quiesce
check "remove: the binary and the unit are gone" sh -c "! test -e $root/usr/bin/quiesce && ! test -e $root/lib/systemd/system/quiesce.service"
check "remove: the conffile stays" test -f "$root/etc/quiesce/config.yaml"
check "dpkg -P purges it" in_root dpkg -P quiesce
rm -f "$root/tmp/quiesce.deb" "$root/tmp/quiesce-new.deb"
snapshot_files > "$work/after.txt"
check "purge leaves the root as it was before the installation" diff "$work/before.txt" "$work/after.txt"
check "dpkg no longer knows it" sh -c "! chroot $root dpkg-query -W quiesce"

echo "== the .rpm"
rpm -qip "$rpm_file" | tee "$work/rpm-info.txt"
check "rpm -qip: name, version, license" sh -c "
  grep -q '^Name *: quiesce' $work/rpm-info.txt && grep -q '^Version *: $version' $work/rpm-info.txt &&
  grep -q '^License *: Apache-2.0' $work/rpm-info.txt"
rpm -qlp "$rpm_file" > "$work/rpm-files.txt"
dpkg-deb -c "$deb" | awk '{ print $NF }' | sed 's|^\./|/|' > "$work/deb-files.txt"
# The same payload: each file of the .deb has its twin in the .rpm, modulo the distribution's
# places (/lib vs /usr/lib, gzip'd man pages, zsh's directory, Debian's copyright file).
normalize() {
  sed -e 's|^/lib/|/usr/lib/|' -e 's|\.gz$||' -e 's|/zsh/vendor-completions/|/zsh/site-functions/|' \
      -e 's|^/usr/share/doc/quiesce/copyright$|/usr/share/licenses/quiesce/LICENSE|' \
      -e 's|^/usr/share/doc/quiesce/changelog\.Debian$||' -e 's|^/usr/share/doc/quiesce/examples/config.yaml$||' \
      -e 's|^/usr/share/doc/quiesce/changelog$|/usr/share/doc/quiesce/CHANGELOG.md|' -e 's|^/usr/share/lintian/.*||' \
    | grep -v '/$' | grep . | sort -u
}
normalize < "$work/deb-files.txt" > "$work/deb-norm.txt"
normalize < "$work/rpm-files.txt" > "$work/rpm-norm.txt"
check "rpm -qlp: the same payload as the .deb" diff "$work/deb-norm.txt" "$work/rpm-norm.txt"
rpm -qp --scripts "$rpm_file" > "$work/rpm-scripts.txt"
check "rpm --scripts: post, preun and postun" sh -c "
  grep -q '^postinstall scriptlet' $work/rpm-scripts.txt && grep -q 'host.key' $work/rpm-scripts.txt &&
  grep -q '^preuninstall scriptlet' $work/rpm-scripts.txt && grep -q 'disable --now quiesce.service' $work/rpm-scripts.txt &&
  grep -q '^postuninstall scriptlet' $work/rpm-scripts.txt && grep -q 'try-restart quiesce.service' $work/rpm-scripts.txt"
check "rpm -qp --configfiles: the config is noreplace" sh -c "
  rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' $rpm_file | grep -qx '/etc/quiesce/config.yaml cn'"
empty=$work/empty
mkdir -p "$empty"
check "rpm --root into an empty root installs the payload" sh -c "
  rpm --root $empty --initdb && rpm --root $empty -i --nodeps --noscripts $rpm_file &&
  test -x $empty/usr/bin/quiesce && test -f $empty/etc/quiesce/config.yaml &&
  rpm --root $empty -q quiesce"
# With its scriptlets run, in the Debian root (a shell and coreutils, no systemd running).
check "rpm --root with scriptlets: the key and the directories are made" sh -c "
  rpm --root $root --initdb && rpm --root $root -i --nodeps $rpm_file &&
  grep -qxE '[0-9a-f]{64}' $root/etc/quiesce/host.key &&
  [ \"\$(stat -c '%a' $root/etc/quiesce/hooks)\" = 700 ] &&
  rpm --root $root -e quiesce && ! test -e $root/usr/bin/quiesce"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
