# shellcheck shell=bash
# Loop filesystems for the bench scripts (sourced). The caller defines WORK (its temp dir),
# IMG_MIB (image size) and die(); filesystems live in $WORK/NAME.img, mounted on $WORK/mnt/NAME.

# Attach IMG to a free loop device (direct I/O when possible, like a virtual disk without a
# second page cache); retries because another process may take the same free device.
attach() {
    local img=$1 dev
    for _ in 1 2 3 4 5; do
        if dev=$(losetup --find --show --direct-io=on "$img" 2>/dev/null); then echo "$dev"; return; fi
        if dev=$(losetup --find --show "$img" 2>/dev/null); then echo "$dev"; return; fi
        sleep 0.2
    done
    return 1
}

# make_fs NAME FSTYPE: creates $WORK/NAME.img, mounts it on $WORK/mnt/NAME, prints the device.
# Runs in a command substitution: the caller fills in its cleanup lists beforehand, for the trap.
make_fs() {
    local fs=$2 img="$WORK/$1.img" dev mnt="$WORK/mnt/$1"
    truncate -s "${IMG_MIB}M" "$img"
    case $fs in
        # No lazy init: ext4lazyinit would write inode tables in the background during the runs.
        ext4) mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img" ;;
        xfs) mkfs.xfs -q -f "$img" ;;
    esac
    dev=$(attach "$img") || die "cannot attach a loop device to $img"
    mkdir -p "$mnt"
    mount -t "$fs" "$dev" "$mnt"
    # Guard: what we are about to freeze is exactly this loop device, mounted inside $WORK.
    [[ $(findmnt -n -o SOURCE --mountpoint "$mnt") == "$dev" && $mnt == "$WORK"/mnt/* ]] ||
        die "mount check failed for $mnt"
    echo "$dev"
}

# refuse_unless_own_loop MOUNT...: dies unless each is a loop mount of ours in $WORK/mnt.
refuse_unless_own_loop() {
    local m
    for m in "$@"; do
        [[ $(realpath "$m") == "$WORK"/mnt/? && $(findmnt -n -o SOURCE --mountpoint "$m") == /dev/loop* ]] ||
            die "refusing to freeze $m"
    done
}
