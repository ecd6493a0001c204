//! `quiesce check-config` as an operator runs it: the built binary on the fixtures of
//! `tests/fixtures/config/` (see its README), with real hook files and keys whose owners and
//! modes are set per case. Needs root (chown, and the rules are about root's files); it never
//! freezes anything: every fixture restricts the freeze to a path that is not a mount.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const QUIESCE: &str = env!("CARGO_BIN_EXE_quiesce");
const NOBODY: u32 = 65534;

/// A scratch folder under /tmp with the hooks and keys the fixtures name.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        // /tmp is root's and sticky; the folder itself is root's, 0700.
        let dir = tempfile::Builder::new()
            .prefix("quiesce-config-test-")
            .tempdir_in("/tmp")
            .unwrap();
        // A new folder belongs to the effective uid.
        assert_eq!(
            fs::metadata(dir.path()).unwrap().uid(),
            0,
            "this test needs root (chown, and hooks must be root's): run it as root"
        );
        let w = World { dir };
        let hooks = w.path("hooks");
        fs::create_dir(&hooks).unwrap();
        w.file("hooks/ok.sh", b"#!/bin/sh\nexit 0\n", 0o755, None);
        w.file("hooks/plain.sh", b"#!/bin/sh\n", 0o644, None);
        w.file("hooks/gw.sh", b"#!/bin/sh\n", 0o775, None);
        w.file("hooks/nobody.sh", b"#!/bin/sh\n", 0o755, Some(NOBODY));
        symlink("ok.sh", hooks.join("link.sh")).unwrap();
        symlink("../gwdir/ok.sh", hooks.join("to-gw.sh")).unwrap();
        fs::create_dir(w.path("gwdir")).unwrap();
        w.file("gwdir/ok.sh", b"#!/bin/sh\n", 0o755, None);
        fs::set_permissions(w.path("gwdir"), fs::Permissions::from_mode(0o775)).unwrap();
        fs::create_dir(w.path("keys")).unwrap();
        w.file("keys/ok.key", &[7; 32], 0o600, None);
        w.file("keys/short.key", &[7; 16], 0o600, None);
        w.file("keys/open.key", &[7; 32], 0o644, None);
        w.file("keys/nobody.key", &[7; 32], 0o600, Some(NOBODY));
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn file(&self, rel: &str, content: &[u8], mode: u32, owner: Option<u32>) {
        let p = self.path(rel);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&p, Some(uid), None).unwrap();
        }
    }

    /// Copies a fixture (a file, as `config.yaml`, or a folder) into `cases/NAME/`, with
    /// `@DIR@` replaced; returns the main config's path.
    fn case(&self, fixture: &str) -> PathBuf {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(fixture);
        let to = self.path("cases").join(fixture);
        if from.is_dir() {
            self.copy_tree(&from, &to);
        } else {
            fs::create_dir_all(&to).unwrap();
            self.copy_file(&from, &to.join("config.yaml"));
        }
        to.join("config.yaml")
    }

    fn copy_tree(&self, from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                self.copy_tree(&e.path(), &target);
            } else {
                self.copy_file(&e.path(), &target);
            }
        }
    }

    fn copy_file(&self, from: &Path, to: &Path) {
        let text = fs::read_to_string(from).unwrap();
        let dir = self.dir.path().to_str().unwrap();
        fs::write(to, text.replace("@DIR@", dir)).unwrap();
    }

    /// Runs check-config; stdout and stderr with the case folder and the scratch folder
    /// written as `CASE/` and `@DIR@/`.
    fn check(&self, config: &Path) -> Outcome {
        let out = Command::new(QUIESCE)
            .arg("check-config")
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        let case = format!("{}/", config.parent().unwrap().display());
        let dir = self.dir.path().display().to_string();
        let clean = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .replace(&case, "CASE/")
                .replace(&dir, "@DIR@")
        };
        Outcome {
            code: out.status.code(),
            stdout: clean(&out.stdout),
            stderr: clean(&out.stderr),
        }
    }

    /// check-config on a fixture that must be refused: exit 1, nothing on stdout, and the
    /// error lines (as [`World::check`] writes them).
    fn refused(&self, fixture: &str) -> Vec<String> {
        let o = self.check(&self.case(fixture));
        assert_eq!(o.code, Some(1), "{fixture}: {o:#?}");
        assert_eq!(o.stdout, "", "{fixture}: {o:#?}");
        o.stderr.lines().map(String::from).collect()
    }

    /// [`World::refused`] with exactly one error, which must be `expected`.
    fn refused_with(&self, fixture: &str, expected: &str) {
        assert_eq!(self.refused(fixture), [expected], "{fixture}");
    }

    /// [`World::refused`] with exactly one error, at `place` (`config.yaml:3:5: `), that
    /// contains `words`.
    fn refused_at(&self, fixture: &str, place: &str, words: &str) {
        let e = self.refused(fixture);
        assert_eq!(e.len(), 1, "{fixture}: {e:#?}");
        assert!(
            e[0].starts_with(&format!("CASE/{place}: ")),
            "{fixture}: {e:#?}"
        );
        assert!(e[0].contains(words), "{fixture}: {e:#?}");
    }
}

#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

#[test]
fn a_full_config_with_drop_ins_prints_the_hooks_in_order() {
    let w = World::new();
    let o = w.check(&w.case("good/full"));
    assert_eq!(o.code, Some(0), "{o:#?}");
    assert_eq!(o.stderr, "", "{o:#?}");
    let expected_head = "\
CASE/config.yaml: OK
files read:
  CASE/config.yaml
  CASE/config.d/10-db.yaml
  CASE/config.d/15-empty.yaml
  CASE/config.d/20-app.yaml
listen: 127.0.0.1:7380 (auth hmac, key @DIR@/keys/ok.key)
hooks, in order (post hooks run in reverse):
  first  (from CASE/config.yaml)
    pre:  @DIR@/hooks/ok.sh pre
    post: @DIR@/hooks/ok.sh post
    timeout 5s, on_failure continue, env: APP, MODE
  db  (from CASE/config.d/10-db.yaml)
    pre:  @DIR@/hooks/ok.sh \"db pre\"
    timeout 30s, on_failure abort, env: (none)
  app  (from CASE/config.d/20-app.yaml)
    post: @DIR@/hooks/link.sh
    timeout 500ms, on_failure continue, env: (none)
mounts to freeze, in order:
  (none)
skipped:
";
    assert!(o.stdout.starts_with(expected_head), "{}", o.stdout);
    // The mounts of the machine are listed as skipped, none as a target.
    assert!(
        o.stdout.contains("not in freeze.include_mounts"),
        "{}",
        o.stdout
    );
}

#[test]
fn small_good_configs() {
    let w = World::new();
    for fixture in ["good/minimal.yaml", "good/vsock.yaml"] {
        let o = w.check(&w.case(fixture));
        assert_eq!(o.code, Some(0), "{fixture}: {o:#?}");
        assert!(o
            .stdout
            .contains("hooks, in order (post hooks run in reverse):\n  (none)\n"));
        assert!(o.stdout.contains("mounts to freeze, in order:\n  (none)\n"));
    }
    let o = w.check(&w.case("good/vsock.yaml"));
    assert!(o
        .stdout
        .contains("listen: vsock:7380 (auth hmac, key @DIR@/keys/ok.key)\n"));
}

#[test]
fn the_shipped_example_is_valid_with_a_real_key() {
    let w = World::new();
    let example = include_str!("../config.example.yaml");
    assert!(example.contains("/etc/quiesce/host.key"));
    let text = example
        .replace(
            "/etc/quiesce/host.key",
            w.path("keys/ok.key").to_str().unwrap(),
        )
        .replace(
            "include_mounts: []",
            "include_mounts: [/nonexistent-quiesce]",
        );
    let config = w.path("example.yaml");
    fs::write(&config, text).unwrap();
    let o = w.check(&config);
    assert_eq!(o.code, Some(0), "{o:#?}");
}

#[test]
fn yaml_errors() {
    let w = World::new();
    w.refused_at(
        "bad/malformed.yaml",
        "config.yaml:4:4",
        "did not find expected key, while parsing a block mapping at line 3 column 3",
    );
    w.refused_at(
        "bad/wrong-type.yaml",
        "config.yaml:4:12",
        "freeze.enabled: invalid type: string \"sometimes\", expected a boolean",
    );
    w.refused_at(
        "bad/unknown-key.yaml",
        "config.yaml:4:3",
        "freeze: unknown field `exclude_mount`, expected one of",
    );
    w.refused_with(
        "bad/duration-no-unit.yaml",
        "CASE/config.yaml:7:14: hooks[0].timeout: duration \"30\" has no unit (use ms, s, m or h, e.g. \"10s\")",
    );
}

#[test]
fn drop_ins_may_only_add_hooks() {
    let w = World::new();
    w.refused_with(
        "bad/drop-in-unknown-key",
        "CASE/config.d/50-extra.yaml:4:1: only `hooks` may be set in a drop-in, not `freeze` (other settings belong in the main config file)",
    );
    w.refused_with(
        "bad/duplicate-hook",
        "CASE/config.d/10-again.yaml:4:5: hook app: the name is already used by the hook at CASE/config.yaml:5:5: hook names must be unique",
    );
}

#[test]
fn hook_commands_must_be_trustworthy() {
    let w = World::new();
    w.refused_with(
        "bad/relative-hook.yaml",
        "CASE/config.yaml:6:5: hook app: pre hooks/ok.sh is not an absolute path: write the full path, starting with /",
    );
    w.refused_with(
        "bad/missing-hook.yaml",
        "CASE/config.yaml:7:5: hook app: post @DIR@/hooks/missing.sh does not exist: install it there or correct the path",
    );
    w.refused_with(
        "bad/not-executable.yaml",
        "CASE/config.yaml:6:5: hook app: pre @DIR@/hooks/plain.sh is not executable (mode 0644): chmod u+x @DIR@/hooks/plain.sh",
    );
    w.refused_with(
        "bad/group-writable.yaml",
        "CASE/config.yaml:7:5: hook app: pre @DIR@/hooks/gw.sh is writable by group or others (mode 0775): chmod go-w @DIR@/hooks/gw.sh",
    );
    w.refused_with(
        "bad/not-root.yaml",
        "CASE/config.yaml:5:17: hook app: pre @DIR@/hooks/nobody.sh is owned by uid 65534, not root: chown root @DIR@/hooks/nobody.sh",
    );
    w.refused_with(
        "bad/dir-group-writable.yaml",
        "CASE/config.yaml:6:5: hook app: post @DIR@/gwdir/ok.sh is under @DIR@/gwdir, which is writable by group or others and not sticky (mode 0775): chmod go-w @DIR@/gwdir",
    );
    // Through a symlink in a good folder to a file in a shared one.
    w.refused_with(
        "bad/symlink-into-shared-dir.yaml",
        "CASE/config.yaml:6:5: hook app: pre @DIR@/hooks/to-gw.sh is under @DIR@/gwdir, which is writable by group or others and not sticky (mode 0775): chmod go-w @DIR@/gwdir",
    );
    w.refused_with(
        "bad/reserved-env.yaml",
        "CASE/config.yaml:9:7: hook app: env QUIESCE_PHASE is reserved: quiesce sets the QUIESCE_* variables itself",
    );
}

#[test]
fn the_key_file_must_be_private() {
    let w = World::new();
    w.refused_with(
        "bad/key-short.yaml",
        "CASE/config.yaml:5:3: auth.key_file @DIR@/keys/short.key holds 16 bytes, fewer than 32: use a key of at least 32 random bytes",
    );
    w.refused_with(
        "bad/key-open.yaml",
        "CASE/config.yaml:5:3: auth.key_file @DIR@/keys/open.key gives permissions to group or others (mode 0644): chmod 0600 @DIR@/keys/open.key",
    );
    w.refused_with(
        "bad/key-nobody.yaml",
        "CASE/config.yaml:5:3: auth.key_file @DIR@/keys/nobody.key is owned by uid 65534, not root: chown root @DIR@/keys/nobody.key",
    );
    w.refused_with(
        "bad/key-missing.yaml",
        "CASE/config.yaml:4:3: auth.key_file @DIR@/keys/none.key does not exist: put the key shared with the host there (at least 32 bytes, owned by root, mode 0600) or correct auth.key_file",
    );
}

#[test]
fn listen_and_auth() {
    let w = World::new();
    w.refused_with(
        "bad/auth-none-public.yaml",
        "CASE/config.yaml:3:3: auth.mode none is refused unless listen is a unix socket (unix:PATH, root's peers only), and listen is 0.0.0.0:7380: any local user could freeze the filesystems; use auth.mode hmac with a key_file, or listen on unix:/run/quiesce/api.sock",
    );
    w.refused_at(
        "bad/listen-hostname.yaml",
        "config.yaml:1:1",
        "listen: \"localhost:7380\" is not an IP address with a port or vsock:PORT (host names are not resolved)",
    );
}

#[test]
fn every_error_of_every_file_at_once() {
    let w = World::new();
    let e = w.refused("bad/many");
    let expected = [
        "CASE/config.yaml:2:1: state_dir run/quiesce is not an absolute path",
        "CASE/config.yaml:5:3: auth.key_file @DIR@/keys/short.key holds 16 bytes",
        "CASE/config.yaml:10:5: hook one: pre @DIR@/hooks/gw.sh is writable by group or others",
        "CASE/config.yaml:11:5: hook one: post @DIR@/hooks/nobody.sh is owned by uid 65534",
        "CASE/config.d/a.yaml:4:1: did not find expected ',' or ']'",
        "CASE/config.d/b.yaml:2:5: hook three has neither pre nor post",
        "CASE/config.d/b.yaml:3:5: hook one: the name is already used by the hook at CASE/config.yaml:9:5",
        "CASE/config.d/b.yaml:4:5: hook one: pre @DIR@/hooks/plain.sh is not executable",
        "CASE/config.d/b.yaml:5:11: hook one: env variable name \"A=B\" may not contain '=' or NUL",
    ];
    assert_eq!(e.len(), expected.len(), "{e:#?}");
    for (line, want) in e.iter().zip(expected) {
        assert!(
            line.starts_with(want),
            "{line}\nshould start with\n{want}\nall: {e:#?}"
        );
    }
}

#[test]
fn a_missing_config_file_is_an_error() {
    let w = World::new();
    let o = w.check(&w.path("nowhere/config.yaml"));
    assert_eq!(o.code, Some(1), "{o:#?}");
    assert!(
        o.stderr
            .starts_with("CASE/config.yaml:1:1: cannot read: No such file or directory"),
        "{o:#?}"
    );
}

/// The key in a directory that its owner (not root) controls, swapped with the owner's own
/// key by RENAME_EXCHANGE as fast as possible while the agent loads and reads it: the owner's
/// key is never accepted (the directory is refused by the walk, and the key is read from the
/// one descriptor that was checked).
#[test]
fn a_swapped_key_is_never_accepted() {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let w = World::new();
    let dir = w.dir.path().join("userdir");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(w.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let good = dir.join("host.key");
    let evil = dir.join("evil.key");
    fs::write(&good, "root-key-0123456789abcdef0123456789abcdef\n").unwrap();
    fs::set_permissions(&good, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&evil, "evil-key-0123456789abcdef0123456789abcdef\n").unwrap();
    fs::set_permissions(&evil, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&evil, Some(NOBODY), Some(NOBODY)).unwrap();
    let config = w.dir.path().join("config.yaml");
    fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:7380\nstate_dir: /run/quiesce-test-unused\nauth: {{mode: hmac, key_file: {good:?}}}\nfreeze: {{include_mounts: [/nonexistent-quiesce]}}\n"
        ),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, good, evil) = (stop.clone(), good.clone(), evil.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat2(
                    AT_FDCWD,
                    &good,
                    AT_FDCWD,
                    &evil,
                    RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let evil_key = quiesce::auth::Key::from_file_contents(fs::read(&evil).unwrap_or_default());
    let mut accepted = 0;
    let mut evil_accepted = 0;
    for _ in 0..3000 {
        // What the daemon does at start and on SIGHUP: load (with the key file's rules), read.
        if let Ok(c) = quiesce::commands::load_config_and_key(&config) {
            if let Ok(key) = quiesce::http::hmac::read_key(&c) {
                accepted += 1;
                if key.ne(&quiesce::auth::Key::from_file_contents(
                    b"root-key-0123456789abcdef0123456789abcdef\n".to_vec(),
                )
                .unwrap())
                {
                    evil_accepted += 1;
                }
            }
        }
        // The read alone, on a path that is swapped under it: the owner's file is refused.
        if let Ok(bytes) = quiesce::http::hmac::read_key_file(&good) {
            assert!(
                bytes.starts_with(b"root-key"),
                "the swapped-in key was read"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    drop(evil_key);
    assert!(swaps > 1000, "the race did not run ({swaps} swaps)");
    assert_eq!(evil_accepted, 0, "the owner's key was accepted");
    assert_eq!(
        accepted, 0,
        "a key in a directory that uid 65534 owns was accepted"
    );
    // And check-config says why.
    let out = Command::new(QUIESCE)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("which is owned by uid 65534, not root"),
        "{err}"
    );
}
