//! `scripts/demo.sh` with `CARGO_TARGET_DIR` set (CI runs it without, as the README's first
//! command): from a copy of the tree that has no `target/`, building into this checkout's
//! target directory, so that a script that looked in `./target` could not find its binary.
//! Needs root (the demo's loop filesystems and FIFREEZE; it freezes only them), e2fsprogs and
//! xfsprogs; about two minutes (the crate itself is built again for the copy's path).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn the_demo_runs_with_cargo_target_dir_set() {
    require_root();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The test binary lives in TARGET/debug/deps.
    let target = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(3)
        .unwrap()
        .to_path_buf();
    assert!(target.join("debug").is_dir(), "{}", target.display());
    let scratch = scratch_dir();
    let copy = scratch.path().join("tree");
    std::fs::create_dir(&copy).unwrap();
    // The tracked and new files as they are in the work tree (what is being tested), not target/.
    let copied = Command::new("sh")
        .arg("-c")
        .arg(
            "git ls-files -z --cached --others --exclude-standard | \
             tar --null -T - -cf - | tar -xf - -C \"$1\"",
        )
        .arg("sh")
        .arg(&copy)
        .current_dir(repo)
        .status()
        .unwrap();
    assert!(copied.success());
    assert!(copy.join("scripts/demo.sh").exists() && !copy.join("target").exists());

    let out = Command::new(copy.join("scripts/demo.sh"))
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "state=succeeded  consistency=application  thaw_reason=host",
        "ext4 copy: data intact",
        "WHEN",
        "CHANNEL",
        "xfs copy: data intact",
        "== done",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}\n{stderr}");
    }
    assert!(
        !copy.join("target").exists(),
        "the demo built into ./target despite CARGO_TARGET_DIR"
    );
}
