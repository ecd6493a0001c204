//! The daemon's logs, black-box: the built binary in a private mount namespace where
//! /run/systemd/journal is a test directory holding a datagram socket the test reads (or stops
//! reading), parsed as journald's native protocol. Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{free_port, raw_call, QUIESCE};
use common::*;
use quiesce::logging::ids;
use serde_json::Value;

/// One journal entry as received: its fields in order (a name may repeat) and when it came.
#[derive(Debug, Clone)]
struct Entry {
    fields: Vec<(String, String)>,
    at: Instant,
}

impl Entry {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.fields.iter().filter(|(k, _)| k == name).count()
    }

    fn id(&self) -> Option<&str> {
        self.get("MESSAGE_ID")
    }
}

/// Parses one datagram of the native protocol: `NAME=value\n`, or `NAME\n` + u64 LE length +
/// bytes + `\n` for values that may hold anything.
fn parse(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let end = d
            .iter()
            .position(|&b| b == b'=' || b == b'\n')
            .unwrap_or_else(|| panic!("a field without end: {d:?}"));
        let name = String::from_utf8(d[..end].to_vec()).expect("field names are ASCII");
        if d[end] == b'=' {
            let rest = &d[end + 1..];
            let nl = rest.iter().position(|&b| b == b'\n').expect("value ends");
            out.push((name, String::from_utf8_lossy(&rest[..nl]).into_owned()));
            d = &rest[nl + 1..];
        } else {
            let rest = &d[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..8 + len];
            assert_eq!(rest[8 + len], b'\n', "a binary value ends with a newline");
            out.push((name, String::from_utf8_lossy(value).into_owned()));
            d = &rest[8 + len + 1..];
        }
    }
    out
}

/// The fake journald: a datagram socket at DIR/socket, read by a thread once [`Sink::read`].
struct Sink {
    dir: PathBuf,
    socket: Arc<UnixDatagram>,
    entries: Arc<Mutex<Vec<Entry>>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn bind(dir: &Path) -> Sink {
        fs::create_dir_all(dir).unwrap();
        let socket = UnixDatagram::bind(dir.join("socket")).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Sink {
            dir: dir.to_path_buf(),
            socket: Arc::new(socket),
            entries: Arc::default(),
            stop: Arc::default(),
        }
    }

    /// Starts reading (and keeps reading until dropped).
    fn read(&self) {
        let (socket, entries, stop) =
            (self.socket.clone(), self.entries.clone(), self.stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    // The sender's probe is an empty datagram.
                    if n > 0 {
                        let fields = parse(&buf[..n]);
                        entries.lock().unwrap().push(Entry {
                            fields,
                            at: Instant::now(),
                        });
                    }
                }
            }
        });
    }

    fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    /// Waits until an entry matches, returns all entries so far.
    fn wait_for(&self, what: &str, f: impl Fn(&Entry) -> bool) -> Vec<Entry> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.entries();
            if all.iter().any(&f) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "no journal entry {what}; got:\n{}",
                show(&all)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn show(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| format!("{:?}", e.fields))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A daemon in a mount namespace of its own, where /run/systemd/journal is `journal_dir`.
/// Its stderr goes to `stderr_file`, which JOURNAL_STREAM names, as systemd does when it
/// connects a service's stderr to the journal.
struct NsDaemon {
    child: Child,
    addr: String,
    stderr_file: PathBuf,
}

impl NsDaemon {
    fn start(config: &Path, journal_dir: &Path, stderr_file: &Path, port: u16) -> NsDaemon {
        let err = fs::File::create(stderr_file).unwrap();
        let meta = err.metadata().unwrap();
        // The tmpfs hides the host's /run/systemd in the namespace only; /run where there is
        // no /run/systemd (a machine without systemd).
        let script = r#"set -e
            if [ -d /run/systemd ]; then mount -t tmpfs quiesce-test-journal /run/systemd; else mount -t tmpfs quiesce-test-journal /run; fi
            mkdir -p /run/systemd/journal
            mount --bind "$1" /run/systemd/journal
            exec "$2" daemon --config "$3""#;
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(journal_dir)
            .arg(QUIESCE)
            .arg(config)
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .env_remove("QUIESCE_LOG_TARGET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start unshare");
        // The config listens on a unix socket named after the port (see `config`).
        let sock = config.parent().unwrap().join(format!("api-{port}.sock"));
        let addr = format!("unix:{}", sock.display());
        let mut d = NsDaemon {
            child,
            addr,
            stderr_file: stderr_file.to_path_buf(),
        };
        d.wait_listening();
        d
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let sock = self.addr.strip_prefix("unix:").unwrap().to_string();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the daemon exited ({st}); stderr:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon does not listen; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_file).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = raw_call(&self.addr, method, path, body.map(str::as_bytes));
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// SIGTERM and the exit code.
    fn stop(&mut self, within: Duration) -> i32 {
        run("kill", &["-TERM", &self.child.id().to_string()]);
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                t.elapsed() < within,
                "the daemon did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        stop_child(&mut self.child, Some("TERM"), Duration::from_secs(10));
    }
}

/// A hook script (root's, 0755) with `body` as its shell code.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(dir: &Path, fs: &LoopFs, port: u16, hooks: &str) -> PathBuf {
    let config = dir.join("config.yaml");
    fs::write(
        &config,
        format!(
            "listen: \"unix:{}\"\nstate_dir: {:?}\nauth: {{mode: none}}\nfreeze:\n  timeout: 30s\n  include_mounts: [{:?}]\nhooks: {hooks}\n",
            dir.join(format!("api-{port}.sock")).display(),
            dir.join("state"),
            fs.mount
        ),
    )
    .unwrap();
    config
}

/// Starts a snapshot of `fs` and waits until it is frozen; returns its id.
fn until_frozen(d: &NsDaemon, fs: &LoopFs) -> String {
    let body = format!(r#"{{"mounts":[{:?}]}}"#, fs.mount);
    let (code, snap) = d.call("POST", "/v1/snapshots", Some(&body));
    assert_eq!(code, 202, "{snap}");
    let id = snap["id"].as_str().unwrap().to_string();
    let (code, snap) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=20000"),
        None,
    );
    assert_eq!(
        (code, snap["state"].as_str()),
        (200, Some("frozen")),
        "{snap}"
    );
    assert!(is_frozen(&fs.mount));
    id
}

/// Thaws (`taken`) and returns how long the answer took.
fn thaw(d: &NsDaemon, id: &str) -> Duration {
    let t = Instant::now();
    let (code, snap) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    let took = t.elapsed();
    assert_eq!(code, 200, "{snap}");
    took
}

fn until_done(d: &NsDaemon, id: &str) -> Value {
    let (code, snap) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
        None,
    );
    assert_eq!(code, 200, "{snap}");
    snap
}

#[test]
fn journal_records_carry_the_snapshot_hook_mount_and_message_id_fields() {
    require_root();
    let dir = scratch_dir();
    let fs = LoopFs::create(dir.path(), "data", Fs::Ext4, 32);
    let pre = script(dir.path(), "pre.sh", "echo \"pre hook says hi\"");
    let post = script(
        dir.path(),
        "post.sh",
        "echo \"post hook fails\" >&2; exit 3",
    );
    let port = free_port();
    let hooks = format!("[{{name: app, pre: [{pre:?}], post: [{post:?}]}}]");
    let config = config(dir.path(), &fs, port, &hooks);
    let sink = Sink::bind(&dir.path().join("journal"));
    sink.read();
    let d = NsDaemon::start(&config, &sink.dir, &dir.path().join("stderr"), port);

    let id = until_frozen(&d, &fs);
    thaw(&d, &id);
    let snap = until_done(&d, &id);
    assert_eq!(snap["state"], "succeeded", "{snap}");

    let all = sink.wait_for("snapshot finished", |e| {
        e.id() == Some(ids::SNAPSHOT_FINISHED)
    });
    // Everything went to the journal: nothing on stderr.
    assert_eq!(d.stderr(), "", "stderr is empty when the journal is used");
    for e in &all {
        assert_eq!(e.get("SYSLOG_IDENTIFIER"), Some("quiesce"), "{e:?}");
        assert!(e.get("MESSAGE").is_some(), "{e:?}");
        assert!(
            e.get("TARGET").is_some_and(|t| t.starts_with("quiesce")),
            "{e:?}"
        );
        let p = e.get("PRIORITY").expect("PRIORITY");
        assert!(matches!(p, "3" | "4" | "5"), "{e:?}");
        // The original location, once: never the relay's own.
        assert_eq!(e.count("CODE_FILE"), 1, "{e:?}");
        assert!(e.get("CODE_FILE").unwrap().ends_with(".rs"), "{e:?}");
        assert!(e.get("CODE_LINE").unwrap().parse::<u32>().is_ok(), "{e:?}");
    }
    assert!(
        all.iter()
            .any(|e| e.get("MESSAGE").unwrap().starts_with("listening on ")),
        "{}",
        show(&all)
    );
    let of_snap: Vec<&Entry> = all
        .iter()
        .filter(|e| e.get("QUIESCE_SNAPSHOT_ID") == Some(id.as_str()))
        .collect();
    let with_id = |mid: &str| -> Vec<&Entry> {
        of_snap
            .iter()
            .copied()
            .filter(|e| e.id() == Some(mid))
            .collect()
    };
    assert_eq!(with_id(ids::SNAPSHOT_STARTED).len(), 1, "{}", show(&all));
    let finished = with_id(ids::SNAPSHOT_FINISHED);
    assert_eq!(finished.len(), 1);
    assert!(finished[0]
        .get("MESSAGE")
        .unwrap()
        .contains("state=succeeded"));

    let mount = fs.mount.to_str().unwrap();
    for (mid, phase) in [(ids::FROZEN, "freeze"), (ids::THAWED, "thaw")] {
        let e = with_id(mid);
        assert_eq!(e.len(), 1, "{mid}: {}", show(&all));
        assert_eq!(e[0].get("QUIESCE_MOUNT"), Some(mount));
        assert_eq!(e[0].get("QUIESCE_PHASE"), Some(phase));
        assert_eq!(e[0].get("PRIORITY"), Some("5"));
        assert_eq!(e[0].get("QUIESCE_HOOK"), None);
    }
    // The pre hook's output line, in the hook's span.
    let said: Vec<&&Entry> = of_snap
        .iter()
        .filter(|e| e.get("MESSAGE") == Some("pre hook says hi"))
        .collect();
    assert_eq!(said.len(), 1, "{}", show(&all));
    assert_eq!(said[0].get("QUIESCE_HOOK"), Some("app"));
    assert_eq!(said[0].get("QUIESCE_PHASE"), Some("pre"));
    // The failed post hook.
    let failed = with_id(ids::HOOK_FAILED);
    assert_eq!(failed.len(), 1, "{}", show(&all));
    assert_eq!(failed[0].get("QUIESCE_HOOK"), Some("app"));
    assert_eq!(failed[0].get("QUIESCE_PHASE"), Some("post"));
    assert_eq!(failed[0].get("PRIORITY"), Some("4"));
    assert!(
        failed[0].get("MESSAGE").unwrap().contains("duration_ms="),
        "other fields go in the message: {:?}",
        failed[0]
    );
    // Ids that did not happen are absent.
    for mid in [ids::DEADLINE_THAW, ids::HOOK_TIMED_OUT, ids::FOREIGN_FREEZE] {
        assert!(all.iter().all(|e| e.id() != Some(mid)), "{mid}");
    }
}

#[test]
fn records_logged_while_frozen_arrive_after_the_thaw_in_order() {
    require_root();
    let dir = scratch_dir();
    let fs = LoopFs::create(dir.path(), "data", Fs::Xfs, 300);
    let port = free_port();
    let config = config(dir.path(), &fs, port, "[]");
    let sink = Sink::bind(&dir.path().join("journal"));
    sink.read();
    let d = NsDaemon::start(&config, &sink.dir, &dir.path().join("stderr"), port);

    let id = until_frozen(&d, &fs);
    let frozen_seen = Instant::now();
    let before = sink.entries().len();
    std::thread::sleep(Duration::from_millis(500));
    let during = sink.entries();
    assert_eq!(
        during.len(),
        before,
        "records arrived while frozen:\n{}",
        show(&during[before..])
    );
    assert!(
        during.iter().all(|e| e.id() != Some(ids::FROZEN)),
        "the frozen record waits for the thaw"
    );
    let thaw_asked = Instant::now();
    thaw(&d, &id);
    until_done(&d, &id);
    let all = sink.wait_for("snapshot finished", |e| {
        e.id() == Some(ids::SNAPSHOT_FINISHED)
    });
    let pos = |mid: &str| {
        all.iter()
            .position(|e| e.id() == Some(mid))
            .unwrap_or_else(|| panic!("no {mid}:\n{}", show(&all)))
    };
    let (frozen, thawed) = (pos(ids::FROZEN), pos(ids::THAWED));
    assert!(pos(ids::SNAPSHOT_STARTED) < frozen && frozen < thawed);
    assert!(thawed < pos(ids::SNAPSHOT_FINISHED));
    for i in [frozen, thawed] {
        let e = &all[i];
        assert!(e.at >= thaw_asked, "{e:?} came before the thaw");
        // Kept in memory: the record says when it was logged.
        let logged = e
            .get("QUIESCE_LOGGED_AT")
            .unwrap_or_else(|| panic!("{e:?}"));
        assert!(humantime::parse_rfc3339(logged).is_ok(), "{logged}");
    }
    assert!(frozen_seen <= thaw_asked);
    // Not kept: no such field.
    assert_eq!(
        all[pos(ids::SNAPSHOT_FINISHED)].get("QUIESCE_LOGGED_AT"),
        None
    );
}

#[test]
fn a_journal_that_stops_reading_never_slows_the_freeze_or_the_api() {
    require_root();
    let dir = scratch_dir();
    let fs = LoopFs::create(dir.path(), "data", Fs::Ext4, 32);
    // Enough records to fill the socket's queue and then the agent's own (4096): each run logs
    // at most 500 lines of its output, so 12 hooks.
    let chatty = script(
        dir.path(),
        "chatty.sh",
        "i=0; while [ $i -lt 600 ]; do echo \"line $i\"; i=$((i+1)); done",
    );
    let port = free_port();
    let hooks = (0..12)
        .map(|i| format!("{{name: chatty{i}, pre: [{chatty:?}]}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let hooks = format!("[{hooks}]");
    let config = config(dir.path(), &fs, port, &hooks);
    // Bound, never read (yet): sends to it block once its queue is full.
    let sink = Sink::bind(&dir.path().join("journal"));
    let d = NsDaemon::start(&config, &sink.dir, &dir.path().join("stderr"), port);

    let id = until_frozen(&d, &fs);
    let t = Instant::now();
    let (code, _) = d.call("GET", "/v1/health", None);
    assert_eq!(code, 200);
    let (code, snap) = d.call("GET", &format!("/v1/snapshots/{id}"), None);
    assert_eq!((code, snap["state"].as_str()), (200, Some("frozen")));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let took = thaw(&d, &id);
    assert!(took < Duration::from_millis(800), "the thaw took {took:?}");
    assert!(!is_frozen(&fs.mount));
    let snap = until_done(&d, &id);
    assert_eq!(snap["state"], "succeeded", "{snap}");
    assert_eq!(snap["consistency"], "application", "{snap}");

    // Once the journal reads again, the agent says how many records it lost.
    sink.read();
    let all = sink.wait_for("records dropped", |e| {
        e.id() == Some(ids::LOG_RECORDS_DROPPED)
    });
    let e = all
        .iter()
        .find(|e| e.id() == Some(ids::LOG_RECORDS_DROPPED))
        .unwrap();
    let n: u64 = e
        .get("MESSAGE")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 0, "{e:?}");
    assert_eq!(e.get("PRIORITY"), Some("4"));
}

#[test]
fn without_a_journal_socket_the_records_go_to_stderr_as_text() {
    require_root();
    let dir = scratch_dir();
    let fs = LoopFs::create(dir.path(), "data", Fs::Ext4, 32);
    let pre = script(dir.path(), "pre.sh", "echo \"pre hook says hi\"");
    let port = free_port();
    let hooks = format!("[{{name: app, pre: [{pre:?}]}}]");
    let config = config(dir.path(), &fs, port, &hooks);
    // The directory is there, the socket is not.
    let journal = dir.path().join("journal");
    fs::create_dir_all(&journal).unwrap();
    let mut d = NsDaemon::start(&config, &journal, &dir.path().join("stderr"), port);

    let id = until_frozen(&d, &fs);
    thaw(&d, &id);
    until_done(&d, &id);
    assert_eq!(d.stop(Duration::from_secs(10)), 0);
    let text = d.stderr();
    assert!(text.contains("journald is not reachable"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let find = |needle: &str| -> &str {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{text}"))
    };
    let span = format!("snapshot{{snapshot_id={id}}}");
    let mount = fs.mount.to_str().unwrap();
    let froze = find(&format!("froze {mount}"));
    assert!(froze.contains(" INFO "), "{froze}");
    assert!(froze.contains(&span), "{froze}");
    assert!(froze.contains("phase=freeze"), "{froze}");
    assert!(froze.contains(&format!("mount={mount}")), "{froze}");
    assert!(froze.contains("(kept while frozen)"), "{froze}");
    let said = find("pre hook says hi");
    assert!(
        said.contains(&format!(
            "{span}:hook{{hook=app phase=pre}}: pre hook says hi"
        )),
        "{said}"
    );
    // The ids are for the journal; the text stays readable.
    assert!(!text.contains("message_id"), "{text}");
    assert!(text.contains("snapshot ended"), "flushed at exit:\n{text}");
}
