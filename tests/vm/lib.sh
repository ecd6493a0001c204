# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034 # the caller defines work, repo, here; it reads what is set here
# Shared parts of the VM tests, sourced by tests/vm/run.sh and tests/vm/libvirt.sh: the guest
# image (the .deb of this build in a Debian bookworm root made by mmdebstrap) and the restore of
# PostgreSQL from a point-in-time copy of the data disk, checked on the host; and the test
# harness both use (check, skip, expect, fatal, elapsed). The caller defines: repo, here, work
# (the run's work directory), and the array bg_pids.

# The test harness, one line per check: `check DESCRIPTION COMMAND...` goes on after a failure,
# `fatal` stops the run (the caller's EXIT trap cleans up); the summary line is the one that
# scripts/test.sh adds up.
passed=0
failed=0
skipped=0
check() { # check DESCRIPTION COMMAND...: one line per check, the run goes on after a failure
  local what=$1; shift
  if "$@" >"$work/check.out" 2>&1; then
    echo "ok   $what"; passed=$((passed + 1))
  else
    echo "FAIL $what"; sed 's/^/     /' "$work/check.out" | tail -20; failed=$((failed + 1))
  fi
}
skip() { echo "skip $1"; skipped=$((skipped + 1)); }
expect() { [ "$1" = "$2" ] || { echo "got '$1', expected '$2'"; return 1; }; }
fatal() { # the run cannot go on: count it, say why, stop (cleanup runs)
  echo "FAIL $1"; failed=$((failed + 1))
  [ -s "$work/console.log" ] && { echo "     last lines of the guest's console:"; tail -15 "$work/console.log" | sed 's/^/     /'; }
  echo "$passed passed, $failed failed, $skipped skipped"
  exit 1
}
elapsed() { echo $(( $(date +%s) - $1 )); }

# vm_build_image EXTRA_PACKAGES: scripts/package.sh and mmdebstrap side by side, then the two ext4
# images. EXTRA_PACKAGES (comma-separated, may be empty) are added to the guest; the environment
# of guest-setup.sh (VM_*) is passed through. Sets version, target, quiesce, image_s, initrd_kib;
# leaves $work/{vmlinuz,initrd.img,root.img,data.img,ssh_key,host.key}.
vm_build_image() {
  local extra=${1:+,$1} t_image package_pid mirror
  t_image=$(date +%s)
  ssh-keygen -q -t ed25519 -N '' -C quiesce-vm-test -f "$work/ssh_key"
  (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32), end="")' > "$work/host.key")
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
  # Where cargo and scripts/package.sh put their output (CARGO_TARGET_DIR honoured).
  target=$("$repo/scripts/cargo-target-dir.sh")
  (
    if "$repo/scripts/package.sh" > "$work/package.log" 2>&1; then
      cp "$target/packages/quiesce_${version}-1_amd64.deb" "$work/quiesce.deb" && touch "$work/deb.ready"
    else
      touch "$work/deb.failed"
    fi
  ) &
  package_pid=$!
  bg_pids+=("$package_pid")
  mkdir -p "$work/data"
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  # A small initramfs: only what finds and mounts a virtio root (MODULES=most makes 36 MB). The
  # module list is in place before initramfs-tools is unpacked; force-confold keeps it.
  # shellcheck disable=SC2016 # $1 in the hooks is mmdebstrap's, expanded by its shell
  if ! VM_WORK=$work VM_DATA=$work/data mmdebstrap --quiet --variant=minbase \
      --include="systemd,systemd-sysv,udev,dbus,kmod,linux-image-amd64,initramfs-tools,postgresql,e2fsprogs,openssh-server,iproute2,procps$extra" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt=force-confold \
      --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo MODULES=list > "$1/etc/initramfs-tools/conf.d/quiesce-vm.conf" && printf "virtio_pci\nvirtio_blk\nvirtio_net\nvirtio_console\next4\n" > "$1/etc/initramfs-tools/modules"' \
      --customize-hook="\"$here/guest-setup.sh\" \"\$1\"" \
      bookworm "$work/root" "${mirror:-http://deb.debian.org/debian}" > "$work/mmdebstrap.log" 2>&1; then
    tail -30 "$work/mmdebstrap.log"
    [ -e "$work/deb.failed" ] && tail -30 "$work/package.log"
    fatal "the guest image builds (mmdebstrap)"
  fi
  wait "$package_pid" || true
  [ -e "$work/deb.ready" ] || { tail -30 "$work/package.log"; fatal "scripts/package.sh builds the .deb"; }
  quiesce=$target/release/quiesce
  cp "$work"/root/boot/vmlinuz-* "$work/vmlinuz"
  cp "$work"/root/boot/initrd.img-* "$work/initrd.img"
  initrd_kib=$(( $(stat -c %s "$work/initrd.img") / 1024 ))
  mkfs.ext4 -q -F -L vmroot -d "$work/root" "$work/root.img" 3G >/dev/null
  mkfs.ext4 -q -F -L vmdata -d "$work/data" "$work/data.img" 1G >/dev/null
  rm -rf "$work/root" "$work/data"
  image_s=$(elapsed "$t_image")
}

# vm_restore_check IMAGE TAG T_PRE TXLOG: PostgreSQL 15 on the host started on a copy of IMAGE
# (the data disk at the snapshot, read out with debugfs, nothing mounted), then the checks: the
# marker row TAG, every ledger transaction of pgbench's log TXLOG committed before T_PRE (the
# guest's clock when the pre hook started), pg_amcheck. Sets pg_restore_dir and pg_started
# (for the caller's cleanup), rows_ledger, rows_history.
vm_restore_check() {
  local image=$1 tag=$2 t_pre=$3 txlog=$4 restored=0
  cp --sparse=always "$image" "$work/restore.img"
  dumpe2fs -h "$work/restore.img" > "$work/dumpe2fs.txt" 2>/dev/null || true
  grep '^Filesystem features:' "$work/dumpe2fs.txt" | sed 's/^/   /'
  check "ext4 journal clean: no needs_recovery in the copy (the freeze checkpointed it)" \
    sh -c "grep -q '^Filesystem features:.*has_journal' '$work/dumpe2fs.txt' && ! grep -q '^Filesystem features:.*needs_recovery' '$work/dumpe2fs.txt'"
  check "e2fsck -fn finds nothing" e2fsck -fn "$work/restore.img"
  pg_restore_dir=$work/pgrestore/pg15
  mkdir -p "$work/pgrestore" "$work/pgsock"
  debugfs -R "rdump /pg15 $work/pgrestore" "$work/restore.img" > "$work/debugfs.log" 2>&1 || true
  if [ -f "$pg_restore_dir/PG_VERSION" ]; then
    chown -R postgres:postgres "$work/pgrestore" "$work/pgsock"
    chmod 0700 "$pg_restore_dir"
    # The copy is of a running server: its pid file names a process of the guest.
    rm -f "$pg_restore_dir/postmaster.pid"
    # Debian keeps the cluster's configuration in /etc: a minimal one, local socket only.
    printf "listen_addresses = ''\nport = 54329\nunix_socket_directories = '%s'\nshared_buffers = 32MB\n" \
      "$work/pgsock" > "$pg_restore_dir/postgresql.conf"
    echo 'local all all trust' > "$pg_restore_dir/pg_hba.conf"
    : > "$pg_restore_dir/pg_ident.conf"
    chown postgres:postgres "$pg_restore_dir"/*.conf
    if runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pg_restore_dir" \
        -l "$work/pgrestore/server.log" -w -t 180 start > /dev/null; then
      restored=1; pg_started=1
    fi
  fi
  check "PostgreSQL 15 on the host starts on the copy" expect "$restored" 1
  if [ "$restored" = 1 ]; then
    grep -E 'redo|recover|consistent|ready to accept' "$work/pgrestore/server.log" | sed 's/^/   /' | head -6
    check "the marker row committed before the snapshot is there" \
      expect "$(vm_hpsql -c "SELECT count(*) FROM marker WHERE tag = '$tag'")" 1
    vm_hpsql -c 'SELECT client, count(*) FROM ledger GROUP BY client ORDER BY client' > "$work/restored-counts.txt" || true
    check "every ledger transaction committed before the pre hook is there" \
      sh -c "python3 '$here/check_commits.py' '$txlog' '$t_pre' '$work/restored-counts.txt' | tee /dev/stderr"
    sed 's/^/   /' "$work/check.out"
    check "pg_amcheck finds nothing (heap and every B-tree index)" \
      runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_amcheck -h "$work/pgsock" -p 54329 \
        --install-missing --heapallindexed --all
    rows_ledger=$(vm_hpsql -c 'SELECT count(*) FROM ledger' || echo '?')
    rows_history=$(vm_hpsql -c 'SELECT count(*) FROM pgbench_history' || echo '?')
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pg_restore_dir" -m fast -w stop >/dev/null || true
    pg_started=""
  else
    tail -20 "$work/pgrestore/server.log" 2>/dev/null
    rows_ledger='?'; rows_history='?'
  fi
}
vm_hpsql() { runuser -u postgres -- psql -h "$work/pgsock" -p 54329 -XAtq -v ON_ERROR_STOP=1 bench "$@"; }
