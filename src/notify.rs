//! systemd's service protocol (sd_notify): readiness, the status line, reload, stopping and the
//! watchdog. Every call is a no-op where the daemon does not run under systemd (no
//! `NOTIFY_SOCKET`), and a failed notification is only logged: the agent's work never depends
//! on it.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::lifecycle::State;
use crate::snapshot::model::Snapshot;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// READY=1 with a first status line: the configuration is valid and the listener is bound.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The one-line status `systemctl status quiesce` shows.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// RELOADING=1 (with the monotonic time systemd 253 and later ask for), before a reload.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// READY=1 again once a reload is over, whether it was applied or refused.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STOPPING=1: shutdown has begun (thaw, post hooks).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Asks systemd for `more` time before it escalates the stop (post hooks may be slow).
pub fn extend_stop_timeout(more: Duration) {
    let usec = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// How often to ping the watchdog: half of `WatchdogSec=`, as sd_watchdog_enabled(3) advises;
/// `None` when the unit has no watchdog for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// WATCHDOG=1: the main loop is alive.
pub fn ping() {
    send(&[NotifyState::Watchdog]);
}

/// The status line for a snapshot: its progress while it runs, then its result, e.g.
/// `last snapshot 2026-11-22T10:00:00Z: application, frozen 41 ms`.
pub fn status_line(s: &Snapshot) -> String {
    let frozen = s
        .frozen_ms
        .map(|ms| format!(", frozen {ms} ms"))
        .unwrap_or_default();
    if !s.state.is_end() {
        return format!("snapshot {} in progress: {}", s.id, s.state.as_str());
    }
    let when = s.finished_at.as_deref().unwrap_or(&s.created_at);
    let consistency = s
        .consistency
        .map(|c| c.as_str())
        .unwrap_or("no consistency");
    let outcome = match s.state {
        State::Succeeded => String::new(),
        other => format!(" ({})", other.as_str()),
    };
    let errors = match s.errors.len() {
        0 => String::new(),
        1 => format!(", 1 error: {}", s.errors[0].reason),
        n => format!(", {n} errors, first: {}", s.errors[0].reason),
    };
    format!("last snapshot {when}: {consistency}{outcome}{frozen}{errors}")
}
