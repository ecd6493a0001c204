//! The QEMU guest agent protocol (contract: `qga`), black-box: the built daemon on a loop
//! mount with `qga.path: unix:PATH`, driven with the exact byte sequences of libvirt, Proxmox
//! and KubeVirt, and compared with Debian's qemu-ga 7.2 (which is never sent a freeze or a
//! thaw: it would freeze or thaw every mount it sees; it runs with those commands blocked).
//! Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{hook_log, logging_hook, scene, Daemon};
use common::qga::{parse_line, qga_scene, Qga};
use common::*;
use serde_json::{json, Value};

fn snapshots(d: &Daemon) -> Vec<Value> {
    let (_, list) = d.call("GET", "/v1/snapshots", None);
    list["snapshots"].as_array().cloned().unwrap_or_default()
}

fn wait_done(d: &Daemon, id: &str) -> Value {
    d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=30000"),
        None,
    )
    .1
}

fn libvirt_sync(q: &mut Qga, id: u64) {
    // libvirt's qemuAgentGuestSync: garbage before the matching reply is tolerated.
    let reply = q.call(&format!(
        "{{\"execute\":\"guest-sync\", \"arguments\":{{\"id\":{id}}}}}"
    ));
    assert_eq!(reply, json!({"return": id}));
}

#[test]
fn libvirt_freezes_thaws_and_freezes_a_list() {
    require_root();
    let hooks_dir = scratch_dir();
    let (s, sock) = qga_scene(&logging_hook(hooks_dir.path()), "");
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);

    libvirt_sync(&mut q, 1712345678901);
    let r = q.call("{\"execute\":\"guest-fsfreeze-freeze\"}");
    assert_eq!(r, json!({"return": 1}));
    let mut w = Writer::start_probe(&s.fs.mount);
    w.assert_blocked_for(Duration::from_millis(200));
    let list = snapshots(&d);
    assert_eq!(list[0]["channel"], "qga", "{list:?}");
    assert_eq!(list[0]["state"], "frozen");
    assert_eq!(list[0]["requested_consistency"], "application");
    let id = list[0]["id"].as_str().unwrap().to_string();

    libvirt_sync(&mut q, 1712345678902);
    let r = q.call("{\"execute\":\"guest-fsfreeze-thaw\"}");
    assert_eq!(r, json!({"return": 1}));
    w.assert_finishes_within(Duration::from_secs(2));
    let done = wait_done(&d, &id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["consistency"], "application");
    assert_eq!(done["thaw_reason"], "host");
    assert_eq!(hook_log(hooks_dir.path()), "pre -\npost host\n");

    // virsh domfsfreeze --mountpoint M.
    libvirt_sync(&mut q, 1712345678903);
    let r = q.call(&format!(
        "{{\"execute\":\"guest-fsfreeze-freeze-list\",\"arguments\":{{\"mountpoints\":[{:?}]}}}}",
        s.fs.mount
    ));
    assert_eq!(r, json!({"return": 1}));
    assert!(is_frozen(&s.fs.mount));
    libvirt_sync(&mut q, 1712345678904);
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-thaw\"}"),
        json!({"return": 1})
    );
    assert!(!is_frozen(&s.fs.mount));
    // A second thaw: nothing is frozen.
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-thaw\"}"),
        json!({"return": 0})
    );
}

/// Proxmox's QMPClient: sync-delimited and the command in one write, parsed with
/// `s/^.*\xff([^\n]+}\r?\n[^\n]+})\r?\n(.*)$/$2/so` (run here by perl itself).
fn proxmox(q: &mut Qga, id: u64, command: &str) -> Value {
    q.send(
        format!(
            "{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n\
             {{\"execute\":\"{command}\",\"arguments\":{{}}}}\n"
        )
        .as_bytes(),
    );
    let raw = q.read_lines(2, Duration::from_secs(60));
    let mut perl = Command::new("perl")
        .args([
            "-0777",
            "-ne",
            r#"if (s/^.*\xff([^\n]+}\r?\n[^\n]+})\r?\n(.*)$/$2/so) { print $1 } else { exit 3 }"#,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    perl.stdin.take().unwrap().write_all(&raw).unwrap();
    let out = perl.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Proxmox's regex does not match {:?}",
        String::from_utf8_lossy(&raw)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (sync, reply) = text.split_once('\n').unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(sync).unwrap(),
        json!({"return": id})
    );
    serde_json::from_str(reply).unwrap()
}

#[test]
fn proxmox_pings_freezes_polls_and_thaws() {
    require_root();
    let (s, sock) = qga_scene("[]", "");
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    assert_eq!(proxmox(&mut q, 101, "guest-ping"), json!({"return": {}}));
    assert_eq!(
        proxmox(&mut q, 102, "guest-fsfreeze-freeze"),
        json!({"return": 1})
    );
    assert_eq!(
        proxmox(&mut q, 103, "guest-fsfreeze-status"),
        json!({"return": "frozen"})
    );
    assert!(is_frozen(&s.fs.mount));
    assert_eq!(
        proxmox(&mut q, 104, "guest-fsfreeze-thaw"),
        json!({"return": 1})
    );
    assert_eq!(
        proxmox(&mut q, 105, "guest-fsfreeze-status"),
        json!({"return": "thawed"})
    );
    let id = snapshots(&d)[0]["id"].as_str().unwrap().to_string();
    // No hooks: file_system.
    let done = wait_done(&d, &id);
    assert_eq!(
        (done["state"].as_str(), done["consistency"].as_str()),
        (Some("succeeded"), Some("file_system"))
    );
}

#[test]
fn kubevirt_status_freeze_status_thaw_and_info() {
    require_root();
    let (s, sock) = qga_scene("[]", "  consistency: file_system\n");
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    let info = q.call("{\"execute\":\"guest-info\"}");
    let names: Vec<&str> = info["return"]["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["enabled"], true);
            assert_eq!(c["success-response"], true);
            c["name"].as_str().unwrap()
        })
        .collect();
    for n in [
        "guest-fsfreeze-freeze",
        "guest-fsfreeze-freeze-list",
        "guest-fsfreeze-thaw",
        "guest-fsfreeze-status",
        "guest-ping",
        "guest-sync",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(info["return"]["version"].is_string());

    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-status\"}"),
        json!({"return": "thawed"})
    );
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-status\"}"),
        json!({"return": "frozen"})
    );
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-thaw\"}"),
        json!({"return": 1})
    );
    let list = snapshots(&d);
    assert_eq!(list[0]["requested_consistency"], "file_system");
    assert!(!is_frozen(&s.fs.mount));
}

#[test]
fn the_deadline_thaws_a_freeze_left_without_a_thaw() {
    require_root();
    let hooks_dir = scratch_dir();
    let (s, sock) = qga_scene(&logging_hook(hooks_dir.path()), "  freeze_timeout: 2s\n");
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    let id = snapshots(&d)[0]["id"].as_str().unwrap().to_string();
    let done = wait_done(&d, &id);
    assert_eq!(
        (
            done["state"].as_str(),
            done["consistency"].as_str(),
            done["thaw_reason"].as_str()
        ),
        (Some("failed"), Some("crash"), Some("deadline")),
        "{done}"
    );
    assert!(!is_frozen(&s.fs.mount));
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-status\"}"),
        json!({"return": "thawed"})
    );
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-thaw\"}"),
        json!({"return": 0})
    );
    assert_eq!(hook_log(hooks_dir.path()), "pre -\npost deadline\n");
}

#[test]
fn sigkill_while_frozen_over_qga_is_thawed_by_the_watchdog() {
    require_root();
    let (s, sock) = qga_scene("[]", "");
    let mut d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(5));
    Writer::start_probe(&s.fs.mount).assert_finishes_within(Duration::from_secs(2));
}

#[test]
fn sigterm_while_frozen_over_qga_thaws_runs_post_hooks_and_exits_0() {
    require_root();
    let hooks_dir = scratch_dir();
    let (s, sock) = qga_scene(&logging_hook(hooks_dir.path()), "");
    let mut d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert!(!is_frozen(&s.fs.mount));
    assert_eq!(hook_log(hooks_dir.path()), "pre -\npost shutdown\n");
    assert!(!sock.exists(), "the socket is removed on stop");
}

#[test]
fn one_snapshot_at_a_time_across_channels() {
    require_root();
    let (s, sock) = qga_scene("[]", "");
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);

    // A qga freeze: HTTP is answered 409 with the qga snapshot as the active one.
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    let qga_id = snapshots(&d)[0]["id"].as_str().unwrap().to_string();
    let (code, busy) = d.call("POST", "/v1/snapshots", Some("{}"));
    assert_eq!(
        (code, busy["active"].as_str()),
        (409, Some(qga_id.as_str())),
        "{busy}"
    );
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-thaw\"}"),
        json!({"return": 1})
    );
    wait_done(&d, &qga_id);

    // An HTTP snapshot: a qga freeze is an error; its thaw is the HTTP host's.
    let (code, snap) = d.call("POST", "/v1/snapshots", Some("{}"));
    assert_eq!(code, 202);
    assert_eq!(snap["channel"], "http");
    let id = snap["id"].as_str().unwrap();
    d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=20000"),
        None,
    );
    let r = q.call("{\"execute\":\"guest-fsfreeze-freeze\",\"id\":\"k\"}");
    assert_eq!(r["error"]["class"], "CommandNotFound", "{r}");
    // While frozen (by HTTP), qga's frozen mode holds: status says so.
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-status\"}"),
        json!({"return": "frozen"})
    );
    let r = q.call("{\"execute\":\"guest-fsfreeze-thaw\"}");
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    assert!(
        is_frozen(&s.fs.mount),
        "a qga thaw leaves an HTTP snapshot alone"
    );
    let (code, _) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!(code, 200);
    let done = wait_done(&d, id);
    assert_eq!(done["state"], "succeeded");
}

#[test]
fn a_qga_freeze_while_an_http_snapshot_runs_its_pre_hooks_is_an_error() {
    require_root();
    let hooks_dir = scratch_dir();
    let script = hooks_dir.path().join("slow.sh");
    fs::write(
        &script,
        "#!/bin/sh\n[ \"$QUIESCE_PHASE\" = pre ] && sleep 3\nexit 0\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let hooks = format!("[{{name: slow, pre: [{script:?}], post: [{script:?}]}}]");
    let (s, sock) = qga_scene(&hooks, "");
    let d = Daemon::start(&s.config);
    let (code, snap) = d.call("POST", "/v1/snapshots", Some("{}"));
    assert_eq!(code, 202);
    let mut q = Qga::connect(&sock);
    let r = q.call("{\"execute\":\"guest-fsfreeze-freeze\"}");
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("another snapshot is in progress"),
        "{r}"
    );
    let id = snap["id"].as_str().unwrap();
    d.call("DELETE", &format!("/v1/snapshots/{id}"), None);
    assert_eq!(snapshots(&d).len(), 1, "nothing else was created");
}

#[test]
fn freeze_list_with_a_mount_that_is_no_candidate_freezes_nothing() {
    require_root();
    let (s, sock) = qga_scene("[]", "");
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    for bad in ["/", "/no/such/mount"] {
        let r = q.call(&format!(
            "{{\"execute\":\"guest-fsfreeze-freeze-list\",\"arguments\":{{\"mountpoints\":[{:?},{bad:?}]}}}}",
            s.fs.mount
        ));
        assert_eq!(r["error"]["class"], "GenericError", "{r}");
        assert!(!is_frozen(&s.fs.mount));
    }
    assert!(snapshots(&d).is_empty());
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-status\"}"),
        json!({"return": "thawed"})
    );
}

#[test]
fn zero_mounts_frozen_ends_the_snapshot_at_once_post_hooks_included() {
    require_root();
    let hooks_dir = scratch_dir();
    let (s, sock) = qga_scene(&logging_hook(hooks_dir.path()), "");
    let text = fs::read_to_string(&s.config)
        .unwrap()
        .replace("freeze:\n", "freeze:\n  enabled: false\n");
    fs::write(&s.config, text).unwrap();
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 0})
    );
    // libvirt sends no thaw after 0: the snapshot has ended (or is running its post hooks).
    let id = snapshots(&d)[0]["id"].as_str().unwrap().to_string();
    let done = wait_done(&d, &id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["consistency"], "crash");
    assert_eq!(hook_log(hooks_dir.path()), "pre -\npost none\n");
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-status\"}"),
        json!({"return": "thawed"})
    );
}

#[test]
fn frozen_mode_refuses_everything_but_the_allowlist() {
    require_root();
    let (s, sock) = qga_scene("[]", "");
    let _d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    for name in [
        "guest-get-osinfo",
        "guest-fsfreeze-freeze",
        "guest-fsfreeze-freeze-list",
        "guest-exec",
    ] {
        let r = q.call(&format!("{{\"execute\":\"{name}\",\"id\":7}}"));
        assert_eq!(
            r,
            json!({"error": {"class": "CommandNotFound",
                "desc": format!("Command {name} has been disabled: the agent is in frozen state")},
                "id": 7})
        );
    }
    assert_eq!(
        q.call("{\"execute\":\"guest-ping\"}"),
        json!({"return": {}})
    );
    assert!(q.call("{\"execute\":\"guest-info\"}")["return"].is_object());
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-thaw\"}"),
        json!({"return": 1})
    );
}

#[test]
fn malformed_input_garbage_and_partial_requests() {
    require_root();
    let (s, sock) = qga_scene("[]", "");
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    // Unknown command, with the id echoed.
    assert_eq!(
        q.call("{\"execute\":\"guest-nope\",\"id\":\"abc\"}"),
        json!({"error": {"class": "CommandNotFound",
            "desc": "The command guest-nope has not been found"}, "id": "abc"})
    );
    // Malformed JSON: GenericError, and the channel goes on.
    assert_eq!(q.call("{\"execute\":}")["error"]["class"], "GenericError");
    assert_eq!(q.call("hello\n")["error"]["class"], "GenericError");
    // A partial request discarded by 0xFF, then a whole one.
    q.send(b"{\"execute\":\"guest-sy");
    std::thread::sleep(Duration::from_millis(50));
    q.send(b"\xff{\"execute\":\"guest-sync\",\"arguments\":{\"id\":5}}");
    assert_eq!(
        parse_line(&q.read_lines(1, Duration::from_secs(5))),
        json!({"return": 5})
    );
    // Two requests in one write, one across three writes.
    q.send(b"{\"execute\":\"guest-ping\"}{\"execute\":\"guest-ping\",\"id\":1}");
    let two = q.read_lines(2, Duration::from_secs(5));
    assert_eq!(two, b"{\"return\":{}}\n{\"id\":1,\"return\":{}}\n");
    for part in [&b"{\"exec"[..], b"ute\":\"guest-p", b"ing\"}"] {
        q.send(part);
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(
        parse_line(&q.read_lines(1, Duration::from_secs(5))),
        json!({"return": {}})
    );
    // A megabyte of garbage without a closing brace: one GenericError, nothing kept.
    q.send(b"{\"execute\":\"");
    let garbage = vec![b'a'; 1024 * 1024];
    q.send(&garbage);
    let r = parse_line(&q.read_lines(1, Duration::from_secs(5)));
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    q.send(b"\xff{\"execute\":\"guest-ping\"}");
    assert_eq!(
        parse_line(&q.read_lines(1, Duration::from_secs(5))),
        json!({"return": {}})
    );
    let rss = fs::read_to_string(format!("/proc/{}/status", d.child.id()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap();
    assert!(rss < 64 * 1024, "RSS {rss} kB after a megabyte of garbage");
    // The sync-delimited reply starts with 0xFF.
    q.send(b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":9}}");
    assert_eq!(
        q.read_lines(1, Duration::from_secs(5)),
        b"\xff{\"return\":9}\n"
    );
    // The unix socket is root's alone.
    let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

// ---------------------------------------------------------------------------
// Against Debian's qemu-ga 7.2
// ---------------------------------------------------------------------------

const QEMU_GA: &str = "/usr/sbin/qemu-ga";

/// A real qemu-ga on a unix socket, with every freeze command blocked (`-b`): it can never
/// freeze or thaw the machine's mounts, whatever it is sent.
struct QemuGa {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl QemuGa {
    fn start() -> QemuGa {
        assert!(
            Path::new(QEMU_GA).exists(),
            "{QEMU_GA} is missing: apt-get install qemu-guest-agent (never start its service)"
        );
        let dir = scratch_dir();
        let sock = dir.path().join("ga.sock");
        let child = Command::new(QEMU_GA)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-f")
            .arg(dir.path().join("ga.pid"))
            .arg("-t")
            .arg(dir.path())
            .args([
                "-b",
                "guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw,guest-fstrim",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "qemu-ga did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuGa {
            child,
            sock,
            _dir: dir,
        }
    }
}

impl Drop for QemuGa {
    fn drop(&mut self) {
        stop_child(&mut self.child, Some("TERM"), Duration::from_secs(5));
    }
}

/// The shape of a reply stream: per line, the 0xFF prefix, the top-level keys, the error
/// class, and the type of `return` (its keys when an object, its value when a number or a
/// string), and the id.
fn shape(raw: &[u8]) -> Vec<Value> {
    raw.split_inclusive(|&b| b == b'\n')
        .map(|line| {
            assert!(line.ends_with(b"\n"), "a reply ends in a newline: {raw:?}");
            let (ff, body) = match line.strip_prefix(b"\xff") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let v: Value = serde_json::from_slice(body).unwrap();
            let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            keys.sort();
            let ret = match &v["return"] {
                Value::Object(m) => json!(m.keys().collect::<Vec<_>>()),
                Value::Null => Value::Null,
                other => other.clone(),
            };
            json!({"ff": ff, "keys": keys, "class": v["error"]["class"], "return": ret, "id": v["id"]})
        })
        .collect()
}

/// The byte sequences both get, one connection each.
fn scripts() -> Vec<(&'static str, Vec<&'static [u8]>)> {
    vec![
        (
            "libvirt sync",
            vec![b"{\"execute\":\"guest-sync\", \"arguments\":{\"id\":1712345678901}}"],
        ),
        (
            "proxmox ping",
            vec![b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4242}}\n{\"execute\":\"guest-ping\",\"arguments\":{}}\n"],
        ),
        (
            "proxmox status",
            vec![b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4243}}\n{\"execute\":\"guest-fsfreeze-status\",\"arguments\":{}}\n"],
        ),
        ("kubevirt status", vec![b"{\"execute\":\"guest-fsfreeze-status\"}"]),
        ("id echo", vec![b"{\"execute\":\"guest-ping\",\"id\":\"abc\"}"]),
        ("id echo object", vec![b"{\"execute\":\"guest-ping\",\"id\":{\"x\":[1]}}"]),
        (
            "two in one write",
            vec![b"{\"execute\":\"guest-ping\"}{\"execute\":\"guest-sync\",\"arguments\":{\"id\":1}}"],
        ),
        ("split", vec![b"{\"execute\":\"guest-", b"ping\"}"]),
        ("malformed", vec![b"{\"execute\":}"]),
        ("garbage", vec![b"hello\n"]),
        ("number", vec![b"123\n"]),
        ("string with brackets", vec![b"\"a {b\"\n"]),
        ("array", vec![b"[1,2]"]),
        ("unexpected member", vec![b"{\"foo\":1}"]),
        ("execute not a string", vec![b"{\"execute\":1}"]),
        ("arguments not an object", vec![b"{\"execute\":\"guest-ping\",\"arguments\":[]}"]),
        ("unknown", vec![b"{\"execute\":\"guest-nope\"}"]),
        ("unknown with id", vec![b"{\"execute\":\"guest-nope\",\"id\":5}"]),
        ("sync without id", vec![b"{\"execute\":\"guest-sync\",\"arguments\":{}}"]),
        (
            "sync with a string id",
            vec![b"{\"execute\":\"guest-sync\",\"arguments\":{\"id\":\"a\"}}"],
        ),
        ("negative sync id", vec![b"{\"execute\":\"guest-sync\",\"arguments\":{\"id\":-3}}"]),
        ("unexpected argument", vec![b"{\"execute\":\"guest-ping\",\"arguments\":{\"x\":1}}"]),
        (
            "sync-delimited with id",
            vec![b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":1},\"id\":\"x\"}"],
        ),
    ]
}

/// The scripts whose replies differ by design (contract: a 0xFF discards a partial request
/// silently, where qemu-ga also answers a GenericError for what it discarded).
fn ff_scripts() -> Vec<(&'static str, Vec<&'static [u8]>)> {
    vec![
        (
            "partial then 0xFF",
            vec![
                b"{\"execute\":\"guest-pi",
                b"\xff",
                b"{\"execute\":\"guest-ping\"}",
            ],
        ),
        ("0xFF alone", vec![b"\xff{\"execute\":\"guest-ping\"}"]),
    ]
}

fn run_script(sock: &Path, chunks: &[&[u8]]) -> Vec<u8> {
    let mut q = Qga::connect(sock);
    for c in chunks {
        q.send(c);
        std::thread::sleep(Duration::from_millis(30));
    }
    // Every reply comes within this; qemu-ga and quiesce answer these at once.
    q.read_lines(usize::MAX, Duration::from_millis(500))
}

#[test]
fn replies_have_the_shape_of_qemu_ga_7_2() {
    require_root();
    let ga = QemuGa::start();
    let (s, sock) = qga_scene("[]", "");
    let _d = Daemon::start(&s.config);
    for (name, chunks) in scripts() {
        let theirs = run_script(&ga.sock, &chunks);
        let ours = run_script(&sock, &chunks);
        assert!(!theirs.is_empty(), "{name}: qemu-ga answered nothing");
        assert_eq!(
            shape(&ours),
            shape(&theirs),
            "{name}:\n ours:   {:?}\n qemu-ga: {:?}",
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }
    for (name, chunks) in ff_scripts() {
        let theirs = shape(&run_script(&ga.sock, &chunks));
        let ours = shape(&run_script(&sock, &chunks));
        // qemu-ga: an error for the discarded bytes, then the ping; quiesce: the ping.
        assert_eq!(theirs.len(), 2, "{name}: {theirs:?}");
        assert_eq!(theirs[0]["class"], "GenericError");
        assert_eq!(ours, theirs[1..], "{name}");
    }
    // guest-info: the same members; every entry has qemu-ga's three keys.
    let theirs = parse_line(&run_script(&ga.sock, &[b"{\"execute\":\"guest-info\"}"]));
    let ours = parse_line(&run_script(&sock, &[b"{\"execute\":\"guest-info\"}"]));
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours["return"]), keys(&theirs["return"]));
    for c in ours["return"]["supported_commands"].as_array().unwrap() {
        assert_eq!(keys(c), keys(&theirs["return"]["supported_commands"][0]));
    }
}

#[test]
fn forward_relays_other_commands_to_qemu_ga_but_not_while_frozen() {
    require_root();
    let ga = QemuGa::start();
    let (s, sock) = qga_scene("[]", &format!("  forward: unix:{}\n", ga.sock.display()));
    let _d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);
    let direct = parse_line(&run_script(
        &ga.sock,
        &[b"{\"execute\":\"guest-get-osinfo\"}"],
    ));
    let r = q.call("{\"execute\":\"guest-get-osinfo\",\"id\":3}");
    assert_eq!(r["id"], 3);
    assert_eq!(r["return"], direct["return"], "{r}");
    let r = q.call("{\"execute\":\"guest-network-get-interfaces\"}");
    assert!(r["return"].is_array(), "{r}");
    let r = q.call("{\"execute\":\"guest-nope\"}");
    assert_eq!(r["error"]["class"], "CommandNotFound", "{r}");
    // guest-info: quiesce's commands (enabled), then qemu-ga's others.
    let info = q.call("{\"execute\":\"guest-info\"}");
    let cmds = info["return"]["supported_commands"].as_array().unwrap();
    let find = |n: &str| cmds.iter().find(|c| c["name"] == n).cloned();
    assert_eq!(find("guest-fsfreeze-freeze").unwrap()["enabled"], true);
    assert!(find("guest-get-osinfo").is_some());
    assert_eq!(
        cmds.iter()
            .filter(|c| c["name"] == "guest-fsfreeze-thaw")
            .count(),
        1
    );
    // While frozen, nothing is relayed.
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    let r = q.call("{\"execute\":\"guest-get-osinfo\"}");
    assert_eq!(r["error"]["class"], "CommandNotFound", "{r}");
    assert!(r["error"]["desc"]
        .as_str()
        .unwrap()
        .contains("frozen state"));
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-thaw\"}"),
        json!({"return": 1})
    );
    assert!(!is_frozen(&s.fs.mount));
}

#[test]
fn check_config_shows_the_qga_section() {
    require_root();
    let (s, sock) = qga_scene("[]", "  freeze_timeout: 20s\n");
    let out = Command::new(common::daemon::QUIESCE)
        .args(["check-config", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("qga: unix:{} (freeze_timeout 20s", sock.display())),
        "{text}"
    );
}

/// The port path (a character device, not a socket) on a pseudo-terminal in raw mode: python
/// holds the master and relays it to its stdin and stdout. The virtio-serial port itself needs
/// a VM.
#[test]
fn a_character_device_path_is_served_like_the_port() {
    require_root();
    let relay = r#"
import os, select, sys, tty
master, slave = os.openpty()
tty.setraw(slave)
print(os.ttyname(slave), flush=True)
out = sys.stdout.buffer
while True:
    r, _, _ = select.select([0, master], [], [])
    if 0 in r:
        data = os.read(0, 65536)
        if not data:
            break
        os.write(master, data)
    if master in r:
        out.write(os.read(master, 65536))
        out.flush()
"#;
    let mut py = Command::new("python3")
        .args(["-c", relay])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = py.stdout.take().unwrap();
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        name.push(byte[0]);
    }
    let name = String::from_utf8(name).unwrap();
    let s = scene("30s", "[]");
    let mut text = fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("qga:\n  enabled: true\n  path: {name}\n"));
    fs::write(&s.config, text).unwrap();
    let d = Daemon::start(&s.config);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = py.stdin.take().unwrap();
    let mut call = |req: &[u8]| -> Vec<u8> {
        stdin.write_all(req).unwrap();
        stdin.flush().unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            got.extend(
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("a reply on the port"),
            );
        }
        got
    };
    assert_eq!(
        call(b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":3}}"),
        b"\xff{\"return\":3}\n"
    );
    assert_eq!(
        call(b"{\"execute\":\"guest-fsfreeze-freeze\"}"),
        b"{\"return\":1}\n"
    );
    assert!(is_frozen(&s.fs.mount));
    assert_eq!(
        call(b"{\"execute\":\"guest-fsfreeze-thaw\"}"),
        b"{\"return\":1}\n"
    );
    assert_eq!(snapshots(&d)[0]["channel"], "qga");
    drop(stdin);
    stop_child(&mut py, Some("TERM"), Duration::from_secs(5));
}

#[test]
fn a_reload_applies_the_qga_deadline_and_keeps_the_socket() {
    require_root();
    let (s, sock) = qga_scene("[]", "  freeze_timeout: 30s\n");
    let mut d = Daemon::start(&s.config);
    let text = fs::read_to_string(&s.config)
        .unwrap()
        .replace("freeze_timeout: 30s", "freeze_timeout: 1s")
        .replace("qga.sock", "other.sock");
    fs::write(&s.config, text).unwrap();
    d.signal("HUP");
    d.wait_log("qga.enabled and qga.path stay", Duration::from_secs(10));
    d.wait_log("configuration reloaded", Duration::from_secs(10));
    let mut q = Qga::connect(&sock);
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    let id = snapshots(&d)[0]["id"].as_str().unwrap().to_string();
    let done = wait_done(&d, &id);
    assert_eq!(done["thaw_reason"], "deadline", "{done}");
    assert!(done["frozen_ms"].as_u64().unwrap() < 5000, "{done}");
    assert!(!s.dir.path().join("other.sock").exists());
}

#[test]
fn only_root_may_talk_on_the_unix_socket() {
    require_root();
    let (s, sock) = qga_scene("[]", "");
    let _d = Daemon::start(&s.config);
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect({:?})\nexcept PermissionError:\n print('denied'); sys.exit(0)\nimport time\ntime.sleep(0.2)\ntry:\n s.sendall(b'{{\"execute\":\"guest-ping\"}}')\n s.settimeout(5)\n print('closed' if s.recv(100) == b'' else 'answered')\nexcept (BrokenPipeError, ConnectionResetError):\n print('closed')\n",
        sock.display().to_string()
    );
    let as_nobody = |script: &str| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                script,
            ])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    // Mode 0600 keeps others out; with the mode opened, the peer check still does.
    assert_eq!(as_nobody(&script), "denied");
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(as_nobody(&script), "closed");
}

/// The shipped drop-in of setup (b), on Debian's own qemu-guest-agent.service.
#[test]
fn the_qemu_ga_drop_in_verifies() {
    let unit = Path::new("/lib/systemd/system/qemu-guest-agent.service");
    assert!(
        unit.exists(),
        "apt-get install qemu-guest-agent (its service is not started)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("qemu-guest-agent.service.d");
    fs::create_dir(&d).unwrap();
    fs::copy(unit, dir.path().join("qemu-guest-agent.service")).unwrap();
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/systemd/qemu-guest-agent-forward.conf"
        ),
        d.join("quiesce-forward.conf"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "qemu-guest-agent.service"])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("quiesce-forward"),
        "{err}"
    );
    let text = fs::read_to_string(d.join("quiesce-forward.conf")).unwrap();
    assert!(text.contains("-m unix-listen -p /run/qemu-ga/qga.sock"));
}
