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

    /// One request (Connection: close); returns the status and the JSON body (a string when
    /// the body is not JSON, e.g. metrics).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = raw_call(&self.addr, method, path, body.map(str::as_bytes));
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        super::stop_child(&mut self.child, Some("TERM"), Duration::from_secs(10));
    }
}

/// One HTTP/1.1 request to `addr`; returns the status and the body text.
pub fn raw_call(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
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

/// A loop-mounted ext4 and a daemon config that may freeze only it (auth none, free port).
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
            "listen: 127.0.0.1:{}\nstate_dir: {:?}\nauth: {{mode: none}}\nfreeze:\n  timeout: {timeout}\n  include_mounts: [{:?}]\nhooks: {hooks}\n",
            free_port(),
            dir.path().join("state"),
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
