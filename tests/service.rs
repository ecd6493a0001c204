//! The daemon as a systemd service, black-box: sd_notify messages (READY, STATUS, RELOADING,
//! STOPPING, WATCHDOG) on a notify socket of the test's own, SIGHUP reloads with good and bad
//! configurations, and SIGTERM/SIGINT at each state of a snapshot. Needs root (loop mounts,
//! FIFREEZE); fails, never skips, without it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::daemon::{hook_log, logging_hook, scene, Daemon, Scene, QUIESCE};
use common::*;
use serde_json::Value;

/// The notify socket a service manager would own: every datagram on a channel.
struct NotifySocket {
    path: PathBuf,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        NotifySocket {
            path,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a message with a line starting with `prefix`; returns the whole message.
    fn expect(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(msg) => {
                    self.seen.push(msg.clone());
                    if msg.lines().any(|l| l.starts_with(prefix)) {
                        return msg;
                    }
                }
                Err(_) => panic!(
                    "no {prefix:?} notification within {within:?}; got: {:?}",
                    self.seen
                ),
            }
        }
    }
}

fn get(d: &Daemon, path: &str) -> Value {
    let (code, v) = d.call("GET", path, None);
    assert_eq!(code, 200, "{path}: {v}");
    v
}

fn start_snapshot(d: &Daemon) -> String {
    let (code, snap) = d.call("POST", "/v1/snapshots", Some("{}"));
    assert_eq!(code, 202, "{snap}");
    snap["id"].as_str().unwrap().to_string()
}

fn wait_state(d: &Daemon, id: &str, wait: &str) -> Value {
    get(
        d,
        &format!("/v1/snapshots/{id}?wait={wait}&timeout_ms=20000"),
    )
}

/// A whole snapshot: start, frozen, thaw (`taken`), done; returns the final report.
fn cycle(d: &Daemon) -> Value {
    let id = start_snapshot(d);
    let frozen = wait_state(d, &id, "frozen");
    assert_eq!(frozen["state"], "frozen", "{frozen}");
    let (code, v) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!(code, 200, "{v}");
    wait_state(d, &id, "done")
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// One hook `app` logging "PHASE start" and "PHASE end<END>" to DIR/hook.log, whose post run
/// takes a second in between (`end` is shell text, e.g. " $QUIESCE_THAW_REASON").
fn slow_post_hook(s: &Scene, end: &str) {
    let dir = s.dir.path();
    let log = dir.join("hook.log");
    let hook = script(
        dir,
        "hook.sh",
        &format!(
            "echo \"$QUIESCE_PHASE start\" >> {log:?}\n[ \"$QUIESCE_PHASE\" = post ] && sleep 1\necho \"$QUIESCE_PHASE end{end}\" >> {log:?}"
        ),
    );
    set_hooks(
        s,
        &format!("[{{name: app, pre: [{hook:?}], post: [{hook:?}]}}]"),
    );
}

/// Waits until the hooks' log (DIR/hook.log) holds `needle`.
fn wait_hook_log(dir: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hook_log(dir).contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in the hooks' log");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replaces the `hooks:` line of the scene's config.
fn set_hooks(s: &Scene, hooks: &str) {
    let text = fs::read_to_string(&s.config).unwrap();
    let (head, _) = text.split_once("hooks:").unwrap();
    fs::write(&s.config, format!("{head}hooks: {hooks}\n")).unwrap();
}

/// A hook named `name` that appends "NAME PHASE" to DIR/hook.log.
fn named_hook(dir: &Path, name: &str) -> String {
    let log = dir.join("hook.log");
    let path = script(
        dir,
        &format!("{name}.sh"),
        &format!("echo \"{name} $QUIESCE_PHASE\" >> {log:?}"),
    );
    format!("[{{name: {name}, pre: [{path:?}], post: [{path:?}]}}]")
}

#[test]
fn sd_notify_ready_status_watchdog_reload_and_stopping() {
    require_root();
    let s = scene("30s", "[]");
    let mut notify = NotifySocket::bind(s.dir.path());
    let sock = notify.path.to_str().unwrap().to_string();
    let mut d = Daemon::start_with_env(
        &s.config,
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "400000")],
    );
    let ready = notify.expect("READY=1", Duration::from_secs(5));
    assert!(
        ready.contains(&format!("STATUS=listening on {}", d.addr)),
        "{ready}"
    );
    // Pings every half of WatchdogSec.
    let t = Instant::now();
    notify.expect("WATCHDOG=1", Duration::from_secs(2));
    notify.expect("WATCHDOG=1", Duration::from_secs(2));
    assert!(t.elapsed() < Duration::from_secs(2));

    // No hooks: file-system-consistent at best.
    let done = cycle(&d);
    assert_eq!(done["state"], "succeeded", "{done}");
    let frozen_ms = done["frozen_ms"].as_u64().unwrap();
    let status = notify.expect("STATUS=last snapshot", Duration::from_secs(5));
    let line = status
        .lines()
        .find(|l| l.starts_with("STATUS="))
        .unwrap()
        .to_string();
    assert_eq!(
        line,
        format!(
            "STATUS=last snapshot {}: file_system, frozen {frozen_ms} ms",
            done["finished_at"].as_str().unwrap()
        )
    );

    d.signal("HUP");
    let reloading = notify.expect("RELOADING=1", Duration::from_secs(5));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let again = notify.expect("READY=1", Duration::from_secs(5));
    assert!(again.contains("STATUS=last snapshot"), "{again}");

    d.signal("TERM");
    notify.expect("STOPPING=1", Duration::from_secs(5));
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0);
}

#[test]
fn sighup_applies_a_good_config_and_keeps_the_running_one_on_a_bad_one() {
    require_root();
    let s = scene("30s", "[]");
    let dir = s.dir.path().to_path_buf();
    set_hooks(&s, &named_hook(&dir, "first"));
    let mut d = Daemon::start(&s.config);
    assert_eq!(cycle(&d)["hooks"][0]["name"], "first");

    // A good configuration: the next snapshot runs the new hook.
    set_hooks(&s, &named_hook(&dir, "second"));
    d.signal("HUP");
    d.wait_log("configuration reloaded", Duration::from_secs(5));
    let done = cycle(&d);
    assert_eq!(done["hooks"][0]["name"], "second", "{done}");

    // A bad one: every error logged with its place, the running configuration stays.
    let good = fs::read_to_string(&s.config).unwrap();
    fs::write(
        &s.config,
        good.replace("freeze:\n", "bogus: 1\nfreeze:\n  enabled: maybe\n"),
    )
    .unwrap();
    d.signal("HUP");
    let refused = d.wait_log("reload refused", Duration::from_secs(5));
    let log = d.seen.join("\n");
    assert!(log.contains("config.yaml:4:"), "{refused}\n{log}");
    assert!(log.contains("bogus"), "{log}");
    let done = cycle(&d);
    assert_eq!(done["hooks"][0]["name"], "second", "{done}");
    assert_eq!(done["state"], "succeeded");

    // A new listen address cannot be applied without a restart: said, and the rest applies.
    fs::write(&s.config, &good).unwrap();
    set_hooks(&s, &named_hook(&dir, "third"));
    let moved = fs::read_to_string(&s.config).unwrap();
    let moved = moved.replacen("listen: 127.0.0.1:", "listen: 127.0.0.2:", 1);
    fs::write(&s.config, moved).unwrap();
    d.signal("HUP");
    d.wait_log("listen stays", Duration::from_secs(5));
    d.wait_log("configuration reloaded", Duration::from_secs(5));
    assert_eq!(get(&d, "/v1/health")["status"], "ok");
    assert_eq!(cycle(&d)["hooks"][0]["name"], "third");
    assert_eq!(
        hook_log(&dir),
        "first pre\nfirst post\nsecond pre\nsecond post\nsecond pre\nsecond post\nthird pre\nthird post\n"
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0);
}

#[test]
fn sighup_puts_a_new_hmac_key_in_force() {
    require_root();
    let s = scene("30s", "[]");
    let key_file = s.dir.path().join("host.key");
    let old_key = s.dir.path().join("old.key");
    let new_key = s.dir.path().join("new.key");
    fs::write(&old_key, "0123456789abcdef0123456789abcdef-old\n").unwrap();
    fs::write(&new_key, "fedcba9876543210fedcba9876543210-new\n").unwrap();
    for f in [&old_key, &new_key] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o600)).unwrap();
    }
    fs::copy(&old_key, &key_file).unwrap();
    let text = fs::read_to_string(&s.config).unwrap().replace(
        "auth: {mode: none}",
        &format!("auth: {{mode: hmac, key_file: {key_file:?}}}"),
    );
    fs::write(&s.config, text).unwrap();
    let mut d = Daemon::start(&s.config);
    let agent = format!("http://{}", d.addr);
    let status_with = |key: &Path| {
        Command::new(QUIESCE)
            .args(["status", "--json", "--agent", &agent])
            .arg("--key-file")
            .arg(key)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(status_with(&old_key), Some(0));
    assert_ne!(status_with(&new_key), Some(0));

    fs::copy(&new_key, &key_file).unwrap();
    d.signal("HUP");
    d.wait_log("configuration reloaded", Duration::from_secs(5));
    assert_eq!(status_with(&new_key), Some(0));
    assert_ne!(status_with(&old_key), Some(0));

    // A key file that breaks the rules is refused and the key in force stays.
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();
    d.signal("HUP");
    d.wait_log("reload refused", Duration::from_secs(5));
    assert_eq!(status_with(&new_key), Some(0));
}

#[test]
fn sigterm_during_a_pre_hook_cancels_it_runs_the_due_post_hooks_and_exits_0() {
    require_root();
    let s = scene("30s", "[]");
    let dir = s.dir.path().to_path_buf();
    let log = dir.join("hook.log");
    let quick = script(
        &dir,
        "quick.sh",
        &format!("echo \"quick $QUIESCE_PHASE\" >> {log:?}"),
    );
    let slow = script(
        &dir,
        "slow.sh",
        &format!(
            "echo \"slow $QUIESCE_PHASE\" >> {log:?}\n[ \"$QUIESCE_PHASE\" = pre ] && exec sleep 60\nexit 0"
        ),
    );
    set_hooks(
        &s,
        &format!(
            "[{{name: quick, pre: [{quick:?}], post: [{quick:?}]}}, {{name: slow, pre: [{slow:?}], post: [{slow:?}]}}]"
        ),
    );
    let mut d = Daemon::start(&s.config);
    let id = start_snapshot(&d);
    wait_hook_log(&dir, "slow pre");
    let t = Instant::now();
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(15)), 0);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    // Post hooks in reverse order, for each hook whose pre hook started; nothing was frozen.
    assert_eq!(
        hook_log(&dir),
        "quick pre\nslow pre\nslow post\nquick post\n"
    );
    assert!(!is_frozen(&s.fs.mount));
    assert!(!id.is_empty());
}

#[test]
fn sigint_while_frozen_thaws_at_once_and_a_second_signal_changes_nothing() {
    require_root();
    let s = scene("30s", "[]");
    let dir = s.dir.path().to_path_buf();
    // The post hook takes a while, so the second signal arrives while it runs.
    slow_post_hook(&s, "");
    let mut d = Daemon::start(&s.config);
    let id = start_snapshot(&d);
    wait_state(&d, &id, "frozen");
    let mut w = Writer::start_probe(&s.fs.mount);
    w.assert_blocked_for(Duration::from_millis(100));
    d.signal("INT");
    // Thawed at once, before the post hook has finished.
    w.assert_finishes_within(Duration::from_secs(1));
    wait_hook_log(&dir, "post start");
    d.signal("TERM");
    d.signal("INT");
    let (code, log_text) = d.exit(Duration::from_secs(10));
    assert_eq!(code, 0, "{log_text}");
    assert!(log_text.contains("while stopping"), "{log_text}");
    assert_eq!(hook_log(&dir), "pre start\npre end\npost start\npost end\n");
}

#[test]
fn sigterm_during_post_hooks_lets_them_finish() {
    require_root();
    let s = scene("30s", "[]");
    let dir = s.dir.path().to_path_buf();
    slow_post_hook(&s, " $QUIESCE_THAW_REASON");
    let mut d = Daemon::start(&s.config);
    let id = start_snapshot(&d);
    wait_state(&d, &id, "frozen");
    let (code, _) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!(code, 200);
    wait_hook_log(&dir, "post start");
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0);
    // The host's thaw came first: the snapshot finished as taken, with its post hook whole.
    assert_eq!(
        hook_log(&dir),
        "pre start\npre end \npost start\npost end host\n"
    );
}

#[test]
fn sighup_while_frozen_leaves_the_running_snapshot_on_its_configuration() {
    require_root();
    let dir = scratch_dir();
    let s = scene("30s", &logging_hook(dir.path()));
    let mut notify = NotifySocket::bind(dir.path());
    let sock = notify.path.to_str().unwrap().to_string();
    let mut d = Daemon::start_with_env(&s.config, &[("NOTIFY_SOCKET", &sock)]);
    notify.expect("READY=1", Duration::from_secs(5));
    let id = start_snapshot(&d);
    wait_state(&d, &id, "frozen");
    set_hooks(&s, "[]");
    d.signal("HUP");
    // While frozen the log waits in memory: the reload's end shows on the notify socket.
    notify.expect("RELOADING=1", Duration::from_secs(5));
    notify.expect("READY=1", Duration::from_secs(5));
    assert!(is_frozen(&s.fs.mount), "a reload must not thaw");
    let (code, _) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!(code, 200);
    let done = wait_state(&d, &id, "done");
    assert_eq!(done["consistency"], "application", "{done}");
    d.wait_log("configuration reloaded", Duration::from_secs(5));
    // The snapshot's post hook came from the configuration it started with...
    assert_eq!(hook_log(dir.path()), "pre -\npost host\n");
    // ...and the next one runs none.
    assert_eq!(cycle(&d)["hooks"], serde_json::json!([]));
    assert_eq!(hook_log(dir.path()), "pre -\npost host\n");
}

#[test]
fn a_service_manager_that_never_reads_its_socket_never_blocks_a_snapshot() {
    require_root();
    let s = scene("30s", "[]");
    // Bound, never read: its queue fills after a few dozen datagrams and a blocking send
    // would then wait forever.
    let path = s.dir.path().join("deaf.sock");
    let _deaf = UnixDatagram::bind(&path).unwrap();
    let d = Daemon::start_with_env(
        &s.config,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "20000"),
        ],
    );
    let t = Instant::now();
    for _ in 0..40 {
        let done = cycle(&d);
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "40 cycles took {:?}",
        t.elapsed()
    );
}
