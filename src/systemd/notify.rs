//! systemd's service protocol (sd_notify(3)): readiness, the status line, reload, stopping and
//! the watchdog. Every call is a no-op where the daemon does not run under systemd (no
//! `NOTIFY_SOCKET`), never blocks (a full queue drops a status, and retries READY, RELOADING
//! and STOPPING from the runtime), and a failed notification is only logged: the agent's work
//! never depends on it. Written out here rather than with a crate because the crates send with
//! a blocking socket.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// How long a notification that matters (READY, RELOADING, STOPPING) is retried while the
/// service manager's queue is full; STATUS and WATCHDOG are simply dropped then (the next one
/// replaces them).
const RETRY_FOR: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// One datagram to `$NOTIFY_SOCKET`, never blocking: the daemon's only thread must not wait
/// for the service manager, least of all while filesystems are frozen. `Ok(false)` when the
/// socket's queue is full.
fn try_send(message: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(true);
    };
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    match socket.send_to_addr(message.as_bytes(), &addr) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

fn send(lines: &[String], retry: bool) {
    let message = lines.join("\n") + "\n";
    match try_send(&message) {
        Ok(true) => {}
        Ok(false) if retry => {
            // Retried from the runtime, so that nothing waits for it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let deadline = tokio::time::Instant::now() + RETRY_FOR;
                    while tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(RETRY_EVERY).await;
                        if !matches!(try_send(&message), Ok(false)) {
                            return;
                        }
                    }
                    tracing::warn!("sd_notify: the service manager did not take {message:?}");
                });
            }
        }
        Ok(false) => tracing::debug!("sd_notify: queue full, dropped {message:?}"),
        Err(e) => tracing::debug!("sd_notify: {e}"),
    }
}

fn status_field(text: &str) -> String {
    // One line per datagram field: a newline would start another assignment.
    format!("STATUS={}", text.replace('\n', " "))
}

/// READY=1 with a first status line: the configuration is valid and the listener is bound.
pub fn ready(status: &str) {
    send(&["READY=1".into(), status_field(status)], true);
}

/// The one-line status `systemctl status quiesce` shows.
pub fn status(text: &str) {
    send(&[status_field(text)], false);
}

/// RELOADING=1 (with the monotonic time systemd 253 and later ask for), before a reload.
pub fn reloading() {
    let mut lines = vec!["RELOADING=1".to_string()];
    if let Ok(now) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        let usec = now.tv_sec() as i128 * 1_000_000 + now.tv_nsec() as i128 / 1_000;
        lines.push(format!("MONOTONIC_USEC={usec}"));
    }
    send(&lines, true);
}

/// READY=1 again once a reload is over, whether it was applied or refused.
pub fn reloaded(status: &str) {
    ready(status);
}

/// STOPPING=1: shutdown has begun (thaw, post hooks).
pub fn stopping(status: &str) {
    send(&["STOPPING=1".into(), status_field(status)], true);
}

/// Asks systemd for `more` time before it escalates the stop (post hooks may be slow).
pub fn extend_stop_timeout(more: Duration) {
    send(&[format!("EXTEND_TIMEOUT_USEC={}", more.as_micros())], true);
}

/// How often to ping the watchdog: half of `WatchdogSec=`, as sd_watchdog_enabled(3) advises;
/// `None` when the unit has no watchdog for this process (`WATCHDOG_PID` names another).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// WATCHDOG=1: the main loop is alive.
pub fn ping() {
    send(&["WATCHDOG=1".into()], false);
}
