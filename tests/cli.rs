//! `quiesce snapshot` and `quiesce status`, black-box: the built binary against real daemons on
//! loopback ports, each with its own loop filesystem and state_dir; a local TCP receiver for the
//! callbacks. Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{free_port, Daemon, QUIESCE};
use common::*;
use serde_json::{json, Value};

const KEY: &str = "0123456789abcdef0123456789abcdef-cli-test-key\n";

// ---------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------

/// One agent: a daemon with a loop filesystem of its own. Fields drop in order: the daemon
/// first (it thaws), then the filesystem, then the scratch directory.
struct Agent {
    daemon: Daemon,
    fs: LoopFs,
    dir: tempfile::TempDir,
    url: String,
}

impl Agent {
    /// `hmac`: the agent requires signed requests, with the key in `key_file()`.
    fn start(hmac: bool) -> Agent {
        let dir = scratch_dir();
        let fs = LoopFs::create(dir.path(), "data", Fs::Ext4, 32);
        // Unsigned requests only on a unix socket (root's peers): `auth.mode: none` is
        // refused on TCP.
        let listen_auth = if hmac {
            // The scratch directory is root's and 0700; the key 0600, as the daemon demands.
            let key = dir.path().join("host.key");
            fs::write(&key, KEY).unwrap();
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
            format!(
                "listen: 127.0.0.1:{}\nauth: {{mode: hmac, key_file: {key:?}}}\n",
                free_port()
            )
        } else {
            common::daemon::unix_listen_none(dir.path())
        };
        let config = dir.path().join("config.yaml");
        fs::write(
            &config,
            format!(
                "{listen_auth}state_dir: {:?}\nfreeze:\n  timeout: 10s\n  include_mounts: [{:?}]\nhooks: []\n",
                dir.path().join("state"),
                fs.mount
            ),
        )
        .unwrap();
        let daemon = Daemon::start(&config);
        let url = if daemon.addr.starts_with("unix:") {
            daemon.addr.clone()
        } else {
            format!("http://{}", daemon.addr)
        };
        Agent {
            daemon,
            fs,
            dir,
            url,
        }
    }

    fn key_file(&self) -> String {
        self.dir.path().join("host.key").display().to_string()
    }

    fn mount(&self) -> String {
        self.fs.mount.display().to_string()
    }

    /// One raw API request (Connection: close), signed with [`KEY`] when `sign`.
    fn call(&self, method: &str, path: &str, body: &str, sign: bool) -> (u16, Value) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.daemon.addr,
            body.len()
        );
        if sign {
            let key = quiesce::auth::Key::from_file_contents(KEY.as_bytes().to_vec()).unwrap();
            let nonce = quiesce::auth::new_nonce().unwrap();
            let h = quiesce::auth::sign_request(&key, method, path, body.as_bytes(), now(), nonce);
            for (k, v) in h.pairs() {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        let mut s = common::daemon::connect(&self.daemon.addr, Duration::from_secs(30));
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {out:?}"));
        let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------
// Running the CLI
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The `{"snapshots": [...]}` report, which must be the whole of stdout.
    fn snapshots(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{self:#?}"));
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        v["snapshots"].as_array().unwrap().clone()
    }
}

/// Runs `quiesce ARGS` to its end (at most 30 s; stderr is read until every process holding it,
/// e.g. a blocked writer started by CMD, is done).
fn quiesce(args: &[&str]) -> Out {
    let mut child = Command::new(QUIESCE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("quiesce {args:?} did not end within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Out {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    eprintln!("quiesce {args:?} -> {}\n{}", out.code, out.stderr);
    out
}

/// A CMD line that exits 0 only if a writer on each of `mounts` is still blocked after 0.3 s
/// (the file it creates does not exist yet), and appends "ran" to `log` (outside the mounts).
fn prove_frozen_cmd(mounts: &[String], log: &Path) -> String {
    let mut cmd = format!("echo ran >> {log:?}; ");
    for (i, m) in mounts.iter().enumerate() {
        cmd.push_str(&format!("( echo probe > '{m}/cmd-probe-{i}' ) & "));
    }
    cmd.push_str("sleep 0.3; ok=0; ");
    for (i, m) in mounts.iter().enumerate() {
        cmd.push_str(&format!(
            "if [ -e '{m}/cmd-probe-{i}' ]; then echo 'NOT FROZEN: {m}'; ok=1; else echo 'frozen: {m}'; fi; "
        ));
    }
    cmd.push_str("exit $ok");
    cmd
}

fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// snapshot and status
// ---------------------------------------------------------------------------

#[test]
fn snapshot_runs_cmd_while_frozen_then_thaws_and_succeeds() {
    require_root();
    let a = Agent::start(false);
    let scratch = scratch_dir();
    let log = scratch.path().join("ran.log");
    let cmd = prove_frozen_cmd(&[a.mount()], &log);
    let out = quiesce(&["snapshot", "--agent", &a.url, "--exec", &cmd]);
    assert_eq!(out.code, 0, "{out:#?}");
    // CMD's output went to stderr, the report alone to stdout.
    assert!(
        out.stderr.contains(&format!("frozen: {}", a.mount())),
        "{out:#?}"
    );
    let snaps = out.snapshots();
    assert_eq!(snaps.len(), 1);
    let s = &snaps[0];
    assert_eq!(
        (
            &s["state"],
            &s["consistency"],
            &s["thaw_reason"],
            &s["agent"]
        ),
        (
            &json!("succeeded"),
            &json!("file_system"),
            &json!("host"),
            &json!(a.url)
        ),
        "{s}"
    );
    assert!(s.get("error").is_none(), "{s}");
    assert!(s["request_id"].as_str().unwrap().starts_with("quiesce-"));
    assert_eq!(fs::read_to_string(&log).unwrap(), "ran\n");
    // The writer CMD left behind was released by the thaw.
    let probe = a.fs.mount.join("cmd-probe-0");
    eventually(
        "the probe is written after the thaw",
        Duration::from_secs(3),
        || fs::read_to_string(&probe).is_ok_and(|t| t == "probe\n"),
    );

    // status shows the agent's health and that snapshot.
    let st = quiesce(&["status", "--json", "--agent", &a.url]);
    assert_eq!(st.code, 0, "{st:#?}");
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["health"]["status"], "ok");
    assert_eq!(v["agent"], json!(a.url));
    assert_eq!(v["snapshots"][0]["id"], s["id"]);
}

#[test]
fn a_failing_cmd_thaws_as_failed_and_exits_1() {
    require_root();
    let a = Agent::start(false);
    let out = quiesce(&[
        "snapshot",
        "--agent",
        &a.url,
        "--consistency",
        "file_system",
        "--freeze-timeout",
        "5s",
        "--mount",
        &a.mount(),
        "--exec",
        "echo cmd-stdout; echo cmd-stderr >&2; exit 3",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("cmd-stdout") && out.stderr.contains("cmd-stderr"));
    assert!(out.stderr.contains("storage_snapshot failed"), "{out:#?}");
    let snaps = out.snapshots();
    let s = &snaps[0];
    assert_eq!(
        (&s["state"], &s["consistency"], &s["thaw_reason"]),
        (&json!("failed"), &Value::Null, &json!("host")),
        "{s}"
    );
    assert_eq!(s["requested_consistency"], "file_system");
    assert_eq!(s["mounts"][0]["path"], json!(a.mount()));
    assert!(!is_frozen(&a.fs.mount));
}

#[test]
fn a_group_is_frozen_at_once_and_cmd_runs_once() {
    require_root();
    let a = Agent::start(false);
    let b = Agent::start(false);
    let scratch = scratch_dir();
    let log = scratch.path().join("ran.log");
    let cmd = prove_frozen_cmd(&[a.mount(), b.mount()], &log);
    let out = quiesce(&[
        "snapshot", "--agent", &a.url, "--agent", &b.url, "--exec", &cmd,
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    let snaps = out.snapshots();
    assert_eq!(snaps.len(), 2);
    for (s, agent) in snaps.iter().zip([&a, &b]) {
        assert_eq!(s["agent"], json!(agent.url));
        assert_eq!(s["state"], "succeeded", "{s}");
        assert_eq!(s["mounts"][0]["path"], json!(agent.mount()));
    }
    assert_eq!(fs::read_to_string(&log).unwrap(), "ran\n", "CMD ran once");
    // Without --exec: a freeze test of the group.
    let out = quiesce(&["snapshot", "--agent", &a.url, "--agent", &b.url]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.snapshots().iter().all(|s| s["state"] == "succeeded"));
}

#[test]
fn a_member_that_cannot_freeze_aborts_the_group_and_cmd_does_not_run() {
    require_root();
    let a = Agent::start(false);
    let b = Agent::start(false);
    let scratch = scratch_dir();
    let marker = scratch.path().join("cmd-ran");
    let cmd = format!("touch {marker:?}");
    // A's mount is not a candidate on B (its include_mounts is its own): B refuses with 400.
    let out = quiesce(&[
        "snapshot",
        "--agent",
        &a.url,
        "--agent",
        &b.url,
        "--mount",
        &a.mount(),
        "--exec",
        &cmd,
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(!marker.exists(), "CMD must not run");
    let snaps = out.snapshots();
    assert_eq!(snaps[0]["agent"], json!(a.url));
    assert_eq!(snaps[0]["state"], "aborted", "{}", snaps[0]);
    assert!(
        snaps[0]["error"].as_str().unwrap().contains("aborted"),
        "{}",
        snaps[0]
    );
    assert_eq!(
        (&snaps[1]["id"], &snaps[1]["state"], &snaps[1]["agent"]),
        (&Value::Null, &Value::Null, &json!(b.url))
    );
    let err = snaps[1]["error"].as_str().unwrap();
    assert!(err.contains("refused") && err.contains("400"), "{err}");
    assert!(out.stderr.contains(err), "{out:#?}");
    assert!(!is_frozen(&a.fs.mount));
}

#[test]
fn bad_urls_and_unreachable_agents_are_clear_errors() {
    require_root();
    for (url, says) in [
        ("ftp://127.0.0.1:1", "the scheme must be http or https"),
        ("127.0.0.1:7380", "did you mean http://127.0.0.1:7380"),
    ] {
        let out = quiesce(&["snapshot", "--agent", url]);
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(out.stderr.contains(says), "{out:#?}");
        assert_eq!(out.stdout, "", "nothing started, no report");
    }
    let a = Agent::start(false);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let scratch = scratch_dir();
    let marker = scratch.path().join("cmd-ran");
    let cmd = format!("touch {marker:?}");
    let out = quiesce(&[
        "snapshot", "--agent", &a.url, "--agent", &dead, "--exec", &cmd,
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(!marker.exists(), "CMD must not run");
    let snaps = out.snapshots();
    assert_eq!(snaps[0]["state"], "aborted", "{}", snaps[0]);
    let err = snaps[1]["error"].as_str().unwrap();
    assert!(
        err.contains(&dead) && err.contains("cannot connect"),
        "{err}"
    );
    let st = quiesce(&["status", "--json", "--agent", &dead]);
    assert_eq!(st.code, 1);
    assert!(st.stderr.contains("cannot connect"), "{st:#?}");
    assert!(!is_frozen(&a.fs.mount));
}

#[test]
fn hmac_agents_need_the_key_file() {
    require_root();
    let a = Agent::start(true);
    let key = a.key_file();
    let out = quiesce(&["snapshot", "--agent", &a.url, "--key-file", &key]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.snapshots()[0]["state"], "succeeded");

    let out = quiesce(&["snapshot", "--agent", &a.url]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains("HTTP 401") && out.stderr.contains("pass --key-file"),
        "{out:#?}"
    );
    assert!(out.snapshots()[0]["error"]
        .as_str()
        .unwrap()
        .contains("401"));

    // Another key: 401 with the hint to check it.
    let scratch = scratch_dir();
    let other = scratch.path().join("other.key");
    fs::write(&other, "another-key-another-key-another-key!!\n").unwrap();
    let out = quiesce(&[
        "snapshot",
        "--agent",
        &a.url,
        "--key-file",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("bad_signature") || out.stderr.contains("401"));
    assert!(out.stderr.contains("check that --key-file"), "{out:#?}");

    let st = quiesce(&["status", "--json", "--agent", &a.url, "--key-file", &key]);
    assert_eq!(st.code, 0, "{st:#?}");
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["snapshots"][0]["state"], "succeeded");
    let st = quiesce(&["status", "--json", "--agent", &a.url]);
    assert_eq!(st.code, 1, "{st:#?}");
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["health"]["status"], "ok");
    assert!(v["error"].as_str().unwrap().contains("401"));
    assert!(!is_frozen(&a.fs.mount));
}

/// `quiesce status` for people: a header and a table on a terminal (a pseudo-terminal made by
/// util-linux `script`), in colour unless NO_COLOR is set, plain when piped; `--json` is
/// byte for byte the document built from the agent's own answers, as before the human view.
#[test]
fn status_is_a_table_on_a_terminal_and_the_same_json_with_json() {
    require_root();
    let a = Agent::start(true);
    let key = a.key_file();
    let out = quiesce(&["snapshot", "--agent", &a.url, "--key-file", &key]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.snapshots()[0]["state"], "succeeded");

    // --json: exactly {"agent", "health", "snapshots"} from GET /v1/health and /v1/snapshots,
    // pretty-printed, one trailing newline.
    let st = quiesce(&["status", "--json", "--agent", &a.url, "--key-file", &key]);
    assert_eq!(st.code, 0, "{st:#?}");
    let (_, health) = a.call("GET", "/v1/health", "", false);
    let (_, list) = a.call("GET", "/v1/snapshots", "", true);
    let expected = json!({"agent": a.url, "health": health, "snapshots": list["snapshots"]});
    assert_eq!(
        st.stdout,
        format!("{}\n", serde_json::to_string_pretty(&expected).unwrap())
    );

    let in_pty = |no_color: bool| {
        let line = format!("{QUIESCE} status --agent {} --key-file {key}", a.url);
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().expect("script (util-linux) is needed");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
    };
    let tty = in_pty(false);
    assert!(
        tty.contains(&format!("{}: \x1b[32mup\x1b[0m, version", a.url)),
        "{tty:?}"
    );
    assert!(tty.contains("\x1b[32msucceeded\x1b[0m"), "{tty:?}");
    let plain = in_pty(true);
    assert!(!plain.contains('\x1b'), "NO_COLOR: {plain:?}");
    let lines: Vec<&str> = plain.lines().collect();
    assert!(lines[0].starts_with(&format!("quiesce agent {}: up, version ", a.url)));
    assert!(lines.contains(&"  frozen:    no"), "{plain}");
    let header = lines
        .iter()
        .position(|l| {
            l.split_whitespace().collect::<Vec<_>>()
                == ["WHEN", "CHANNEL", "STATE", "CONSISTENCY", "FROZEN", "HOOKS"]
        })
        .unwrap_or_else(|| panic!("no table header:\n{plain}"));
    let row: Vec<&str> = lines[header + 1].split_whitespace().collect();
    assert_eq!(&row[2..5], ["http", "succeeded", "file_system"], "{plain}");
    assert!(row[5].parse::<u64>().is_ok() && row[6] == "ms", "{plain}");
    assert_eq!(row[7], "-", "no hooks: {plain}");
    // Piped: the same view, without colour.
    let piped = quiesce(&["status", "--agent", &a.url, "--key-file", &key]);
    assert_eq!(piped.code, 0);
    assert_eq!(piped.stdout.replace("\r", ""), plain);

    // Without the key the list is refused: the header still tells what is known, exit 1.
    let refused = quiesce(&["status", "--agent", &a.url]);
    assert_eq!(refused.code, 1);
    assert!(refused.stdout.contains("up, version"), "{refused:#?}");
    assert!(
        refused.stdout.contains("snapshots: ") && refused.stdout.contains("401"),
        "{refused:#?}"
    );
}

/// `--watch` redraws (clear screen, frame) every --interval until SIGINT, then exits 0.
#[test]
fn status_watch_redraws_until_interrupted() {
    require_root();
    let a = Agent::start(false);
    let child = Command::new(QUIESCE)
        .args([
            "status",
            "--agent",
            &a.url,
            "--watch",
            "--interval",
            "200ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.matches("\x1b[H\x1b[2J").count();
    assert!((2..=8).contains(&frames), "{frames} frames: {text:?}");
    assert!(
        text.contains("Every 200ms: quiesce status --agent"),
        "{text:?}"
    );
    assert!(text.contains("no snapshots yet"), "{text:?}");
}

/// The daemon's exit code tells a configuration error (78, EX_CONFIG: the unit does not
/// restart) from a runtime failure (1).
#[test]
fn the_daemon_exits_78_on_a_config_error_and_1_on_a_runtime_failure() {
    require_root();
    let dir = scratch_dir();
    let bad = dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "listen: 127.0.0.1:1
no_such_key: 1
",
    )
    .unwrap();
    let out = quiesce(&["daemon", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.code, 78, "{out:#?}");
    assert!(out.stderr.contains("no_such_key"), "{out:#?}");
    assert!(
        out.stderr
            .contains("refusing to start with an invalid configuration"),
        "{out:#?}"
    );

    // A valid configuration whose port is taken: a runtime failure.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let key = dir.path().join("host.key");
    fs::write(&key, KEY).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let good = dir.path().join("good.yaml");
    fs::write(
        &good,
        format!(
            "listen: {}
state_dir: {:?}
auth: {{mode: hmac, key_file: {:?}}}
freeze:
  include_mounts: [{:?}]
",
            taken.local_addr().unwrap(),
            dir.path().join("state"),
            key,
            dir.path().join("nothing-mounted-here")
        ),
    )
    .unwrap();
    let out = quiesce(&["daemon", "--config", good.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("cannot bind"), "{out:#?}");
}

/// The generated man pages and completions (scripts/package.sh ships them) carry the status
/// flags and the daemon's exit codes.
#[test]
fn man_pages_and_completions_carry_the_status_flags_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_quiesce-gen-docs"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let read = |p: &str| fs::read_to_string(dir.path().join(p)).unwrap();
    let status = read("man/quiesce-status.8");
    for flag in ["\\-\\-json", "\\-\\-watch", "\\-\\-interval"] {
        assert!(
            status.contains(flag),
            "{flag} in quiesce-status.8:\n{status}"
        );
    }
    let daemon = read("man/quiesce-daemon.8");
    assert!(
        daemon.contains("78  a configuration error (EX_CONFIG)")
            && daemon.contains("1   a runtime failure"),
        "{daemon}"
    );
    for file in [
        "completions/quiesce.bash",
        "completions/_quiesce",
        "completions/quiesce.fish",
    ] {
        let text = read(file);
        assert!(
            ["json", "watch", "interval"]
                .iter()
                .all(|f| text.contains(f)),
            "{file}"
        );
    }
}

// ---------------------------------------------------------------------------
// Callbacks (agent -> host), through the raw API
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Posted {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Posted {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A loopback HTTP receiver on its own thread; `answer` false: accept, read, never answer.
struct Receiver {
    port: u16,
    posted: Arc<Mutex<Vec<Posted>>>,
}

impl Receiver {
    fn start(answer: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let posted = Arc::new(Mutex::new(Vec::new()));
        let log = posted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                if let Some(p) = read_request(&stream) {
                    log.lock().unwrap().push(p);
                }
                if answer {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                } else {
                    held.push(stream);
                }
            }
        });
        Receiver { port, posted }
    }

    fn posted(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<Posted> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split(' ');
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Posted {
        method,
        path,
        headers,
        body,
    })
}

/// Fails until the snapshot driver sends the contract's callbacks: the frozen one, then the end,
/// each a POST of the Snapshot, signed like a request with the agent's key.
#[test]
fn callbacks_reach_a_local_receiver() {
    require_root();
    let a = Agent::start(true);
    let rx = Receiver::start(true);
    let body = json!({
        "freeze_timeout_ms": 10_000,
        "callback_url": format!("http://127.0.0.1:{}/host/cb?vm=7", rx.port),
    })
    .to_string();
    let (code, snap) = a.call("POST", "/v1/snapshots", &body, true);
    assert_eq!(code, 202, "{snap}");
    let id = snap["id"].as_str().unwrap().to_string();
    let (_, frozen) = a.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=10000"),
        "",
        true,
    );
    assert_eq!(frozen["state"], "frozen", "{frozen}");
    eventually("the frozen callback", Duration::from_secs(3), || {
        !rx.posted().is_empty()
    });
    let (code, _) = a.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        r#"{"storage_snapshot":"taken"}"#,
        true,
    );
    assert_eq!(code, 200);
    let (_, done) = a.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=10000"),
        "",
        true,
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    eventually("the end callback", Duration::from_secs(3), || {
        rx.posted().len() >= 2
    });
    std::thread::sleep(Duration::from_millis(200));
    let posted = rx.posted();
    let states: Vec<_> = posted.iter().map(|p| p.json()["state"].clone()).collect();
    assert_eq!(states, ["frozen", "succeeded"], "{posted:#?}");
    let key = quiesce::auth::Key::from_file_contents(KEY.as_bytes().to_vec()).unwrap();
    let mut verifier = quiesce::auth::Verifier::new(key);
    for p in &posted {
        assert_eq!(
            (p.method.as_str(), p.path.as_str()),
            ("POST", "/host/cb?vm=7")
        );
        assert_eq!(p.json()["id"], json!(id));
        assert!(p
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")));
        let ts = p.header("X-Quiesce-Timestamp").expect("signed");
        verifier
            .verify(
                "POST",
                &p.path,
                Some(ts),
                p.header("X-Quiesce-Nonce"),
                p.header("X-Quiesce-Signature"),
                &p.body,
                now(),
            )
            .unwrap_or_else(|e| panic!("callback signature: {e}"));
    }
}

/// A receiver that accepts and never answers delays neither the thaw nor the deadline.
#[test]
fn a_callback_receiver_that_never_answers_delays_neither_thaw_nor_deadline() {
    require_root();
    // Signed, on loopback TCP: the callback goes to the requesting peer's own address.
    let a = Agent::start(true);
    let rx = Receiver::start(false);
    let body = |timeout_ms: u64| {
        json!({
            "freeze_timeout_ms": timeout_ms,
            "callback_url": format!("http://127.0.0.1:{}/cb", rx.port),
        })
        .to_string()
    };

    // The host's thaw is answered at once.
    let (_, snap) = a.call("POST", "/v1/snapshots", &body(10_000), true);
    let id = snap["id"].as_str().unwrap().to_string();
    let (_, frozen) = a.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=10000"),
        "",
        true,
    );
    assert_eq!(frozen["state"], "frozen", "{frozen}");
    let t = Instant::now();
    let (code, thawed) = a.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        r#"{"storage_snapshot":"taken"}"#,
        true,
    );
    assert_eq!(code, 200, "{thawed}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let (_, done) = a.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=10000"),
        "",
        true,
    );
    assert_eq!(done["state"], "succeeded", "{done}");

    // No thaw: the deadline thaws on time all the same.
    let (code, snap) = a.call("POST", "/v1/snapshots", &body(1_000), true);
    assert_eq!(code, 202, "{snap}");
    let id = snap["id"].as_str().unwrap().to_string();
    let (_, done) = a.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=10000"),
        "",
        true,
    );
    assert_eq!(
        (&done["state"], &done["thaw_reason"]),
        (&json!("failed"), &json!("deadline")),
        "{done}"
    );
    let frozen_ms = done["frozen_ms"].as_u64().unwrap();
    assert!(
        frozen_ms < 2_000,
        "frozen {frozen_ms} ms for a 1 s deadline"
    );
    assert!(!is_frozen(&a.fs.mount));
}
