//! A `quiesce daemon` run by a test: started from a config, its stderr lines on a channel, its
//! address read from its `listening on ADDR` line, and SIGTERM on drop (it thaws what it froze).

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{scratch_dir, Fs, LoopFs};

/// The binary under test.
pub const QUIESCE: &str = env!("CARGO_BIN_EXE_quiesce");

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    /// What follows `listening on ` in its log, once [`Daemon::listening`] saw it.
    pub addr: String,
    pub log: mpsc::Receiver<String>,
    /// Every log line read so far, for failure messages.
    pub seen: Vec<String>,
    /// Its config file (to find the key that [`Daemon::call`] signs with).
    pub config: Option<PathBuf>,
}

impl Daemon {
    /// Starts `quiesce daemon --config CONFIG` and waits until it listens.
    pub fn start(config: &Path) -> Daemon {
        let mut d = Daemon::spawn(&[], config);
        d.addr = d.listening();
        d
    }

    /// Starts it with extra environment variables and waits until it listens.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::spawn_with_env(&[], config, env);
        d.addr = d.listening();
        d
    }

    /// Starts it, run through `wrapper` (e.g. setpriv) when not empty; does not wait.
    pub fn spawn(wrapper: &[&str], config: &Path) -> Daemon {
        Daemon::spawn_with_env(wrapper, config, &[])
    }

    /// [`Daemon::spawn`] with extra environment variables.
    pub fn spawn_with_env(wrapper: &[&str], config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(QUIESCE);
                c
            }
            None => Command::new(QUIESCE),
        };
        let mut child = cmd
            .args(["daemon", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {wrapper:?} {QUIESCE}: {e}"));
        let (tx, log) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Daemon {
            child,
            addr: String::new(),
            log,
            seen: Vec::new(),
            config: Some(config.to_path_buf()),
        }
    }

    /// Waits for the line that says where it listens; returns what follows `listening on `.
    pub fn listening(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        return addr.trim().to_string();
                    }
                }
                Err(_) => panic!(
                    "the daemon never said where it listens; its log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit; returns the code and the whole log.
    pub fn exit(&mut self, within: Duration) -> (i32, String) {
        let t = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t.elapsed() < within,
                "the daemon did not exit within {within:?}; its log:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, once the daemon is gone.
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }

    /// Waits for a log line containing `needle`, at most `within`; returns it.
    pub fn wait_log(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?} within {within:?}; its log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit; returns the code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        self.exit(within).0
    }

    /// Sends a signal by name (`TERM`, `KILL`, `HUP`...).
    pub fn signal(&self, sig: &str) {
        super::run("kill", &[&format!("-{sig}"), &self.child.id().to_string()]);
    }

    /// `POST /v1/snapshots` with `body`, then waits until it is frozen; returns its id.
    pub fn frozen_snapshot(&self, body: &str) -> String {
        let (code, snap) = self.call("POST", "/v1/snapshots", Some(body));
        assert_eq!(code, 202, "{snap}");
        let id = snap["id"].as_str().unwrap().to_string();
        let (_, frozen) = self.call(
            "GET",
            &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=20000"),
            None,
        );
        assert_eq!(frozen["state"], "frozen", "{frozen}");
        id
    }

    /// The host's thaw (`storage_snapshot: taken`), then waits for the end; the ended Snapshot.
    pub fn thaw_until_done(&self, id: &str) -> Value {
        let (code, thawed) = self.call(
            "POST",
            &format!("/v1/snapshots/{id}/thaw"),
            Some(r#"{"storage_snapshot": "taken"}"#),
        );
        assert_eq!(code, 200, "{thawed}");
        let (_, done) = self.call(
            "GET",
            &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
            None,
        );
        done
    }

    /// One request (Connection: close), signed with the daemon's key when its config has
    /// `auth.mode: hmac` (the key file is read at each call: a test may change it); returns
    /// the status and the JSON body (a string when the body is not JSON, e.g. metrics).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let key = self.config.as_deref().and_then(config_key);
        let (status, text) = match key {
            Some(key) => signed_raw_call(&self.addr, &key, method, path, body.unwrap_or("")),
            None => raw_call(&self.addr, method, path, body.map(str::as_bytes)),
        };
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        super::stop_child(&mut self.child, Some("TERM"), Duration::from_secs(10));
    }
}

/// The key of a config with `auth.mode: hmac` (the default mode), when its file is readable.
pub fn config_key(config: &Path) -> Option<quiesce::auth::Key> {
    let v: serde_yaml::Value = serde_yaml::from_str(&fs::read_to_string(config).ok()?).ok()?;
    let auth = v.get("auth");
    let mode = auth
        .and_then(|a| a.get("mode"))
        .and_then(|m| m.as_str())
        .unwrap_or("hmac");
    if mode != "hmac" {
        return None;
    }
    let file = auth
        .and_then(|a| a.get("key_file"))
        .and_then(|k| k.as_str())
        .unwrap_or("/etc/quiesce/host.key");
    quiesce::auth::Key::from_file_contents(fs::read(file).ok()?).ok()
}

/// A stream to `addr`: `unix:PATH` or a TCP address.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Connects to `addr` (`unix:PATH` or `IP:PORT`) with a read timeout.
pub fn connect(addr: &str, timeout: Duration) -> Box<dyn Stream> {
    match addr.strip_prefix("unix:") {
        Some(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            s.set_read_timeout(Some(timeout)).unwrap();
            Box::new(s)
        }
        None => {
            let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            s.set_read_timeout(Some(timeout)).unwrap();
            Box::new(s)
        }
    }
}

/// The three signature headers of a request, as HTTP header lines.
pub fn signature_lines(key: &quiesce::auth::Key, method: &str, path: &str, body: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let nonce = quiesce::auth::new_nonce().unwrap();
    quiesce::auth::sign_request(key, method, path, body, now, nonce)
        .pairs()
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

/// [`raw_call`], signed with `key`.
pub fn signed_raw_call(
    addr: &str,
    key: &quiesce::auth::Key,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let extra = signature_lines(key, method, path, body.as_bytes());
    raw_call_with(addr, method, path, Some(body.as_bytes()), &extra)
}

/// One HTTP/1.1 request to `addr` (`IP:PORT` or `unix:PATH`); returns the status and the
/// body text.
pub fn raw_call(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    raw_call_with(addr, method, path, body, "")
}

/// [`raw_call`] with extra header lines (each ending in CRLF).
pub fn raw_call_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    extra: &str,
) -> (u16, String) {
    let mut s = connect(addr, Duration::from_secs(60));
    let body = body.unwrap_or(b"");
    let host = if addr.starts_with("unix:") {
        "localhost"
    } else {
        addr
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// A loopback port that was free a moment ago (the config must name a real port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A key file `DIR/host.key` (root's, 0600) and the `auth` YAML that names it.
pub fn hmac_auth(dir: &Path) -> String {
    let key = dir.join("host.key");
    fs::write(&key, "0123456789abcdef0123456789abcdef-scene-key\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    format!("{{mode: hmac, key_file: {key:?}}}")
}

/// `listen: unix:DIR/api.sock` with `auth.mode: none` (root's peers only): for tests that
/// need no signatures.
pub fn unix_listen_none(dir: &Path) -> String {
    format!(
        "listen: \"unix:{}\"\nauth: {{mode: none}}\n",
        dir.join("api.sock").display()
    )
}

/// A loop-mounted ext4 and a daemon config that may freeze only it (hmac with `DIR/host.key`
/// on a free loopback port: [`Daemon::call`] signs).
pub struct Scene {
    pub dir: tempfile::TempDir,
    pub fs: LoopFs,
    pub config: PathBuf,
}

/// A scene with the freeze `timeout` and the `hooks` YAML list.
pub fn scene(timeout: &str, hooks: &str) -> Scene {
    let dir = scratch_dir();
    let fs = LoopFs::create(dir.path(), "data", Fs::Ext4, 32);
    let config = dir.path().join("config.yaml");
    fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{}\nstate_dir: {:?}\nauth: {}\nfreeze:\n  timeout: {timeout}\n  include_mounts: [{:?}]\nhooks: {hooks}\n",
            free_port(),
            dir.path().join("state"),
            hmac_auth(dir.path()),
            fs.mount
        ),
    )
    .unwrap();
    Scene { dir, fs, config }
}

/// A hook that logs "PHASE THAW_REASON" to DIR/hook.log.
pub fn logging_hook(dir: &Path) -> String {
    let script = dir.join("hook.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$QUIESCE_PHASE ${{QUIESCE_THAW_REASON:--}}\" >> {}\n",
            dir.join("hook.log").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    format!("[{{name: app, pre: [{script:?}], post: [{script:?}]}}]")
}

/// What the logging hook wrote.
pub fn hook_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("hook.log")).unwrap_or_default()
}
