//! The freezer for real: the built `quiesce` binary against loop-mounted ext4 and xfs, with
//! frozen state proved by writers that block and resume, and consistency proved by checking
//! copies of the images taken while frozen. Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::freeze_cli::Agent;
use common::*;
use serde_json::Value;

fn mount_report<'a>(report: &'a Value, path: &Path) -> &'a Value {
    report["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} not among the report's mounts: {report}", path.display()))
}

fn skip_reason(report: &Value, path: &Path) -> String {
    report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} not among the skipped mounts: {report}", path.display()))
        ["reason"]
        .as_str()
        .unwrap()
        .to_string()
}

fn kill_group(pgid: i32, signal: &str) {
    run("kill", &[&format!("-{signal}"), "--", &format!("-{pgid}")]);
}

/// A plain ext4 image file (not attached), for a read-only mount of its own.
fn ext4_image(dir: &Path, name: &str) -> PathBuf {
    let image = dir.join(name);
    fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
    run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
    image
}

#[test]
fn freezes_ext4_and_xfs_skips_duplicates_and_read_only_and_the_copies_are_consistent() {
    require_root();
    let dir = scratch_dir();
    let ext = LoopFs::create(dir.path(), "ext", Fs::Ext4, 64);
    let xfs = LoopFs::create(dir.path(), "xfs", Fs::Xfs, 300);
    fs::create_dir(ext.path("sub")).unwrap();
    let bind_at = dir.path().join("bind");
    let _bind = bind_mount(&ext.path("sub"), &bind_at);
    let ro_at = dir.path().join("ro");
    let _ro = ro_mount_of(&ext4_image(dir.path(), "ro.img"), &ro_at);
    let tmpfs_at = dir.path().join("tmp");
    let _tmpfs = tmpfs_mount(&tmpfs_at);
    // Written before the freeze and never synced: the freeze must flush it.
    fill_dirty(&ext.path("data"), 16);
    fill_dirty(&xfs.path("data"), 16);

    let agent = Agent::new(
        dir.path(),
        &[&ext.mount, &xfs.mount, &bind_at, &ro_at, &tmpfs_at],
    );
    let out = agent.command("check-config").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check-config: {text}");
    assert!(
        text.contains(&format!("{}  ext4", ext.mount.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}  xfs", xfs.mount.display())),
        "{text}"
    );

    let mut run = agent.freeze(&["--timeout", "30s"]);
    let frozen = run.frozen();
    assert_eq!(frozen["mounts"].as_array().unwrap().len(), 2, "{frozen}");
    for m in [&ext.mount, &xfs.mount] {
        assert_eq!(mount_report(&frozen, m)["outcome"], "frozen", "{frozen}");
    }
    assert!(skip_reason(&frozen, &bind_at).contains("same filesystem as"));
    assert_eq!(skip_reason(&frozen, &ro_at), "read-only");
    assert!(skip_reason(&frozen, &tmpfs_at).contains("tmpfs"));
    assert_eq!(agent.records().len(), 2, "a record per frozen mount");

    // Frozen for real: writers block, through the bind mount too.
    let mut writers: Vec<Writer> = [&ext.mount, &xfs.mount, &bind_at]
        .into_iter()
        .map(|m| Writer::start_probe(m))
        .collect();
    for w in writers.iter_mut() {
        w.assert_blocked_for(Duration::from_millis(300));
    }
    // What a storage snapshot taken now holds: clean filesystems with all the data.
    for (fs_, fs_kind) in [(&ext, Fs::Ext4), (&xfs, Fs::Xfs)] {
        let copy = check_image_copy(&fs_.image, fs_kind, dir.path());
        let at = dir.path().join(format!("copy-{fs_kind}"));
        let mounted = copy.mount_ro(&at);
        verify_pattern(&mounted.path("data"), 16).unwrap();
        if fs_kind == Fs::Ext4 {
            assert!(
                !copy.needed_log_replay,
                "a frozen ext4 needs no journal replay"
            );
        }
    }

    let (done, code) = run.thaw();
    assert_eq!(code, 0, "{done}");
    assert_eq!(done["thaw_reason"], "host");
    for w in writers.iter_mut() {
        w.assert_finishes_within(Duration::from_secs(5));
    }
    for m in [&ext.mount, &xfs.mount] {
        let r = mount_report(&done, m);
        assert_eq!(r["outcome"], "thawed", "{done}");
        assert_eq!(r["frozen"], false);
    }
    assert!(agent.records().is_empty(), "records removed after the thaw");
}

#[test]
fn a_stacked_filesystem_freezes_before_the_one_beneath_it_and_thaws_after_it() {
    require_root();
    let dir = scratch_dir();
    let lower = LoopFs::create(dir.path(), "lower", Fs::Ext4, 512);
    let upper = LoopFs::create(&lower.mount, "upper", Fs::Xfs, 300);
    fill_dirty(&upper.path("data"), 64);
    fill_dirty(&lower.path("data"), 8);

    // The include list in mount order: the order must come from the stack, not the list.
    let agent = Agent::new(dir.path(), &[&lower.mount, &upper.mount]);
    let mut run = agent.freeze(&["--timeout", "60s"]);
    let frozen = run.frozen();
    let paths: Vec<&str> = frozen["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [upper.mount.to_str().unwrap(), lower.mount.to_str().unwrap()],
        "freeze order: the stacked filesystem first"
    );
    assert_eq!(
        mount_report(&frozen, &upper.mount)["freeze_seq"],
        0,
        "{frozen}"
    );
    assert_eq!(
        mount_report(&frozen, &lower.mount)["freeze_seq"],
        1,
        "{frozen}"
    );
    Writer::start_probe(&upper.mount).assert_blocked_for(Duration::from_millis(200));

    // Both images, copied while frozen, are clean and hold the data in full.
    let copy = check_image_copy(&upper.image, Fs::Xfs, dir.path());
    let m = copy.mount_ro(&dir.path().join("copy-upper"));
    verify_pattern(&m.path("data"), 64).unwrap();
    let copy = check_image_copy(&lower.image, Fs::Ext4, dir.path());
    let m2 = copy.mount_ro(&dir.path().join("copy-lower"));
    verify_pattern(&m2.path("data"), 8).unwrap();
    drop((m, m2));

    let (done, code) = run.thaw();
    assert_eq!(code, 0, "{done}");
    // Exact reverse: what lies beneath is thawed first.
    assert_eq!(mount_report(&done, &lower.mount)["thaw_seq"], 0, "{done}");
    assert_eq!(mount_report(&done, &upper.mount)["thaw_seq"], 1, "{done}");
    Writer::start_probe(&upper.mount).assert_finishes_within(Duration::from_secs(5));
}

#[test]
fn a_foreign_freeze_is_reported_and_left_frozen() {
    require_root();
    let dir = scratch_dir();
    let theirs = LoopFs::create(dir.path(), "theirs", Fs::Ext4, 32);
    let ours = LoopFs::create(dir.path(), "ours", Fs::Ext4, 32);
    theirs.fsfreeze();
    let agent = Agent::new(dir.path(), &[&theirs.mount, &ours.mount]);
    let mut run = agent.freeze(&["--timeout", "30s"]);
    let frozen = run.frozen();
    let t = mount_report(&frozen, &theirs.mount);
    assert_eq!(t["outcome"], "failed", "{frozen}");
    assert!(
        t["error"].as_str().unwrap().contains("already frozen"),
        "{frozen}"
    );
    assert_eq!(mount_report(&frozen, &ours.mount)["outcome"], "frozen");
    assert_eq!(agent.records().len(), 1, "only what we froze is recorded");

    let (done, code) = run.thaw();
    assert_eq!(code, 1, "not every target froze: {done}");
    assert_eq!(mount_report(&done, &ours.mount)["outcome"], "thawed");
    Writer::start_probe(&ours.mount).assert_finishes_within(Duration::from_secs(2));
    // Theirs is still frozen, even after thaw-all: we never thaw what we did not freeze.
    let (code, _, _) = agent.thaw_all();
    assert_eq!(code, 0);
    let mut w = Writer::start_probe(&theirs.mount);
    w.assert_blocked_for(Duration::from_millis(300));
    theirs.fsunfreeze();
    w.assert_finishes_within(Duration::from_secs(2));
}

#[test]
fn the_deadline_thaws_without_the_host() {
    require_root();
    let dir = scratch_dir();
    let a = LoopFs::create(dir.path(), "a", Fs::Ext4, 32);
    let agent = Agent::new(dir.path(), &[&a.mount]);
    let mut run = agent.freeze(&["--timeout", "1s"]);
    run.frozen();
    let mut w = Writer::start_probe(&a.mount);
    w.assert_blocked_for(Duration::from_millis(200));
    // Nobody asks for the thaw (stdin stays open).
    let (done, code) = run.done(Duration::from_secs(10));
    assert_eq!(code, 1, "a deadline thaw is a failure: {done}");
    assert_eq!(done["thaw_reason"], "deadline");
    let window = done["frozen_ms"].as_f64().unwrap();
    assert!(
        (1000.0..2000.0).contains(&window),
        "frozen for {window} ms with a 1 s deadline"
    );
    w.assert_finishes_within(Duration::from_secs(1));
    assert!(agent.records().is_empty());
}

#[test]
fn sigkill_of_the_agent_thaws_at_once() {
    require_root();
    let dir = scratch_dir();
    let a = LoopFs::create(dir.path(), "a", Fs::Ext4, 32);
    let agent = Agent::new(dir.path(), &[&a.mount]);
    let mut run = agent.freeze(&["--timeout", "20s"]);
    run.frozen();
    let mut w = Writer::start_probe(&a.mount);
    w.assert_blocked_for(Duration::from_millis(200));
    common::run("kill", &["-KILL", &run.pid().to_string()]);
    let t = Instant::now();
    // The watchdog sees its stdin close and thaws: long before the 20 s deadline.
    w.assert_finishes_within(Duration::from_secs(2));
    assert!(t.elapsed() < Duration::from_secs(2));
    agent.wait_no_records(Duration::from_secs(2));
}

#[test]
fn sigterm_to_the_process_group_thaws_and_reports_shutdown() {
    require_root();
    let dir = scratch_dir();
    let a = LoopFs::create(dir.path(), "a", Fs::Ext4, 32);
    let agent = Agent::new(dir.path(), &[&a.mount]);
    let mut run = agent.freeze_in_new_group(&["--timeout", "20s"]);
    run.frozen();
    // Like Ctrl-C or systemd's stop: every process of the group gets it, the watchdog too.
    kill_group(run.pid(), "TERM");
    let (done, code) = run.done(Duration::from_secs(5));
    assert_eq!(done["thaw_reason"], "shutdown", "{done}");
    assert_eq!(code, 1);
    assert_eq!(mount_report(&done, &a.mount)["outcome"], "thawed");
    Writer::start_probe(&a.mount).assert_finishes_within(Duration::from_secs(2));
}

#[test]
fn sigkill_of_the_whole_group_is_thawed_by_thaw_all_and_by_the_next_start() {
    require_root();
    let dir = scratch_dir();
    let a = LoopFs::create(dir.path(), "a", Fs::Ext4, 32);
    let b = LoopFs::create(dir.path(), "b", Fs::Xfs, 300);
    let agent = Agent::new(dir.path(), &[&a.mount, &b.mount]);

    // Nothing recorded: thaw-all has nothing to do, and says so with exit 0.
    assert_eq!(agent.thaw_all().0, 0);

    let kill_all_frozen = |agent: &Agent| {
        let mut run = agent.freeze_in_new_group(&["--timeout", "30s"]);
        run.frozen();
        kill_group(run.pid(), "KILL");
        let _ = run.child.wait();
        // Nobody is left to thaw: still frozen, and recorded.
        let mut w = Writer::start_probe(&a.mount);
        w.assert_blocked_for(Duration::from_millis(500));
        assert_eq!(agent.records().len(), 2);
        w
    };

    let mut w = kill_all_frozen(&agent);
    let (code, stdout, stderr) = agent.thaw_all();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout.matches(r#""outcome":"thawed""#).count(),
        2,
        "{stdout}"
    );
    w.assert_finishes_within(Duration::from_secs(2));
    Writer::start_probe(&b.mount).assert_finishes_within(Duration::from_secs(2));
    assert!(agent.records().is_empty());
    let (code, stdout, _) = agent.thaw_all();
    assert_eq!((code, stdout.as_str()), (0, ""), "idempotent");

    // The next start of the agent thaws the leftovers before anything else.
    let mut w = kill_all_frozen(&agent);
    let mut run = agent.freeze(&["--timeout", "30s", "--exec", "true"]);
    let frozen = run.frozen();
    let recovered = frozen["recovered"].as_array().unwrap();
    assert_eq!(recovered.len(), 2, "{frozen}");
    assert!(
        recovered.iter().all(|r| r["outcome"] == "thawed"),
        "{frozen}"
    );
    let (done, code) = run.done(Duration::from_secs(30));
    assert_eq!(code, 0, "{done}");
    w.assert_finishes_within(Duration::from_secs(2));
    assert!(agent.records().is_empty());
}

#[test]
fn a_hung_fifreeze_does_not_keep_the_other_mounts_frozen() {
    require_root();
    let dir = scratch_dir();
    let independent = LoopFs::create(dir.path(), "independent", Fs::Ext4, 32);
    let lower = LoopFs::create(dir.path(), "lower", Fs::Ext4, 256);
    let upper = LoopFs::create(&lower.mount, "upper", Fs::Ext4, 64);
    // Dirty data on the upper filesystem can only be written out through the lower one, which
    // the test freezes itself: the upper's syncfs and FIFREEZE then hang in the kernel.
    fill_dirty(&upper.path("dirty"), 32);
    lower.fsfreeze();

    let agent = Agent::new(dir.path(), &[&upper.mount, &independent.mount]);
    let mut run = agent.freeze(&["--timeout", "2s"]);
    let frozen = run.frozen();
    let (done, code) = run.done(Duration::from_secs(30));
    assert_eq!(code, 1, "{done}");
    assert_eq!(done["thaw_reason"], "deadline", "{frozen}\n{done}");
    let window = done["frozen_ms"].as_f64().unwrap();
    assert!(
        window < 3000.0,
        "independent mount thawed {window} ms after the first FIFREEZE"
    );
    assert_eq!(mount_report(&done, &independent.mount)["outcome"], "thawed");
    let up = mount_report(&done, &upper.mount);
    assert_eq!(up["outcome"], "freezing", "{done}");
    assert!(up["error"].as_str().unwrap().contains("had not returned"));
    Writer::start_probe(&independent.mount).assert_finishes_within(Duration::from_secs(1));

    // The hung call returns once the lower filesystem is thawed, and the watchdog (which
    // outlived the agent) thaws the upper one the moment it does.
    let mut w = Writer::start_probe(&upper.mount);
    lower.fsunfreeze();
    w.assert_finishes_within(Duration::from_secs(20));
    agent.wait_no_records(Duration::from_secs(5));
    assert!(!is_frozen(&upper.mount));
    let _ = run.stderr_text();
}

#[test]
fn bad_requests_are_refused_and_freeze_nothing() {
    require_root();
    let dir = scratch_dir();
    let a = LoopFs::create(dir.path(), "a", Fs::Ext4, 32);
    let tmpfs_at = dir.path().join("tmp");
    let _tmpfs = tmpfs_mount(&tmpfs_at);
    let agent = Agent::new(dir.path(), &[&a.mount, &tmpfs_at]);
    let refused = |args: &[&str], expect: &str| {
        let out = agent.command("freeze").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
        assert!(!is_frozen(&a.mount));
    };
    refused(&["--mount", tmpfs_at.to_str().unwrap()], "tmpfs");
    refused(&["--mount", "/nonexistent/quiesce"], "/nonexistent/quiesce");
    refused(&["--mount", "relative"], "absolute");
    refused(&["--timeout", "61s"], "max_timeout");
    refused(&["--timeout", "0s"], "above 0");

    // A state_dir on a filesystem that would be frozen is refused.
    let bad = scratch_dir();
    let on_target = Agent::with_extra(bad.path(), &[&a.mount], "");
    let text = fs::read_to_string(&on_target.config).unwrap().replace(
        &format!("{:?}", on_target.state_dir),
        &format!("{:?}", a.path("state")),
    );
    fs::write(&on_target.config, text).unwrap();
    let out = on_target.command("freeze").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("would be frozen"), "{err}");
    assert!(!is_frozen(&a.mount));

    // An invalid config names the place of the error.
    fs::write(&agent.config, "freeze:\n  enabeld: true\n").unwrap();
    let out = agent.command("freeze").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.yaml:2:"), "{err}");
    assert!(!is_frozen(&a.mount));
}

#[test]
fn a_second_freezer_on_the_same_state_dir_is_refused() {
    require_root();
    let dir = scratch_dir();
    let a = LoopFs::create(dir.path(), "a", Fs::Ext4, 32);
    let agent = Agent::new(dir.path(), &[&a.mount]);
    let mut first = agent.freeze(&["--timeout", "30s"]);
    first.frozen();
    let out = agent.command("freeze").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("another quiesce process"), "{err}");
    // The refused one did not run recovery: the first freeze is intact.
    Writer::start_probe(&a.mount).assert_blocked_for(Duration::from_millis(200));
    let (done, code) = first.thaw();
    assert_eq!(code, 0, "{done}");
}

/// A record planted in a state_dir that someone else controls (here: uid 65534 owns it) for a
/// mount that an admin froze with fsfreeze, with the mount's true identity: thaw-all refuses
/// the state_dir and the admin's freeze stays.
#[test]
fn a_forged_record_does_not_make_thaw_all_thaw_an_admins_freeze() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_root();
    let dir = scratch_dir();
    let fs = LoopFs::create(dir.path(), "admin", Fs::Ext4, 32);
    let agent = Agent::new(dir.path(), &[&fs.mount]);
    // The attacker's own state_dir (e.g. created in /tmp before the agent's first start).
    let frozen = agent.state_dir.join("frozen");
    std::fs::create_dir_all(&frozen).unwrap();
    for d in [&agent.state_dir, &frozen] {
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    let st_dev = std::fs::metadata(&fs.mount).unwrap().dev();
    let fsid = nix::sys::statvfs::statvfs(&fs.mount)
        .unwrap()
        .filesystem_id() as u64;
    let (major, minor) = split_dev(fs.dev_t());
    let forged = frozen.join(format!("{major}-{minor}.json"));
    std::fs::write(
        &forged,
        serde_json::json!({
            "path": fs.mount, "fstype": "ext4", "dev": {"major": major, "minor": minor},
            "identity": {"st_dev": st_dev, "fsid": fsid}, "pid": 1, "unix_ms": 1
        })
        .to_string(),
    )
    .unwrap();
    std::os::unix::fs::chown(&forged, Some(65534), Some(65534)).unwrap();
    fs.fsfreeze();
    let (code, out, err) = agent.thaw_all();
    let mut w = Writer::start_probe(&fs.mount);
    let still_frozen = !w.finished_within(Duration::from_millis(300));
    if !still_frozen {
        panic!("thaw-all thawed the admin's freeze: {out} {err}");
    }
    fs.fsunfreeze();
    w.assert_finishes_within(Duration::from_secs(2));
    assert_eq!(code, 1, "{out} {err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    // A record planted by someone else in our own state_dir is not a record either.
    for d in [&agent.state_dir, &frozen] {
        std::os::unix::fs::chown(d, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    fs.fsfreeze();
    let (code, out, err) = agent.thaw_all();
    let mut w = Writer::start_probe(&fs.mount);
    let still_frozen = !w.finished_within(Duration::from_millis(300));
    if !still_frozen {
        panic!("thaw-all thawed the admin's freeze: {out} {err}");
    }
    fs.fsunfreeze();
    w.assert_finishes_within(Duration::from_secs(2));
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains("bad_record") && out.contains("not a record of ours"),
        "{out}"
    );
}
