//! Exercises the shared fixtures of `tests/common` for real (root, loop
//! devices). Only loop mounts made here are ever frozen.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// After the fixtures for `image` / `mount` are dropped, nothing of them is
/// left: no loop device backed by the image, no mount.
fn assert_released(image: &Path, mount: &Path) {
    let devices = loop_devices_backing(image);
    assert!(
        devices.is_empty(),
        "loop devices still attached to {}: {devices:?}",
        image.display()
    );
    assert!(!is_mounted(mount), "{} is still mounted", mount.display());
}

fn roundtrip(fs_type: Fs) {
    require_root();
    let dir = scratch_dir();
    let lfs = LoopFs::create(dir.path(), "vol", fs_type, 64);
    assert_eq!(lfs.fs, fs_type);
    assert_eq!(lfs.size_mib, 64.max(fs_type.min_size_mib()));
    assert_eq!(lfs.image, dir.path().join("vol.img"));
    assert_eq!(lfs.mount, dir.path().join("vol"));
    assert_eq!(
        mounted_fstype(&lfs.mount).as_deref(),
        Some(fs_type.as_str())
    );
    assert_eq!(
        fs::metadata(&lfs.image).unwrap().len(),
        lfs.size_mib << 20,
        "image has the requested size"
    );

    // MAJ:MIN agrees with lsblk and with st_dev of files in the mount.
    let lsblk = run("lsblk", &["-dno", "MAJ:MIN", lfs.device.to_str().unwrap()]);
    assert_eq!(lfs.major_minor(), lsblk.trim());
    assert_eq!(st_dev_major_minor(&lfs.mount), lfs.major_minor());
    assert_eq!(loop_devices_backing(&lfs.image), vec![lfs.device.clone()]);

    let data = lfs.path("data.bin");
    fill_dirty(&data, 8);
    assert!(expected_pattern_ok(&data, 8));
    assert!(!is_frozen(&lfs.mount));
    assert!(!writer_blocks(&lfs.mount, Duration::from_millis(100)));
    // The probes clean up after themselves.
    let leftovers: Vec<_> = fs::read_dir(&lfs.mount)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".quiesce-probe-"))
        .collect();
    assert!(leftovers.is_empty(), "probe files left: {leftovers:?}");

    let (image, mount) = (lfs.image.clone(), lfs.mount.clone());
    drop(lfs);
    assert_released(&image, &mount);
}

#[test]
fn ext4_loopfs_roundtrip() {
    roundtrip(Fs::Ext4);
}

#[test]
fn xfs_loopfs_roundtrip() {
    roundtrip(Fs::Xfs);
}

#[test]
fn small_ext4_is_raised_to_minimum() {
    require_root();
    let dir = scratch_dir();
    let lfs = LoopFs::create(dir.path(), "tiny", Fs::Ext4, 1);
    assert_eq!(lfs.size_mib, 32);
    assert_eq!(fs::metadata(&lfs.image).unwrap().len(), 32 << 20);
}

#[test]
fn pattern_detects_corruption_and_truncation() {
    // Plain files in the scratch directory: no loop device, no freezing.
    let dir = scratch_dir();
    let file = dir.path().join("pattern.bin");
    fill_dirty(&file, 2);
    assert!(verify_pattern(&file, 2).is_ok());
    assert!(verify_pattern(&file, 1).is_err(), "wrong size is detected");

    let mut bytes = fs::read(&file).unwrap();
    assert!(
        bytes.chunks(4096).all(|b| b.iter().any(|&x| x != 0)),
        "no all-zero block"
    );
    assert_ne!(bytes[..4096], bytes[4096..8192], "blocks differ");
    bytes[5 * 4096 + 100] ^= 0x01;
    fs::write(&file, &bytes).unwrap();
    let err = verify_pattern(&file, 2).unwrap_err();
    assert!(err.contains("block 5 "), "{err}");
    assert!(!expected_pattern_ok(&file, 2));

    fs::write(&file, vec![0u8; 2 << 20]).unwrap();
    let err = verify_pattern(&file, 2).unwrap_err();
    assert!(err.contains("all zeros"), "{err}");
}

/// glibc's `makedev()`.
fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
}

#[test]
fn split_dev_matches_glibc() {
    assert_eq!(makedev(7, 3), 0x0703);
    for (major, minor) in [(7, 3), (259, 65536), (8, 255), (4095, 1 << 19)] {
        assert_eq!(split_dev(makedev(major, minor)), (major, minor));
    }
}

#[test]
fn bind_and_tmpfs_mounts() {
    require_root();
    let dir = scratch_dir();
    let lfs = LoopFs::create(dir.path(), "src", Fs::Ext4, 32);
    fs::create_dir(lfs.path("sub")).unwrap();
    fs::write(lfs.path("sub/hello"), b"hi").unwrap();

    let bind_target = dir.path().join("bind");
    let tmpfs_target = dir.path().join("tmp");
    {
        let bind = bind_mount(&lfs.path("sub"), &bind_target);
        assert!(is_mounted(&bind.target));
        assert_eq!(fs::read(bind.path("hello")).unwrap(), b"hi");
        assert_eq!(st_dev_major_minor(&bind.target), lfs.major_minor());

        let tmp = tmpfs_mount(&tmpfs_target);
        assert_eq!(mounted_fstype(&tmp.target).as_deref(), Some("tmpfs"));
        fs::write(tmp.path("x"), b"y").unwrap();
        assert!(!is_frozen(&tmp.target));
    }
    assert!(!is_mounted(&bind_target));
    assert!(!is_mounted(&tmpfs_target));
    assert_eq!(fs::read_dir(&tmpfs_target).unwrap().count(), 0);
}

#[test]
#[should_panic(expected = "refusing to bind-mount")]
fn bind_mount_refuses_sources_outside_scratch() {
    require_root();
    let dir = scratch_dir();
    let _m = bind_mount(Path::new("/etc"), &dir.path().join("etc"));
}

#[test]
fn stacked_xfs_inside_ext4() {
    require_root();
    let dir = scratch_dir();
    let outer = LoopFs::create(dir.path(), "outer", Fs::Ext4, 128);
    let inner = LoopFs::create(&outer.mount, "inner", Fs::Xfs, 300);
    assert!(inner.image.starts_with(&outer.mount));
    assert_eq!(mounted_fstype(&inner.mount).as_deref(), Some("xfs"));
    assert_ne!(inner.major_minor(), outer.major_minor());
    assert_eq!(st_dev_major_minor(&inner.image), outer.major_minor());

    fill_dirty(&inner.path("data.bin"), 4);
    inner.sync();
    assert!(expected_pattern_ok(&inner.path("data.bin"), 4));

    let (inner_image, inner_mount) = (inner.image.clone(), inner.mount.clone());
    let (outer_image, outer_mount) = (outer.image.clone(), outer.mount.clone());
    drop(inner);
    assert_released(&inner_image, &inner_mount);
    drop(outer);
    assert_released(&outer_image, &outer_mount);
}

fn image_copy_after_sync(fs_type: Fs) {
    require_root();
    let dir = scratch_dir();
    let lfs = LoopFs::create(dir.path(), "vol", fs_type, 64);
    fill_dirty(&lfs.path("data.bin"), 8);
    lfs.sync();

    let copy = check_image_copy(&lfs.image, fs_type, dir.path());
    assert!(copy.image.starts_with(dir.path()));
    assert_ne!(copy.image, lfs.image);
    assert_eq!(copy.fs, fs_type);
    assert!(!copy.check_output.is_empty());
    {
        let ro = copy.mount_ro(&dir.path().join("ro"));
        assert_eq!(
            mounted_fstype(&ro.target).as_deref(),
            Some(fs_type.as_str())
        );
        assert!(expected_pattern_ok(&ro.path("data.bin"), 8));
        // Writes fail fast on the read-only mount: not blocked, not frozen.
        let mut w = Writer::start(&ro.path("nope"));
        assert!(w.finished_within(Duration::from_secs(2)));
        assert_eq!(w.exit_ok(), Some(false));
        assert!(!is_frozen(&ro.target));
        assert!(ro.loop_device.is_some());
    }
    assert!(!is_mounted(&dir.path().join("ro")));
    assert!(loop_devices_backing(&copy.image).is_empty());
    // The original is untouched and still mounted read-write.
    assert!(expected_pattern_ok(&lfs.path("data.bin"), 8));
}

#[test]
fn ext4_image_copy_after_sync() {
    image_copy_after_sync(Fs::Ext4);
}

#[test]
fn xfs_image_copy_after_sync() {
    image_copy_after_sync(Fs::Xfs);
}

/// The one kind of test that freezes: with `fsfreeze -f` on a loop mount made
/// here. Data written (dirty, no fsync) before the freeze is in a copy of the
/// image taken while frozen.
fn freeze_blocks_writers_until_thaw(fs_type: Fs) {
    require_root();
    let dir = scratch_dir();
    let lfs = LoopFs::create(dir.path(), "vol", fs_type, 64);
    fill_dirty(&lfs.path("dirty.bin"), 8);
    assert!(!is_frozen(&lfs.mount));

    lfs.fsfreeze();
    assert!(writer_blocks(&lfs.mount, Duration::from_millis(300)));
    let mut w = Writer::start(&lfs.path("after-freeze"));
    w.assert_blocked_for(Duration::from_millis(300));
    assert_eq!(w.exit_ok(), None);
    // Reads still work while frozen.
    assert!(expected_pattern_ok(&lfs.path("dirty.bin"), 8));

    let copy = check_image_copy(&lfs.image, fs_type, dir.path());
    if fs_type == Fs::Ext4 {
        assert!(
            !copy.needed_log_replay,
            "a frozen ext4 has its journal flushed and needs_recovery cleared"
        );
    }

    let thawed_at = Instant::now();
    lfs.fsunfreeze();
    w.assert_finishes_within(Duration::from_secs(2));
    assert!(thawed_at.elapsed() < Duration::from_secs(2));
    assert_eq!(fs::read(lfs.path("after-freeze")).unwrap(), b"probe");
    assert!(!is_frozen(&lfs.mount));

    let ro = copy.mount_ro(&dir.path().join("copy"));
    assert!(
        expected_pattern_ok(&ro.path("dirty.bin"), 8),
        "data written before the freeze is in the frozen copy"
    );
    assert!(!ro.path("after-freeze").exists());
}

#[test]
fn ext4_freeze_blocks_writers_until_thaw() {
    freeze_blocks_writers_until_thaw(Fs::Ext4);
}

#[test]
fn xfs_freeze_blocks_writers_until_thaw() {
    freeze_blocks_writers_until_thaw(Fs::Xfs);
}

#[test]
fn drop_thaws_and_releases_a_frozen_filesystem() {
    require_root();
    let dir = scratch_dir();
    let lfs = LoopFs::create(dir.path(), "vol", Fs::Ext4, 32);
    lfs.fsfreeze();
    let mut w = Writer::start(&lfs.path("blocked"));
    w.assert_blocked_for(Duration::from_millis(200));
    let (image, mount) = (lfs.image.clone(), lfs.mount.clone());
    drop(lfs); // thaws, then unmounts once the writer is through
    w.assert_finishes_within(Duration::from_secs(2));
    assert_released(&image, &mount);
}

#[test]
fn dropping_a_blocked_writer_does_not_hang() {
    require_root();
    let dir = scratch_dir();
    let lfs = LoopFs::create(dir.path(), "vol", Fs::Ext4, 32);
    lfs.fsfreeze();
    let started = Instant::now();
    let w = Writer::start_probe(&lfs.mount);
    drop(w);
    assert!(started.elapsed() < Duration::from_secs(1));
    lfs.fsunfreeze();
}

#[test]
fn dropping_a_stack_with_the_outer_frozen_does_not_hang() {
    require_root();
    let dir = scratch_dir();
    let outer = LoopFs::create(dir.path(), "outer", Fs::Ext4, 128);
    let inner = LoopFs::create(&outer.mount, "inner", Fs::Ext4, 32);
    fill_dirty(&inner.path("data.bin"), 2);
    inner.fsfreeze();
    outer.fsfreeze();
    let (image, mount) = (inner.image.clone(), inner.mount.clone());
    drop(inner); // must thaw `outer` before thawing and unmounting itself
    assert_released(&image, &mount);
    assert!(!is_frozen(&outer.mount));
}

#[test]
fn fsfreeze_refuses_a_mount_point_that_is_not_the_loop_device() {
    require_root();
    let dir = scratch_dir();
    let lfs = LoopFs::create(dir.path(), "vol", Fs::Ext4, 32);
    // Unmount behind the fixture's back: the directory now belongs to /tmp,
    // which must never be frozen.
    run("umount", &[lfs.mount.to_str().unwrap()]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lfs.fsfreeze()));
    let message = result.expect_err("fsfreeze must refuse");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("refusing to run fsfreeze"), "{message}");
    assert!(!is_frozen(dir.path()));
}

#[test]
fn run_helpers_report_failures() {
    assert_eq!(run("sh", &["-c", "printf out"]), "out");
    let (code, out, err) = run_status("sh", &["-c", "printf o; printf e >&2; exit 3"]);
    assert_eq!((code, out.as_str(), err.as_str()), (3, "o", "e"));
    let result = std::panic::catch_unwind(|| run("sh", &["-c", "echo boom >&2; exit 2"]));
    let message = result.expect_err("run must panic");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("exit code 2") && message.contains("boom"),
        "{message}"
    );
}

#[test]
fn require_root_passes_as_root() {
    // The test suite runs as root; without it every other test here fails
    // with the message in NEEDS_ROOT.
    require_root();
    assert!(NEEDS_ROOT.contains("sudo scripts/test.sh"));
}
