//! The shipped application hooks (`scripts/hooks/`) against real servers and fakes.
//!
//! - PostgreSQL 15 and MariaDB from Debian's packages, run as their own users with their data
//!   on loop filesystems: a write workload runs, the daemon takes a snapshot with the shipped
//!   hook, the test copies the image while it is frozen (what a storage snapshot holds),
//!   starts a fresh server on the copy and checks that every row committed before the
//!   snapshot was asked for is there and that the checkers (pg_amcheck, mariadb-check) are
//!   clean. The lock and backup holders are also driven directly: their bound, idempotent
//!   post, failures.
//! - systemd-service and container: their logic against a fake systemctl, podman and docker
//!   on PATH (the real systemd run belongs to the VM test).
//!
//! Needs root and `apt-get install postgresql mariadb-server`; fails (never skips) without.
//! Freezes only the loop filesystems it made.

#[path = "common/apps.rs"]
mod apps;
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use apps::{chown, open_dir, Maria, Pg, Workload};
use common::daemon::{free_port, Daemon};
use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Copies the shipped hook into `dir/hooks/` (root's, 0755: the daemon's rules for hook paths;
/// the worktree's own permissions are not the test's business).
fn install_hook(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/hooks")
        .join(name);
    let hooks = dir.join("hooks");
    fs::create_dir_all(&hooks).unwrap();
    fs::set_permissions(&hooks, fs::Permissions::from_mode(0o755)).unwrap();
    let dst = hooks.join(name);
    fs::copy(&src, &dst).unwrap_or_else(|e| panic!("cannot copy {}: {e}", src.display()));
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// What one direct run of a hook did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `hook phase` with `env` added, stdin /dev/null, as the daemon would.
fn run_hook(hook: &Path, phase: &str, env: &[(String, String)]) -> Ran {
    let t = Instant::now();
    let mut tries = 0;
    let out = loop {
        let r = Command::new(hook)
            .args((!phase.is_empty()).then_some(phase))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output();
        match r {
            // The copy was just written, and another test thread's fork may hold its write
            // descriptor until that child execs: "Text file busy" for a moment.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r.unwrap_or_else(|e| panic!("cannot run {}: {e}", hook.display())),
        }
    };
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t.elapsed(),
    }
}

impl Ran {
    /// Exit 0, nothing on stderr, at most one line on stdout (the hooks' promise).
    fn assert_ok(&self, what: &str) -> &Self {
        assert_eq!(
            self.code, 0,
            "{what}: exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        assert!(
            self.stdout.lines().count() <= 1,
            "{what}: more than one line on stdout: {:?}",
            self.stdout
        );
        assert!(
            self.stderr.trim().is_empty(),
            "{what}: stderr: {}",
            self.stderr
        );
        self
    }

    /// Exit 1 with a reason on stderr containing `reason`, nothing on stdout.
    fn assert_failed(&self, what: &str, reason: &str) -> &Self {
        assert_eq!(
            self.code, 1,
            "{what}: expected exit 1\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(reason),
            "{what}: stderr lacks {reason:?}: {}",
            self.stderr
        );
        assert!(self.stdout.is_empty(), "{what}: stdout: {:?}", self.stdout);
        self
    }
}

/// A daemon config that may freeze only `mount`, with one hook `name` running `hook` and `env`.
fn config(dir: &Path, mount: &Path, name: &str, hook: &Path, env: &[(String, String)]) -> PathBuf {
    let mut env: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    // The hook's state in the test's directory, as in every direct run of the hooks.
    env.insert(
        "HOOK_STATE_DIR".into(),
        Value::String(dir.join("hs").display().to_string()),
    );
    let hook = json!({
        "name": name,
        "pre": [hook, "pre"],
        "post": [hook, "post"],
        "timeout": "30s",
        "on_failure": "abort",
        "env": env,
    });
    let path = dir.join("config.yaml");
    fs::write(
        &path,
        format!(
            "{}state_dir: {:?}\nfreeze:\n  timeout: 30s\n  include_mounts: [{:?}]\nhooks: [{hook}]\n",
            common::daemon::unix_listen_none(dir),
            dir.join("state"),
            mount
        ),
    )
    .unwrap();
    path
}

/// A snapshot taken through the HTTP API with the image copied while frozen.
struct Taken {
    done: Value,
    /// The copy of the image, taken while frozen.
    copy: PathBuf,
    /// From the POST to the end of the thaw call (the application's quiet time, at most).
    quiet_ms: u128,
}

/// POSTs a snapshot of `fs`, waits for `frozen`, runs `while_frozen`, copies the image, thaws
/// (`taken`), waits for the end and checks it succeeded with application consistency.
fn snapshot_copying(d: &Daemon, fs: &LoopFs, dir: &Path, while_frozen: impl FnOnce()) -> Taken {
    let t = Instant::now();
    let body = json!({"consistency": "application", "mounts": [fs.mount]}).to_string();
    let (code, snap) = d.call("POST", "/v1/snapshots", Some(&body));
    assert_eq!(code, 202, "{snap}");
    let id = snap["id"].as_str().unwrap().to_string();
    let (_, frozen) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=40000"),
        None,
    );
    assert_eq!(frozen["state"], "frozen", "{frozen}");
    assert_eq!(frozen["consistency"], "application", "{frozen}");
    assert!(is_frozen(&fs.mount), "the data filesystem is not frozen");
    while_frozen();
    let copy = dir.join("snapshot.img");
    run(
        "cp",
        &[
            "--sparse=always",
            fs.image.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    let (code, thawed) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!(code, 200, "{thawed}");
    let quiet_ms = t.elapsed().as_millis();
    let (_, done) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=40000"),
        None,
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["consistency"], "application", "{done}");
    Taken {
        done,
        copy,
        quiet_ms,
    }
}

/// The report's entry for the hook run of `phase`.
fn hook_run<'a>(done: &'a Value, phase: &str) -> &'a Value {
    done["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["phase"] == phase)
        .unwrap_or_else(|| panic!("no {phase} hook in {done}"))
}

/// Checks the copy with e2fsck and mounts (a copy of) it read-write at `at`, as a restored VM
/// would see its disk.
fn mount_restored(copy: &Path, dir: &Path, at: &Path) -> Mount {
    let checked = check_image_copy(copy, Fs::Ext4, dir);
    let device = LoopDevice::attach(&checked.image, false);
    fs::create_dir_all(at).unwrap();
    run(
        "mount",
        &[
            "-t",
            "ext4",
            device.device.to_str().unwrap(),
            at.to_str().unwrap(),
        ],
    );
    Mount {
        target: at.to_path_buf(),
        loop_device: Some(device),
    }
}

fn env_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pg_row(n: u64) -> String {
    format!("INSERT INTO t VALUES ({n}, repeat(md5('{n}'), 16));\nSELECT {n};\n")
}

fn maria_row(n: u64) -> String {
    format!(
        "INSERT INTO app.t VALUES ({n}, REPEAT('x', 500));\nINSERT INTO app.m VALUES ({n}, REPEAT('y', 100));\nSELECT {n};\n"
    )
}

/// Every row 1..=n is there and nothing else: `SELECT count(*), max(id)` answers
/// `count\tmax` (or `count|max` from psql).
fn assert_rows(what: &str, answer: &str, at_least: u64) -> u64 {
    let nums: Vec<u64> = answer
        .trim()
        .split(['|', '\t'])
        .map(|s| s.trim().parse().unwrap_or(0))
        .collect();
    let (count, max) = (nums[0], nums[1]);
    assert_eq!(
        count, max,
        "{what}: rows 1..={max} are not all there ({count} rows)"
    );
    assert!(
        max >= at_least,
        "{what}: {max} rows, but {at_least} were committed before the snapshot was asked for"
    );
    max
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A PostgreSQL cluster on a loop filesystem, with table t.
struct PgScene {
    pg: Pg,
    fs: LoopFs,
    dir: tempfile::TempDir,
}

fn pg_scene(settings: &[&str]) -> PgScene {
    let dir = scratch_dir();
    open_dir(dir.path());
    let fs = LoopFs::create(dir.path(), "pg", Fs::Ext4, 256);
    let data = fs.path("pgdata");
    Pg::initdb(&data);
    let pg = Pg::start(
        &data,
        &dir.path().join("pgsock"),
        free_port(),
        settings,
        &dir.path().join("pg.log"),
    );
    pg.psql("CREATE TABLE t (id bigint PRIMARY KEY, pad text NOT NULL)");
    PgScene { pg, fs, dir }
}

#[test]
fn postgresql_checkpoint_snapshot_restores_every_committed_row() {
    require_root();
    let t0 = Instant::now();
    let PgScene { mut pg, fs, dir } = pg_scene(&[]);
    let hook = install_hook(dir.path(), "postgresql");
    let cfg = config(dir.path(), &fs.mount, "pg", &hook, &pg.env());
    let d = Daemon::start(&cfg);

    let w = Workload::start(pg.session(), pg_row);
    w.wait_for(300, Duration::from_secs(30));
    let before = w.committed();
    let taken = snapshot_copying(&d, &fs, dir.path(), || {});
    let pre = hook_run(&taken.done, "pre");
    assert_eq!(pre["exit_code"], 0, "{pre}");
    let pre_out = pre["output"].as_str().unwrap();
    assert!(pre_out.starts_with("CHECKPOINT done in "), "{pre_out}");
    // Writes go on after the thaw.
    let after = w.committed();
    w.wait_for(after + 50, Duration::from_secs(20));
    let last = w.finish();
    pg.stop();

    let restored = mount_restored(&taken.copy, dir.path(), &dir.path().join("restored"));
    let copy = Pg::start(
        &restored.path("pgdata"),
        &dir.path().join("pgsock2"),
        free_port(),
        &[],
        &dir.path().join("pg-restored.log"),
    );
    let rows = assert_rows(
        "restored PostgreSQL",
        &copy.psql("SELECT count(*), max(id) FROM t"),
        before,
    );
    copy.amcheck();
    let log = copy.log_text();
    eprintln!(
        "postgresql: {before} rows committed before the snapshot, {rows} in the copy, {last} in all; \
         pre {pre_out:?} ({} ms as a hook), frozen {} ms, quiet {} ms; restore: {}; test {:.1} s",
        pre["duration_ms"],
        taken.done["frozen_ms"],
        taken.quiet_ms,
        log.lines()
            .find(|l| l.contains("redo done at"))
            .unwrap_or("no redo needed"),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn postgresql_labelled_backup_restores_from_its_label_and_the_archive() {
    require_root();
    let t0 = Instant::now();
    let scratch = scratch_dir();
    open_dir(scratch.path());
    let archive = scratch.path().join("archive");
    fs::create_dir_all(&archive).unwrap();
    chown("postgres", &archive);
    let archive_command = format!("archive_command=cp %p {}/%f", archive.display());
    let PgScene { mut pg, fs, dir } = pg_scene(&["archive_mode=on", &archive_command]);
    let hook = install_hook(dir.path(), "postgresql");
    let labels = dir.path().join("labels");
    let mut env = pg.env();
    env.extend(env_of(&[
        ("PG_BACKUP", "label"),
        ("PG_BACKUP_LABEL_DIR", labels.to_str().unwrap()),
        ("HOOK_STATE_DIR", dir.path().join("hs").to_str().unwrap()),
    ]));
    let cfg = config(dir.path(), &fs.mount, "pg", &hook, &env);
    let d = Daemon::start(&cfg);

    let w = Workload::start(pg.session(), pg_row);
    w.wait_for(300, Duration::from_secs(30));
    let before = w.committed();
    let taken = snapshot_copying(&d, &fs, dir.path(), || {
        // The backup is open in the holder's session while frozen.
        let q = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_backup_start%' AND pid <> pg_backend_pid()");
        assert_eq!(q.trim(), "1", "no session holds the backup open");
    });
    let (pre, post) = (hook_run(&taken.done, "pre"), hook_run(&taken.done, "post"));
    assert_eq!(pre["exit_code"], 0, "{pre}");
    assert_eq!(post["exit_code"], 0, "{post}");
    let id = taken.done["id"].as_str().unwrap();
    let label_path = labels.join(id).join("backup_label");
    assert!(
        post["output"]
            .as_str()
            .unwrap()
            .contains(label_path.to_str().unwrap()),
        "{post}"
    );
    let label = fs::read_to_string(&label_path).unwrap();
    for want in [
        "START WAL LOCATION: ",
        "CHECKPOINT LOCATION: ",
        "BACKUP METHOD: streamed",
        "BACKUP FROM: primary",
        &format!("LABEL: quiesce snapshot {id}\n"),
        "START TIMELINE: 1\n",
    ] {
        assert!(
            label.contains(want),
            "{want:?} missing in the label:\n{label}"
        );
    }
    assert!(
        !labels.join(id).join("tablespace_map").exists(),
        "no tablespace, no map"
    );
    let w_after = w.committed();
    w.wait_for(w_after + 50, Duration::from_secs(20));
    w.finish();
    pg.stop();

    // The restore a labelled backup needs: the label in the restored data directory, archive
    // recovery from the WAL archive up to (at least) the end of the backup.
    let restored = mount_restored(&taken.copy, dir.path(), &dir.path().join("restored"));
    let data = restored.path("pgdata");
    fs::copy(&label_path, data.join("backup_label")).unwrap();
    fs::write(data.join("recovery.signal"), "").unwrap();
    chown("postgres", &data);
    let restore_command = format!("restore_command=cp {}/%f %p", archive.display());
    let copy = Pg::start(
        &data,
        &dir.path().join("pgsock2"),
        free_port(),
        &["archive_mode=off", &restore_command],
        &dir.path().join("pg-restored.log"),
    );
    let t = Instant::now();
    while copy.psql("SELECT pg_is_in_recovery()").trim() != "f" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the restored server did not finish archive recovery; its log:\n{}",
            copy.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let log = copy.log_text();
    assert!(
        log.contains("restored log file"),
        "no WAL came from the archive:\n{log}"
    );
    let start_lsn = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|l| l.split(' ').next())
        .unwrap();
    assert!(
        log.contains(&format!("redo starts at {start_lsn}")),
        "redo did not start at the label's {start_lsn}:\n{log}"
    );
    let rows = assert_rows(
        "PostgreSQL restored from the label",
        &copy.psql("SELECT count(*), max(id) FROM t"),
        before,
    );
    copy.amcheck();
    eprintln!(
        "postgresql label: {before} rows before, {rows} after recovery; pre {:?} ({} ms), post {:?} ({} ms), frozen {} ms; test {:.1} s",
        pre["output"], pre["duration_ms"], post["output"], post["duration_ms"],
        taken.done["frozen_ms"], t0.elapsed().as_secs_f64()
    );
}

#[test]
fn postgresql_hook_alone_idempotent_post_failures_and_the_holders_bound() {
    require_root();
    let dir = scratch_dir();
    open_dir(dir.path());
    // No freezing here: the data can live in the scratch directory.
    let data = dir.path().join("pgdata");
    Pg::initdb(&data);
    let pg = Pg::start(
        &data,
        &dir.path().join("pgsock"),
        free_port(),
        &[],
        &dir.path().join("pg.log"),
    );
    let hook = install_hook(dir.path(), "postgresql");
    let labels = dir.path().join("labels");
    let mut env = pg.env();
    env.extend(env_of(&[
        ("HOOK_STATE_DIR", dir.path().join("hs").to_str().unwrap()),
        ("PG_BACKUP_LABEL_DIR", labels.to_str().unwrap()),
        ("QUIESCE_HOOK", "pg"),
    ]));

    // Plain mode: pre checkpoints, post has nothing to do, any number of times.
    let r = run_hook(&hook, "pre", &env);
    r.assert_ok("pre");
    assert!(r.stdout.starts_with("CHECKPOINT done in "), "{}", r.stdout);
    for _ in 0..2 {
        run_hook(&hook, "post", &env).assert_ok("post without a backup");
    }

    // Label mode, the normal way; post twice.
    let mut lenv = env.clone();
    lenv.extend(env_of(&[
        ("PG_BACKUP", "label"),
        ("PG_BACKUP_WAIT_ARCHIVE", "false"),
        ("QUIESCE_SNAPSHOT_ID", "s1"),
    ]));
    let r = run_hook(&hook, "pre", &lenv);
    r.assert_ok("label pre");
    assert!(r.stdout.starts_with("backup started at "), "{}", r.stdout);
    // The hook returned at once although its holder runs on: the holder has neither its
    // stdout nor its stderr.
    assert!(r.took < Duration::from_secs(5), "pre took {:?}", r.took);
    let r = run_hook(&hook, "post", &lenv);
    r.assert_ok("label post");
    assert!(labels.join("s1/backup_label").is_file(), "{}", r.stdout);
    let r = run_hook(&hook, "post", &lenv);
    r.assert_ok("second label post");
    assert!(r.stdout.contains("nothing to stop"), "{}", r.stdout);

    // The holder's bound: no post comes, the backup is aborted by itself.
    let mut benv = lenv.clone();
    benv.extend(env_of(&[
        ("PG_BACKUP_TIMEOUT", "2"),
        ("QUIESCE_SNAPSHOT_ID", "s2"),
    ]));
    run_hook(&hook, "pre", &benv).assert_ok("bounded pre");
    let holder = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_backup_start%' AND pid <> pg_backend_pid()";
    assert_eq!(pg.psql(holder).trim(), "1");
    let t = Instant::now();
    while pg.psql(holder).trim() != "0" {
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "the holder outlived its 2 s bound"
        );
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "postgresql holder ended by its 2 s bound after {:.1} s from the check",
        t.elapsed().as_secs_f64()
    );
    assert!(
        pg.log_text()
            .contains("aborting backup due to backend exiting before pg_backup_stop was called"),
        "{}",
        pg.log_text()
    );
    run_hook(&hook, "post", &benv)
        .assert_failed("post after the bound", "aborted by its 2 s bound");
    assert!(!labels.join("s2").exists());
    run_hook(&hook, "post", &benv).assert_ok("post after the failed post");

    // Failures: a reason on stderr, exit 1.
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "PGPORT");
    bad.push(("PGPORT".into(), "1".into()));
    run_hook(&hook, "pre", &bad).assert_failed("pre without a server", "CHECKPOINT failed");
    let mut bad_label = lenv.clone();
    bad_label.retain(|(k, _)| k != "PGPORT");
    bad_label.push(("PGPORT".into(), "1".into()));
    run_hook(&hook, "pre", &bad_label)
        .assert_failed("label pre without a server", "pg_backup_start failed");
    run_hook(&hook, "post", &bad_label).assert_ok("post after a failed pre");
    let mut typo = env.clone();
    typo.push(("PG_BACKUP".into(), "yes".into()));
    run_hook(&hook, "pre", &typo).assert_failed("bad setting", "PG_BACKUP must be off or label");
}

// ---------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------

fn maria_tables(m: &Maria) {
    m.sql(
        "CREATE DATABASE app; \
         CREATE TABLE app.t (id BIGINT PRIMARY KEY, pad VARCHAR(600)) ENGINE=InnoDB; \
         CREATE TABLE app.m (id BIGINT PRIMARY KEY, pad VARCHAR(200)) ENGINE=MyISAM",
    );
}

/// The state of the workload's INSERT in the process list (empty when none runs).
fn insert_states(m: &Maria) -> String {
    m.sql("SELECT state FROM information_schema.processlist WHERE info LIKE 'INSERT INTO app.%'")
}

#[test]
fn mariadb_snapshot_blocks_writes_under_the_lock_and_restores_every_committed_row() {
    require_root();
    let t0 = Instant::now();
    let dir = scratch_dir();
    open_dir(dir.path());
    let fs = LoopFs::create(dir.path(), "my", Fs::Ext4, 256);
    let data = fs.path("mysql");
    Maria::install(&data);
    let mut m = Maria::start(
        &data,
        &dir.path().join("mysock"),
        &dir.path().join("my.log"),
    );
    maria_tables(&m);
    let hook = install_hook(dir.path(), "mariadb");
    let cfg = config(dir.path(), &fs.mount, "mariadb", &hook, &m.env());
    let d = Daemon::start(&cfg);

    let w = Workload::start(m.session(), maria_row);
    w.wait_for(300, Duration::from_secs(30));
    let before = w.committed();
    let mut blocked_at = 0;
    let taken = snapshot_copying(&d, &fs, dir.path(), || {
        blocked_at = w.committed();
        thread::sleep(Duration::from_millis(500));
        // Blocked by the lock (the server says so), not only by the frozen filesystem.
        let states = insert_states(&m);
        assert!(
            states.contains("lock"),
            "the workload's INSERT is not waiting for the lock: {states:?}"
        );
        assert_eq!(w.committed(), blocked_at, "a write went through the lock");
    });
    let (pre, post) = (hook_run(&taken.done, "pre"), hook_run(&taken.done, "post"));
    assert_eq!(pre["exit_code"], 0, "{pre}");
    assert_eq!(post["exit_code"], 0, "{post}");
    assert!(
        pre["output"]
            .as_str()
            .unwrap()
            .starts_with("tables flushed and locked"),
        "{pre}"
    );
    // Writes resume after post.
    let t = Instant::now();
    w.wait_for(blocked_at + 50, Duration::from_secs(20));
    let resumed_ms = t.elapsed().as_millis();
    let last = w.finish();
    m.stop();

    let restored = mount_restored(&taken.copy, dir.path(), &dir.path().join("restored"));
    let copy = Maria::start(
        &restored.path("mysql"),
        &dir.path().join("mysock2"),
        &dir.path().join("my-restored.log"),
    );
    let t_rows = assert_rows(
        "restored InnoDB table",
        &copy.sql("SELECT count(*), max(id) FROM app.t"),
        before,
    );
    let m_rows = assert_rows(
        "restored MyISAM table",
        &copy.sql("SELECT count(*), max(id) FROM app.m"),
        before,
    );
    // Under the lock nothing committed: the copy holds what was committed when the lock was
    // taken, which is the last acknowledged row, or the next one when the lock came between
    // the row's two statements (its InnoDB insert, then its MyISAM insert).
    assert!(
        (blocked_at..=blocked_at + 1).contains(&t_rows) && (blocked_at..=t_rows).contains(&m_rows),
        "rows in the copy: InnoDB {t_rows}, MyISAM {m_rows}; acknowledged when locked: {blocked_at}"
    );
    copy.check();
    eprintln!(
        "mariadb: {before} rows before the snapshot, {blocked_at} when locked and in the copy, {last} in all; \
         pre {:?} ({} ms), post {:?} ({} ms), frozen {} ms, lock held < {} ms (POST to thaw answer), \
         50 more rows {resumed_ms} ms after; test {:.1} s",
        pre["output"], pre["duration_ms"], post["output"], post["duration_ms"],
        taken.done["frozen_ms"], taken.quiet_ms, t0.elapsed().as_secs_f64()
    );
}

#[test]
fn mariadb_hook_alone_blocks_writes_releases_on_post_and_by_its_bound() {
    require_root();
    let dir = scratch_dir();
    open_dir(dir.path());
    let data = dir.path().join("mysql");
    Maria::install(&data);
    let m = Maria::start(
        &data,
        &dir.path().join("mysock"),
        &dir.path().join("my.log"),
    );
    maria_tables(&m);
    let hook = install_hook(dir.path(), "mariadb");
    let mut env = m.env();
    env.extend(env_of(&[
        ("HOOK_STATE_DIR", dir.path().join("hs").to_str().unwrap()),
        ("QUIESCE_HOOK", "db"),
    ]));

    run_hook(&hook, "post", &env).assert_ok("post before any pre");

    // pre, a blocked write, post: the write goes through.
    let pre = run_hook(&hook, "pre", &env);
    pre.assert_ok("pre");
    assert!(pre.took < Duration::from_secs(5), "pre took {:?}", pre.took);
    let w = Workload::start(m.session(), maria_row);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(w.committed(), 0, "a write went through the lock");
    assert!(insert_states(&m).contains("lock"), "{}", insert_states(&m));
    let r = run_hook(&hook, "post", &env);
    r.assert_ok("post");
    let t = Instant::now();
    w.wait_for(1, Duration::from_secs(5));
    eprintln!(
        "mariadb: pre {:?} in {:?}, post {:?} in {:?}, first write {:?} after post",
        pre.stdout.trim(),
        pre.took,
        r.stdout.trim(),
        r.took,
        t.elapsed()
    );
    run_hook(&hook, "post", &env).assert_ok("second post");
    let n = w.finish();

    // The bound: no post comes, the holder releases the lock by itself.
    m.sql("DELETE FROM app.t; DELETE FROM app.m");
    let mut benv = env.clone();
    benv.push(("MARIADB_LOCK_TIMEOUT".into(), "2".into()));
    let pre_at = Instant::now();
    run_hook(&hook, "pre", &benv).assert_ok("bounded pre");
    let w = Workload::start(m.session(), maria_row);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(w.committed(), 0, "a write went through the lock");
    w.wait_for(1, Duration::from_secs(6));
    let released = pre_at.elapsed();
    assert!(
        released >= Duration::from_secs(2),
        "released after {released:?}, before its bound"
    );
    eprintln!("mariadb: the 2 s bound released the lock {released:?} after pre started");
    w.finish();
    run_hook(&hook, "post", &benv).assert_failed("post after the bound", "by its 2 s bound");
    run_hook(&hook, "post", &benv).assert_ok("post after the failed post");
    assert!(n >= 1);

    // Failures: no server, a bad setting.
    let bad = env_of(&[
        (
            "MARIADB_SOCKET",
            dir.path().join("nosuch.sock").to_str().unwrap(),
        ),
        ("HOOK_STATE_DIR", dir.path().join("hs").to_str().unwrap()),
        ("MARIADB_LOCK_WAIT", "2"),
    ]);
    run_hook(&hook, "pre", &bad).assert_failed("pre without a server", "could not lock the tables");
    run_hook(&hook, "post", &bad).assert_ok("post after a failed pre");
    let mut typo = env.clone();
    typo.push(("MARIADB_LOCK_TIMEOUT".into(), "10s".into()));
    run_hook(&hook, "pre", &typo).assert_failed("bad setting", "whole number of seconds");
}

// ---------------------------------------------------------------------------
// systemd-service and container, against fakes
// ---------------------------------------------------------------------------

/// Writes an executable `dir/name` with `body`.
fn script(dir: &Path, name: &str, body: &str) {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A systemctl that keeps each unit's state in `$FAKE/UNIT` (`active`, `inactive`, `frozen`),
/// logs its calls to `$FAKE/log`, and fails a verb on a unit when `$FAKE/fail-VERB-UNIT` exists.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
echo "$*" >> "$FAKE/log"
verb=$1; shift
case $verb in show) prop=${1#--property=}; shift 2 ;; is-active) shift ;; esac
[ "$1" = -- ] && shift
unit=$1
state=$(cat "$FAKE/$unit" 2>/dev/null || echo inactive)
[ -e "$FAKE/fail-$verb-$unit" ] && { echo "Job for $unit failed." >&2; exit 1; }
case $verb in
is-active) [ "$state" = active ] || [ "$state" = frozen ] ;;
show) case $prop in
      ActiveState) [ "$state" = frozen ] && echo active || echo "$state" ;;
      FreezerState) [ "$state" = frozen ] && echo frozen || echo running ;;
      esac ;;
stop) echo inactive > "$FAKE/$unit" ;;
start) echo active > "$FAKE/$unit" ;;
freeze) echo frozen > "$FAKE/$unit" ;;
thaw) echo active > "$FAKE/$unit" ;;
*) echo "fake systemctl: $verb?" >&2; exit 1 ;;
esac
"#;

fn unit_state(fake: &Path, unit: &str) -> String {
    fs::read_to_string(fake.join(unit))
        .unwrap_or_else(|_| "inactive".into())
        .trim()
        .to_string()
}

#[test]
fn systemd_service_hook_against_a_fake_systemctl() {
    require_root();
    let dir = scratch_dir();
    let hook = install_hook(dir.path(), "systemd-service");
    let bin = dir.path().join("bin");
    script(&bin, "systemctl", FAKE_SYSTEMCTL);
    let fake = dir.path().join("units");
    fs::create_dir_all(&fake).unwrap();
    let set = |unit: &str, state: &str| fs::write(fake.join(unit), state).unwrap();
    let log = || fs::read_to_string(fake.join("log")).unwrap_or_default();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let base = env_of(&[
        ("PATH", &path),
        ("FAKE", fake.to_str().unwrap()),
        ("HOOK_STATE_DIR", dir.path().join("hs").to_str().unwrap()),
        ("QUIESCE_HOOK", "svc"),
        ("SERVICE_UNITS", "a.service b.service off.service"),
    ]);

    // stop mode: only the active units are stopped, and only they are started again, in
    // reverse order; post twice.
    set("a.service", "active");
    set("b.service", "active");
    set("off.service", "inactive");
    let r = run_hook(&hook, "pre", &base);
    r.assert_ok("pre");
    assert_eq!(
        r.stdout.trim(),
        "stopped: a.service b.service (not active, left alone: off.service)"
    );
    assert_eq!(unit_state(&fake, "a.service"), "inactive");
    assert_eq!(unit_state(&fake, "b.service"), "inactive");
    fs::remove_file(fake.join("log")).unwrap();
    let r = run_hook(&hook, "post", &base);
    r.assert_ok("post");
    assert_eq!(log(), "start -- b.service\nstart -- a.service\n");
    assert_eq!(unit_state(&fake, "off.service"), "inactive");
    let r = run_hook(&hook, "post", &base);
    r.assert_ok("second post");
    assert_eq!(r.stdout.trim(), "nothing to start");
    assert_eq!(log().lines().count(), 2, "the second post called systemctl");

    // freeze mode: a unit frozen by someone else stays frozen.
    let mut fenv = base.clone();
    fenv.push(("SERVICE_MODE".into(), "freeze".into()));
    set("b.service", "frozen");
    run_hook(&hook, "pre", &fenv).assert_ok("freeze pre");
    assert_eq!(unit_state(&fake, "a.service"), "frozen");
    run_hook(&hook, "post", &fenv).assert_ok("thaw post");
    assert_eq!(unit_state(&fake, "a.service"), "active");
    assert_eq!(
        unit_state(&fake, "b.service"),
        "frozen",
        "thawed a unit someone else froze"
    );
    set("b.service", "active");

    // A stop that fails: pre fails with the unit named, and post still brings back every
    // unit pre touched; a start that fails is kept for the next post.
    fs::write(fake.join("fail-stop-b.service"), "").unwrap();
    run_hook(&hook, "pre", &base).assert_failed("failing pre", "could not stop: b.service");
    fs::remove_file(fake.join("fail-stop-b.service")).unwrap();
    fs::write(fake.join("fail-start-a.service"), "").unwrap();
    run_hook(&hook, "post", &base).assert_failed("failing post", "could not bring back: a.service");
    fs::remove_file(fake.join("fail-start-a.service")).unwrap();
    let r = run_hook(&hook, "post", &base);
    r.assert_ok("retried post");
    assert_eq!(r.stdout.trim(), "brought back: a.service");
    assert_eq!(unit_state(&fake, "a.service"), "active");

    let mut none = base.clone();
    none.retain(|(k, _)| k != "SERVICE_UNITS");
    run_hook(&hook, "pre", &none).assert_failed("no units", "SERVICE_UNITS is empty");
    let mut typo = base.clone();
    typo.push(("SERVICE_MODE".into(), "pause".into()));
    run_hook(&hook, "pre", &typo).assert_failed("bad mode", "SERVICE_MODE must be stop or freeze");
}

/// A podman/docker that keeps each container's state in `$FAKE/NAME` and logs
/// `RUNTIME ARGS` to `$FAKE/log`.
const FAKE_RUNTIME: &str = r#"#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE/log"
verb=$1; shift
[ "$verb" = inspect ] && shift 2
[ "$1" = -- ] && shift
c=$1
[ -e "$FAKE/$c" ] || { echo "Error: no such container $c" >&2; exit 125; }
state=$(cat "$FAKE/$c")
case $verb in
inspect) echo "$state" ;;
pause) [ "$state" = running ] || { echo "Error: $c is not running" >&2; exit 125; }; echo paused > "$FAKE/$c"; echo "$c" ;;
unpause) [ "$state" = paused ] || { echo "Error: $c is not paused" >&2; exit 125; }; echo running > "$FAKE/$c"; echo "$c" ;;
esac
"#;

#[test]
fn container_hook_against_fake_podman_and_docker() {
    require_root();
    let dir = scratch_dir();
    let hook = install_hook(dir.path(), "container");
    let both = dir.path().join("both");
    script(&both, "podman", FAKE_RUNTIME);
    script(&both, "docker", FAKE_RUNTIME);
    let docker_only = dir.path().join("docker-only");
    script(&docker_only, "docker", FAKE_RUNTIME);
    let fake = dir.path().join("containers");
    fs::create_dir_all(&fake).unwrap();
    let set = |c: &str, state: &str| fs::write(fake.join(c), state).unwrap();
    let state = |c: &str| fs::read_to_string(fake.join(c)).unwrap().trim().to_string();
    let env_with = |bin: &Path| {
        env_of(&[
            ("PATH", &format!("{}:/usr/bin:/bin", bin.display())),
            ("FAKE", fake.to_str().unwrap()),
            ("HOOK_STATE_DIR", dir.path().join("hs").to_str().unwrap()),
            ("CONTAINERS", "web db stopped theirs"),
        ])
    };

    for (bin, runtime) in [(&both, "podman"), (&docker_only, "docker")] {
        let env = env_with(bin);
        set("web", "running");
        set("db", "running");
        set("stopped", "exited");
        set("theirs", "paused");
        let _ = fs::remove_file(fake.join("log"));
        let r = run_hook(&hook, "pre", &env);
        r.assert_ok("pre");
        assert_eq!(
            r.stdout.trim(),
            format!("paused with {runtime}: web db (left alone: stopped=exited theirs=paused)")
        );
        assert_eq!(
            (state("web"), state("db")),
            ("paused".into(), "paused".into())
        );
        let log = fs::read_to_string(fake.join("log")).unwrap();
        assert!(
            log.lines().all(|l| l.starts_with(runtime)),
            "not only {runtime} was used:\n{log}"
        );
        let r = run_hook(&hook, "post", &env);
        r.assert_ok("post");
        assert_eq!(r.stdout.trim(), format!("unpaused with {runtime}: db web"));
        assert_eq!(
            (state("web"), state("db")),
            ("running".into(), "running".into())
        );
        assert_eq!(
            state("theirs"),
            "paused",
            "unpaused a container someone else paused"
        );
        run_hook(&hook, "post", &env).assert_ok("second post");
    }

    // Unpaused meanwhile by someone else: post has nothing left to do and says so without
    // failing. A container that does not exist fails pre, naming it.
    let env = env_with(&both);
    set("web", "running");
    set("db", "running");
    run_hook(&hook, "pre", &env).assert_ok("pre");
    set("db", "running");
    let r = run_hook(&hook, "post", &env);
    r.assert_ok("post after an outside unpause");
    assert_eq!(r.stdout.trim(), "unpaused with podman: web");
    let mut missing = env.clone();
    missing.push(("CONTAINERS".into(), "web ghost".into()));
    run_hook(&hook, "pre", &missing).assert_failed("missing container", "ghost");
    run_hook(&hook, "post", &missing).assert_ok("post after a failed pre");
    assert_eq!(state("web"), "running");
    let nothing = env_of(&[
        ("PATH", dir.path().join("empty").to_str().unwrap()),
        ("CONTAINERS", "web"),
    ]);
    run_hook(&hook, "pre", &nothing)
        .assert_failed("no runtime", "neither podman nor docker is on PATH");
}

// ---------------------------------------------------------------------------
// Every hook
// ---------------------------------------------------------------------------

#[test]
fn every_hook_refuses_a_missing_or_unknown_phase_with_usage() {
    require_root();
    let dir = scratch_dir();
    for name in ["postgresql", "mariadb", "systemd-service", "container"] {
        let hook = install_hook(dir.path(), name);
        for phase in ["", "freeze", "PRE", "_feed"] {
            // `_feed` and `_client` are the holders' internals, not phases: only the
            // database hooks have them, and they are not run from a config.
            if phase == "_feed" && (name == "postgresql" || name == "mariadb") {
                continue;
            }
            let r = run_hook(&hook, phase, &[]);
            assert_eq!(r.code, 2, "{name} {phase:?}: exit {}", r.code);
            assert!(
                r.stderr.contains(&format!("usage: {name} pre|post")),
                "{name} {phase:?}: {}",
                r.stderr
            );
            assert!(r.stdout.is_empty(), "{name} {phase:?}: {}", r.stdout);
            if !phase.is_empty() {
                assert!(
                    r.stderr.contains(&format!("unknown phase \"{phase}\"")),
                    "{name} {phase:?}: {}",
                    r.stderr
                );
            }
        }
    }
}
