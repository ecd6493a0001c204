//! A client of the qga endpoint and a scene whose daemon serves it (tests/qga.rs,
//! tests/imports.rs).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::{scene, Scene};

/// A scene whose daemon also serves qga on DIR/qga.sock, with `extra` YAML lines under `qga:`.
pub fn qga_scene(hooks: &str, extra: &str) -> (Scene, PathBuf) {
    let s = scene("30s", hooks);
    let sock = s.dir.path().join("qga.sock");
    let mut text = fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!(
        "qga:\n  enabled: true\n  path: unix:{}\n{extra}",
        sock.display()
    ));
    fs::write(&s.config, text).unwrap();
    (s, sock)
}

/// One connection to a qga endpoint.
pub struct Qga {
    s: UnixStream,
    pending: Vec<u8>,
}

impl Qga {
    pub fn connect(path: &Path) -> Qga {
        let s =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Qga {
            s,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Everything that arrives until `within` passes or `lines` lines have come.
    pub fn read_lines(&mut self, lines: usize, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 65536];
        while self.pending.iter().filter(|&&b| b == b'\n').count() < lines
            && Instant::now() < deadline
        {
            match self.s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        std::mem::take(&mut self.pending)
    }

    /// Sends one request, returns its reply (one line, parsed).
    pub fn call(&mut self, request: &str) -> Value {
        self.send(request.as_bytes());
        let out = self.read_lines(1, Duration::from_secs(60));
        parse_line(&out)
    }
}

pub fn parse_line(out: &[u8]) -> Value {
    let text = String::from_utf8_lossy(out);
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "one line: {text:?}"
    );
    serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}
