//! `quiesce freeze` run by a test: a config restricted to the test's own loop mounts, the
//! running command with its JSON lines on a channel, `thaw-all`, and the records in state_dir.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::QUIESCE;
use super::stop_child;

/// A config restricted to the test's own loop mounts, with a state_dir in the scratch dir.
pub struct Agent {
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

impl Agent {
    pub fn new(dir: &Path, include: &[&Path]) -> Agent {
        Agent::with_extra(dir, include, "")
    }

    pub fn with_extra(dir: &Path, include: &[&Path], extra: &str) -> Agent {
        let state_dir = dir.join("state");
        let config = dir.join("config.yaml");
        let list: Vec<String> = include.iter().map(|p| format!("{:?}", p)).collect();
        fs::write(
            &config,
            format!(
                "listen: \"unix:{}\"\nstate_dir: {:?}\nauth: {{mode: none}}\nfreeze:\n  max_timeout: 60s\n  include_mounts: [{}]\n{extra}",
                dir.join("api.sock").display(),
                state_dir,
                list.join(", ")
            ),
        )
        .unwrap();
        Agent { config, state_dir }
    }

    pub fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(QUIESCE);
        c.arg(sub).arg("--config").arg(&self.config);
        c
    }

    pub fn freeze(&self, args: &[&str]) -> Freezing {
        self.freeze_with(args, false)
    }

    /// `quiesce freeze` in a process group of its own (its watchdog joins it).
    pub fn freeze_in_new_group(&self, args: &[&str]) -> Freezing {
        self.freeze_with(args, true)
    }

    pub fn freeze_with(&self, args: &[&str], new_group: bool) -> Freezing {
        use std::os::unix::process::CommandExt;
        let mut c = self.command("freeze");
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if new_group {
            c.process_group(0);
        }
        let mut child = c.spawn().expect("spawn quiesce freeze");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
            let _ = etx.send(text);
        });
        Freezing {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    pub fn thaw_all(&self) -> (i32, String, String) {
        let out = self.command("thaw-all").output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    pub fn records(&self) -> Vec<PathBuf> {
        match fs::read_dir(self.state_dir.join("frozen")) {
            Err(_) => vec![],
            Ok(rd) => rd
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect(),
        }
    }

    pub fn wait_no_records(&self, within: Duration) {
        let t = Instant::now();
        while !self.records().is_empty() {
            assert!(
                t.elapsed() < within,
                "records left in state_dir: {:?}",
                self.records()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `quiesce freeze`.
pub struct Freezing {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

impl Freezing {
    pub fn next_json(&mut self, within: Duration) -> Value {
        match self.lines.recv_timeout(within) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("quiesce printed a line that is not JSON ({e}): {line}")
            }),
            Err(_) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = self.stderr.recv_timeout(Duration::from_secs(2));
                panic!("no report from quiesce freeze within {within:?}; stderr: {err:?}")
            }
        }
    }

    /// The `frozen` line: every mount has its outcome.
    pub fn frozen(&mut self) -> Value {
        let v = self.next_json(Duration::from_secs(60));
        assert_eq!(v["event"], "frozen", "{v}");
        v
    }

    /// The `done` line and the exit code.
    pub fn done(&mut self, within: Duration) -> (Value, i32) {
        let v = self.next_json(within);
        assert_eq!(v["event"], "done", "{v}");
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (v, code)
    }

    /// Asks for the thaw the way a caller does (a line on stdin).
    pub fn thaw(&mut self) -> (Value, i32) {
        let mut stdin = self.stdin.take().expect("stdin still open");
        stdin.write_all(b"thaw\n").unwrap();
        drop(stdin);
        self.done(Duration::from_secs(30))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr_text(&mut self) -> String {
        self.stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    }
}

impl Drop for Freezing {
    fn drop(&mut self) {
        // End of stdin asks for the thaw; then make sure the process is gone.
        self.stdin.take();
        stop_child(&mut self.child, None, Duration::from_secs(10));
    }
}
