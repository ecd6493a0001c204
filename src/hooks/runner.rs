//! The agent's side of a hook run: starts the helper, sends the output to the log, keeps its
//! tail for the report, and turns the helper's result line into a [`HookOutcome`].

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use super::capture::{Capture, LogItem};
use super::exec::KILL_WAIT;
use super::protocol::{HelperEvent, HelperReport};
use super::{HookOutcome, HookSpec, OUTPUT_TAIL_BYTES};
use crate::systemd::dbus::scope::{self, Scope};

/// After the helper exits, output still in the pipe is read for this long; a process the hook
/// left running may hold the pipe open forever.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);
/// The result line is written just before the helper exits; only a broken helper misses it.
const RESULT_DRAIN: Duration = Duration::from_secs(1);
/// On top of timeout, grace and kill wait, before a helper that did not end is given up on.
const HELPER_SLACK: Duration = Duration::from_secs(5);
/// The helper's stdout carries two short lines; more means something is wrong.
const RESULT_BYTES_MAX: u64 = 64 * 1024;

/// Runs one hook command to its end and reports it; never panics on the hook's behaviour.
///
/// `exe` is this binary (`/proc/self/exe` in the agent). When `cancel` becomes true the hook's
/// process tree is stopped (SIGTERM, grace, SIGKILL) and the outcome is `cancelled`; when it is
/// already true nothing is started. Dropping the returned future also stops the tree: the helper
/// sees its stdin close.
pub async fn run_hook(
    spec: &HookSpec,
    exe: &Path,
    mut cancel: watch::Receiver<bool>,
) -> HookOutcome {
    let start = Instant::now();
    if *cancel.borrow_and_update() {
        return HookOutcome {
            cancelled: true,
            error: Some("cancelled before it started".to_owned()),
            ..Default::default()
        };
    }
    if spec.argv.is_empty() {
        return HookOutcome {
            error: Some("empty hook command".to_owned()),
            ..Default::default()
        };
    }

    let mut cmd = Command::new(exe);
    cmd.arg("hook-exec")
        .arg(format!("--timeout-ms={}", millis_ceil(spec.timeout)))
        .arg(format!("--grace-ms={}", millis_ceil(spec.kill_grace)))
        .arg("--cancel-on-eof")
        .arg("--wait-go")
        .arg("--")
        .args(&spec.argv)
        // Through the helper's own environment, which it passes on: values never show up in
        // a command line that every user can read in /proc.
        .envs(&spec.env)
        .envs(spec.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let outcome = HookOutcome {
                error: Some(format!("starting the hook helper {}: {e}", exe.display())),
                duration: start.elapsed(),
                ..Default::default()
            };
            log_outcome(spec, &outcome);
            return outcome;
        }
    };
    let helper = child.id().map(|pid| Pid::from_raw(pid as i32));
    // The helper waits for the go byte before it starts the hook, so the scope (when systemd
    // gives one) holds the hook's whole tree from its first process. Bounded: no bus or no
    // systemd costs nothing measurable, a bus that does not answer at most a few seconds once.
    let scope = match child.id() {
        Some(pid) => start_scope(spec, pid).await,
        None => None,
    };
    // Written once (the go byte), then never again: its end-of-file (this future dropped, the
    // agent dead) cancels the run; closed instead of go when cancelled meanwhile.
    let mut liveness = child.stdin.take();
    if *cancel.borrow() {
        liveness = None;
    } else if let Some(stdin) = liveness.as_mut() {
        let _ = stdin.write_all(b"g").await;
    }
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        unreachable!("both pipes were requested");
    };
    let mut events = BufReader::new(stdout.take(RESULT_BYTES_MAX)).lines();

    let mut capture = Capture::new(OUTPUT_TAIL_BYTES);
    let mut log = |item: LogItem<'_>| match item {
        LogItem::Line(line) => tracing::info!("{line}"),
        LogItem::Truncated => tracing::warn!(
            "output truncated in the log (the report keeps the last {OUTPUT_TAIL_BYTES} bytes)"
        ),
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut output_open = true;
    let mut events_open = true;
    let mut cancel_armed = true;
    let mut cancel_sent = false;
    let mut hook_pid = None;
    let mut report: Option<HelperReport> = None;
    let mut helper_error: Option<String> = None;
    let stuck = tokio::time::sleep(
        spec.timeout
            .saturating_add(spec.kill_grace)
            .saturating_add(KILL_WAIT)
            .saturating_add(HELPER_SLACK),
    );
    tokio::pin!(stuck);
    let mut stuck_fired = false;

    let status = loop {
        tokio::select! {
            r = stderr.read(&mut buf), if output_open => match r {
                Ok(0) | Err(_) => output_open = false,
                Ok(n) => capture.push(&buf[..n], &mut log),
            },
            r = events.next_line(), if events_open => match r {
                Ok(Some(line)) => take_event(&line, &mut hook_pid, &mut report),
                Ok(None) | Err(_) => events_open = false,
            },
            r = cancel.changed(), if cancel_armed => match r {
                Ok(()) if *cancel.borrow_and_update() => {
                    cancel_armed = false;
                    cancel_sent = true;
                    if let Some(pid) = helper {
                        let _ = kill(pid, Signal::SIGTERM);
                    }
                }
                Ok(()) => {}
                // The sender is gone: nobody can cancel any more.
                Err(_) => cancel_armed = false,
            },
            () = &mut stuck, if !stuck_fired => {
                stuck_fired = true;
                helper_error = Some("the hook helper did not finish in time and was killed".into());
                if let Some(pid) = helper {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            },
            s = child.wait() => break s,
        }
    };

    let drain_end = tokio::time::Instant::now() + OUTPUT_DRAIN;
    while output_open {
        match tokio::time::timeout_at(drain_end, stderr.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => output_open = false,
            Ok(Ok(n)) => capture.push(&buf[..n], &mut log),
            Err(_) => break,
        }
    }
    capture.finish(&mut log);
    if output_open {
        // A process the hook left behind still holds the pipe. Keep reading (and dropping) so
        // its writes do not fail with SIGPIPE; it is the operator's service, not ours to break.
        tokio::spawn(discard(stderr));
    }
    let result_end = tokio::time::Instant::now() + RESULT_DRAIN;
    while events_open && report.is_none() {
        match tokio::time::timeout_at(result_end, events.next_line()).await {
            Ok(Ok(Some(line))) => take_event(&line, &mut hook_pid, &mut report),
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => events_open = false,
        }
    }

    // The tree had to be stopped (or its helper was lost): the cgroup reaches whatever the
    // helper could not. A hook that ended by itself keeps what it left running (see the module
    // doc), and systemd drops its scope once that is gone too.
    let stopped = report
        .as_ref()
        .is_none_or(|r| r.timed_out || r.cancelled || r.error.is_some());
    if let Some(scope) = &scope {
        if stopped {
            scope.kill().await;
        }
    }
    drop(liveness);

    let mut outcome = HookOutcome {
        output: capture.tail_text(),
        output_bytes: capture.total(),
        ..Default::default()
    };
    match report {
        Some(r) => {
            outcome.exit_code = r.exit_code;
            outcome.signal = r.signal;
            outcome.timed_out = r.timed_out;
            outcome.cancelled = r.cancelled;
            outcome.duration = Duration::from_micros(r.duration_us);
            outcome.error = r.error;
            outcome.signalled = r.signalled;
            outcome.stray_processes = r.stray_processes;
        }
        None => {
            // The helper died (OOM killer, a stray kill): its hook may still run untracked, so
            // kill its group, the part of the tree still reachable from here.
            if let Some(pid) = hook_pid {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let status = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            outcome.error =
                Some(helper_error.unwrap_or_else(|| {
                    format!("the hook helper ended without a result ({status})")
                }));
            outcome.cancelled = cancel_sent;
            outcome.duration = start.elapsed();
        }
    }
    log_outcome(spec, &outcome);
    outcome
}

/// Creates the run's scope unit around the helper (see [`crate::systemd::dbus::scope`]).
async fn start_scope(spec: &HookSpec, helper_pid: u32) -> Option<Scope> {
    let snapshot = &spec.snapshot_id;
    let name = scope::unit_name(snapshot, &spec.name, spec.phase.as_str());
    let description = format!(
        "quiesce {} hook {} of snapshot {snapshot}",
        spec.phase, spec.name
    );
    scope::start(&name, helper_pid, &description).await
}

/// Records one line of the helper's stdout; anything unparsable is ignored (the missing result
/// is what gets reported).
fn take_event(line: &str, hook_pid: &mut Option<i32>, report: &mut Option<HelperReport>) {
    match serde_json::from_str::<HelperEvent>(line) {
        Ok(HelperEvent::Started { pid }) => *hook_pid = Some(pid),
        Ok(HelperEvent::Finished(r)) => *report = Some(r),
        Err(e) => tracing::debug!("unreadable line from the hook helper: {e}"),
    }
}

async fn discard(mut pipe: impl AsyncRead + Unpin) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

fn log_outcome(spec: &HookSpec, outcome: &HookOutcome) {
    let ms = outcome.duration.as_millis() as u64;
    match outcome.failure() {
        None => tracing::info!(duration_ms = ms, "hook {} succeeded", spec.name),
        Some(why) if outcome.timed_out => tracing::warn!(
            message_id = crate::logging::ids::HOOK_TIMED_OUT,
            duration_ms = ms,
            "hook {} timed out: {why}",
            spec.name
        ),
        Some(why) => tracing::warn!(
            message_id = crate::logging::ids::HOOK_FAILED,
            duration_ms = ms,
            "hook {} failed: {why}",
            spec.name
        ),
    }
    if outcome.stray_processes > 0 {
        tracing::info!(
            "{} processes started by the hook are still running",
            outcome.stray_processes
        );
    }
}

/// Whole milliseconds, rounded up so a short timeout never becomes zero.
fn millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}
