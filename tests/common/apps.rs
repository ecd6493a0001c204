//! Real PostgreSQL and MariaDB servers for the application hook tests (`tests/app_hooks.rs`),
//! from Debian's `postgresql` (15) and `mariadb-server` packages.
//!
//! Each server runs as its own user (postgres, mysql) on a data directory the test chose
//! (normally on a [`super::LoopFs`]), with its socket in the test's scratch directory (never on
//! a filesystem that gets frozen), no TCP listener, and is stopped when its guard is dropped,
//! even when the test fails: declare it after the filesystem its data lives on.
//!
//! A [`Workload`] is one long client session that inserts numbered rows, one commit each, and
//! records the number of the last commit the server acknowledged.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{run, run_status, stop_child};

/// Where Debian's PostgreSQL 15 server programs are.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// What to install when a server program is missing.
pub const NEEDS_SERVERS: &str =
    "this test needs the database servers: apt-get install postgresql mariadb-server";

fn need(program: &str) {
    assert!(
        Path::new(program).exists(),
        "{program} is missing; {NEEDS_SERVERS}"
    );
}

fn uid_gid(user: &str) -> (u32, u32) {
    let uid = run("id", &["-u", user]).trim().parse().unwrap();
    let gid = run("id", &["-g", user]).trim().parse().unwrap();
    (uid, gid)
}

/// `chown -R USER PATH`.
pub fn chown(user: &str, path: &Path) {
    run(
        "chown",
        &["-R", &format!("{user}:"), path.to_str().unwrap()],
    );
}

/// Lets the servers' users walk into `dir` (scratch directories are 0700).
pub fn open_dir(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A running `postgres` (the postmaster itself is the child, run as user postgres).
pub struct Pg {
    pub data: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Pg {
    /// `initdb` (trust authentication, user postgres) into `data`, which must not exist yet;
    /// its parent is made the postgres user's.
    pub fn initdb(data: &Path) {
        need(&format!("{PG_BIN}/initdb"));
        fs::create_dir_all(data).unwrap();
        chown("postgres", data);
        run(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/initdb"),
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
            ],
        );
    }

    /// Starts a server on `data` with its socket in `sock` (created, the postgres user's),
    /// port `port` (only the socket's name: no TCP), extra `-c NAME=VALUE` settings; waits
    /// until it accepts connections.
    pub fn start(data: &Path, sock: &Path, port: u16, settings: &[&str], log: &Path) -> Pg {
        need(&format!("{PG_BIN}/postgres"));
        fs::create_dir_all(sock).unwrap();
        chown("postgres", sock);
        let (uid, gid) = uid_gid("postgres");
        let out = fs::File::create(log).unwrap();
        let mut cmd = Command::new(format!("{PG_BIN}/postgres"));
        cmd.arg("-D")
            .arg(data)
            .arg("-k")
            .arg(sock)
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", "listen_addresses=", "-c", "shared_buffers=16MB"]);
        for s in settings {
            cmd.args(["-c", s]);
        }
        let child = cmd
            .uid(uid)
            .gid(gid)
            .env("HOME", "/var/lib/postgresql")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
        let mut pg = Pg {
            data: data.to_path_buf(),
            sock: sock.to_path_buf(),
            port,
            log: log.to_path_buf(),
            child: Some(child),
        };
        pg.wait_ready(Duration::from_secs(60));
        pg
    }

    fn wait_ready(&mut self, within: Duration) {
        let t = Instant::now();
        loop {
            let (code, _, _) = run_status(
                &format!("{PG_BIN}/pg_isready"),
                &[
                    "-q",
                    "-h",
                    self.sock.to_str().unwrap(),
                    "-p",
                    &self.port.to_string(),
                ],
            );
            if code == 0 {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited ({st}); its log:\n{}", self.log_text());
            }
            assert!(
                t.elapsed() < within,
                "postgres not ready within {within:?}; its log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The connection settings of the hook's `env` (and of psql).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.sock.to_str().unwrap().into()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
        ]
    }

    /// Runs `sql` with psql as user postgres (`-At`, stop on error); returns its stdout.
    pub fn psql(&self, sql: &str) -> String {
        run(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.sock.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        )
    }

    /// A psql session as user postgres (the child itself) reading statements from its stdin.
    pub fn session(&self) -> Command {
        let (uid, gid) = uid_gid("postgres");
        let mut cmd = Command::new(format!("{PG_BIN}/psql"));
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/var/lib/postgresql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-d", "postgres"]);
        cmd
    }

    /// `pg_amcheck` over the postgres database (heap, and every btree with all its tuples);
    /// returns its output, panics unless it is clean.
    pub fn amcheck(&self) -> String {
        let (code, out, err) = run_status(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/pg_amcheck"),
                "-h",
                self.sock.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "--install-missing",
                "--heapallindexed",
                "--verbose",
                "-d",
                "postgres",
            ],
        );
        assert_eq!(code, 0, "pg_amcheck found problems:\n{out}\n{err}");
        format!("{out}{err}")
    }

    /// Fast shutdown (SIGINT), SIGKILL after 30 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Some("INT"), Duration::from_secs(30));
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------

const MARIADBD: &str = "/usr/sbin/mariadbd";

/// A tmpdir of the server's own: MariaDB removes `#sql*` files it finds in its tmpdir when it
/// starts, so two servers (or a server and a bootstrap) of parallel tests sharing /tmp delete
/// each other's temporary tables. Off the data's filesystem, which a test may freeze.
fn mariadb_tmpdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("quiesce-mariadb-tmp-")
        .tempdir()
        .unwrap();
    chown("mysql", dir.path());
    dir
}

/// Server options shared by the install and every start: small, quick, no TCP.
fn mariadb_options(data: &Path, tmp: &Path) -> Vec<String> {
    vec![
        "--no-defaults".into(),
        "--user=mysql".into(),
        format!("--datadir={}", data.display()),
        format!("--tmpdir={}", tmp.display()),
        "--innodb-log-file-size=8M".into(),
        "--innodb-buffer-pool-size=32M".into(),
        "--skip-name-resolve".into(),
    ]
}

/// A running `mariadbd` (started as root with `--user=mysql`).
pub struct Maria {
    pub data: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Maria {
    /// `mariadb-install-db` into `data` (root over the socket, no test database).
    pub fn install(data: &Path) {
        need(MARIADBD);
        fs::create_dir_all(data).unwrap();
        chown("mysql", data);
        let tmp = mariadb_tmpdir();
        let mut args = vec!["mariadb-install-db".to_string()];
        // --no-defaults must come first.
        args.extend(mariadb_options(data, tmp.path()));
        args.push("--auth-root-authentication-method=socket".into());
        args.push("--skip-test-db".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(refs[0], &refs[1..]);
    }

    /// Starts a server on `data`, its socket at `sock_dir/mysqld.sock` (the directory is
    /// created, the mysql user's); waits until it answers.
    pub fn start(data: &Path, sock_dir: &Path, log: &Path) -> Maria {
        need(MARIADBD);
        fs::create_dir_all(sock_dir).unwrap();
        chown("mysql", sock_dir);
        let sock = sock_dir.join("mysqld.sock");
        let tmp = mariadb_tmpdir();
        let child = Command::new(MARIADBD)
            .args(mariadb_options(data, tmp.path()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!(
                "--pid-file={}",
                sock_dir.join("mysqld.pid").display()
            ))
            .arg("--skip-networking")
            .arg(format!("--log-error={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mariadbd: {e}"));
        let mut m = Maria {
            data: data.to_path_buf(),
            sock,
            log: log.to_path_buf(),
            child: Some(child),
            _tmp: tmp,
        };
        let t = Instant::now();
        loop {
            let (code, _, _) = run_status(
                "mariadb-admin",
                &["--socket", m.sock.to_str().unwrap(), "ping"],
            );
            if code == 0 {
                break;
            }
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!("mariadbd exited ({st}); its log:\n{}", m.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "mariadbd not ready within 60 s; its log:\n{}",
                m.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
        m
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The connection settings of the hook's `env`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("MARIADB_SOCKET".into(), self.sock.to_str().unwrap().into())]
    }

    /// Runs `sql` (batch, no column names); returns its stdout.
    pub fn sql(&self, sql: &str) -> String {
        run(
            "mariadb",
            &[
                "--socket",
                self.sock.to_str().unwrap(),
                "--batch",
                "--skip-column-names",
                "-e",
                sql,
            ],
        )
    }

    /// A client session reading statements from its stdin.
    pub fn session(&self) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--socket").arg(&self.sock).args([
            "--batch",
            "--skip-column-names",
            "--unbuffered",
        ]);
        cmd
    }

    /// `mariadb-check --all-databases --extended`; panics unless every table is OK.
    pub fn check(&self) -> String {
        let out = run(
            "mariadb-check",
            &[
                "--socket",
                self.sock.to_str().unwrap(),
                "--all-databases",
                "--extended",
            ],
        );
        let bad: Vec<&str> = out
            .lines()
            .filter(|l| {
                let l = l.trim();
                !l.is_empty() && !l.ends_with("OK") && !l.starts_with("Note")
            })
            .collect();
        assert!(bad.is_empty(), "mariadb-check is not clean:\n{out}");
        out
    }

    /// Clean shutdown (SIGTERM), SIGKILL after 30 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Some("TERM"), Duration::from_secs(30));
        }
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------

/// One client session committing numbered rows, one per statement batch given by `batch(n)`,
/// which must end with a query that prints `n` alone on a line once `n` is committed.
pub struct Workload {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
    child: Option<Child>,
}

impl Workload {
    /// Starts `session` (stdin and stdout piped) and the thread that feeds it.
    pub fn start(mut session: Command, batch: fn(u64) -> String) -> Workload {
        let mut child = session
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the workload's client: {e}"));
        let mut stdin: ChildStdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (stop2, committed2) = (stop.clone(), committed.clone());
        let thread = thread::spawn(move || -> Result<(), String> {
            let mut n = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                n += 1;
                stdin
                    .write_all(batch(n).as_bytes())
                    .and_then(|_| stdin.flush())
                    .map_err(|e| format!("writing to the client: {e}"))?;
                match lines.next() {
                    Some(Ok(line)) if line.trim() == n.to_string() => {
                        committed2.store(n, Ordering::SeqCst)
                    }
                    other => return Err(format!("row {n}: the client answered {other:?}")),
                }
            }
            Ok(())
        });
        Workload {
            stop,
            committed,
            thread: Some(thread),
            child: Some(child),
        }
    }

    /// The number of the last row whose commit the server acknowledged.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` rows are committed (at most `within`).
    pub fn wait_for(&self, n: u64, within: Duration) {
        let t = Instant::now();
        while self.committed() < n {
            assert!(
                t.elapsed() < within,
                "the workload committed only {} rows in {within:?}",
                self.committed()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops after the current row; panics if the session failed. Returns the last row.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let result = self.thread.take().unwrap().join().unwrap();
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
        result.unwrap_or_else(|e| panic!("the workload failed: {e}"));
        self.committed()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut child) = self.child.take() {
            // Its thread may be blocked on a frozen or locked server: killing the client ends
            // the thread's read; it is not joined here.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
