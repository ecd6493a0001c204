//! The agent's side of a hook run: starts the helper (as a transient systemd service when
//! systemd is there, else as a child), sends the output to the log, keeps its tail for the
//! report, and turns the helper's result line into a [`HookOutcome`].

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::capture::{Capture, LogItem};
use super::exec::KILL_WAIT;
use super::protocol::{HelperEvent, HelperReport};
use super::{HookOutcome, HookSpec, OUTPUT_TAIL_BYTES};
use crate::systemd::dbus::scope::{self, Scope};
use crate::systemd::dbus::service;

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

    let helper_args = helper_args(spec);
    let mut process = match start_service(spec, exe, &helper_args).await {
        Some(p) => p,
        None => match start_direct(spec, exe, &helper_args).await {
            Ok(p) => p,
            Err(outcome) => return *outcome,
        },
    };
    // Written once (the go byte), then never again: its end-of-file (this future dropped, the
    // agent dead) cancels the run; closed instead of go when cancelled meanwhile.
    let mut liveness = Some(process.stdin);
    if *cancel.borrow() {
        liveness = None;
    } else if let Some(stdin) = liveness.as_mut() {
        let _ = stdin.write_all(b"g").await;
    }
    let stdout = process.stdout;
    let mut stderr = process.stderr;
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
                Ok(Some(line)) => {
                    take_event(&line, &mut hook_pid, &mut report);
                    // A service's helper is no child of ours: its result line (written just
                    // before it exits) or its stdout's end is its end.
                    if report.is_some() && process.handle.is_unit() {
                        break "it reported".to_owned();
                    }
                }
                Ok(None) | Err(_) => {
                    events_open = false;
                    if process.handle.is_unit() {
                        break "its stdout closed".to_owned();
                    }
                }
            },
            r = cancel.changed(), if cancel_armed => match r {
                Ok(()) if *cancel.borrow_and_update() => {
                    cancel_armed = false;
                    cancel_sent = true;
                    process.handle.signal(Signal::SIGTERM).await;
                }
                Ok(()) => {}
                // The sender is gone: nobody can cancel any more.
                Err(_) => cancel_armed = false,
            },
            () = &mut stuck, if !stuck_fired => {
                stuck_fired = true;
                helper_error = Some("the hook helper did not finish in time and was killed".into());
                process.handle.signal(Signal::SIGKILL).await;
            },
            s = process.handle.wait() => break s,
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
    // doc), and systemd drops its unit once that is gone too.
    let stopped = report
        .as_ref()
        .is_none_or(|r| r.timed_out || r.cancelled || r.error.is_some());
    if let Some(unit) = process.handle.unit() {
        if stopped {
            unit.kill().await;
        }
    }
    drop(liveness);
    if let Handle::Service(unit) = &process.handle {
        // The unit's end: systemd drops it once the helper is gone (KillMode=process: what the
        // hook left running stays, as in the direct path).
        if !unit.wait_gone().await {
            tracing::debug!(unit = %unit.name(), "the hook's service is still there after its helper ended");
        }
    }

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
            // kill its group, the part of the tree still reachable from here (a service's whole
            // cgroup was killed above).
            if let (Some(pid), Handle::Child { .. }) = (hook_pid, &process.handle) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
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

/// The helper's arguments after its program: the same in both paths.
fn helper_args(spec: &HookSpec) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "hook-exec".to_owned(),
        format!("--timeout-ms={}", millis_ceil(spec.timeout)),
        format!("--grace-ms={}", millis_ceil(spec.kill_grace)),
        "--cancel-on-eof".to_owned(),
        "--wait-go".to_owned(),
        "--".to_owned(),
    ];
    args.extend(spec.argv.iter().cloned());
    args
}

/// A started helper: its three pipes and how to reach it.
struct Started {
    stdin: Box<dyn AsyncWrite + Unpin + Send>,
    stdout: Box<dyn AsyncRead + Unpin + Send>,
    stderr: Box<dyn AsyncRead + Unpin + Send>,
    handle: Handle,
}

/// How the runner reaches a started helper.
enum Handle {
    /// Started by us: our child, in a transient scope when systemd made one.
    Child {
        child: Child,
        pid: Option<Pid>,
        scope: Option<Scope>,
    },
    /// Started by systemd as a transient service.
    Service(Scope),
}

impl Handle {
    fn is_unit(&self) -> bool {
        matches!(self, Handle::Service(_))
    }

    /// The unit whose cgroup holds the hook's tree, if any.
    fn unit(&self) -> Option<&Scope> {
        match self {
            Handle::Child { scope, .. } => scope.as_ref(),
            Handle::Service(unit) => Some(unit),
        }
    }

    /// SIGTERM: the helper stops its tree (grace, then SIGKILL) and reports. SIGKILL: the
    /// helper is given up on (a service's whole cgroup is killed).
    async fn signal(&self, signal: Signal) {
        match self {
            Handle::Child { pid: Some(pid), .. } => {
                let _ = kill(*pid, signal);
            }
            Handle::Child { pid: None, .. } => {}
            Handle::Service(unit) if signal == Signal::SIGKILL => unit.kill().await,
            Handle::Service(unit) => unit.signal_main(signal as i32).await,
        }
    }

    /// The child's exit; never for a service, whose end shows on its pipes.
    async fn wait(&mut self) -> String {
        match self {
            Handle::Child { child, .. } => match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            },
            Handle::Service(_) => std::future::pending().await,
        }
    }
}

/// Starts the helper as a transient service (see [`crate::systemd::dbus::service`]); `None`
/// when there is no systemd or it refused: the caller starts it directly.
async fn start_service(spec: &HookSpec, exe: &Path, args: &[String]) -> Option<Started> {
    // systemd runs it, not us: it needs the real path of this binary, not /proc/self/exe.
    let program = std::fs::canonicalize(exe)
        .ok()?
        .into_os_string()
        .into_string()
        .ok()?;
    let mut argv = vec![program.clone()];
    argv.extend(args.iter().cloned());
    let environment: Vec<String> = spec
        .env
        .iter()
        .chain(spec.vars.iter().map(|(k, v)| (k, v)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let (stdin_r, stdin_w) = std::io::pipe().ok()?;
    let (stdout_r, stdout_w) = std::io::pipe().ok()?;
    let (stderr_r, stderr_w) = std::io::pipe().ok()?;
    let snapshot = &spec.snapshot_id;
    let name = scope::service_name(snapshot, &spec.name, spec.phase.as_str());
    let description = format!(
        "quiesce {} hook {} of snapshot {snapshot}",
        spec.phase, spec.name
    );
    let svc = service::HookService {
        name: &name,
        description: &description,
        program: &program,
        argv: &argv,
        environment: &environment,
        stdin: stdin_r.as_fd(),
        stdout: stdout_w.as_fd(),
        stderr: stderr_w.as_fd(),
    };
    let unit = service::start(&svc).await.ok()?;
    // systemd holds its own copies now; ours would keep the pipes open past the helper's end.
    drop((stdin_r, stdout_w, stderr_w));
    let stdin = pipe::Sender::from_owned_fd(OwnedFd::from(stdin_w));
    let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout_r));
    let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr_r));
    let (Ok(stdin), Ok(stdout), Ok(stderr)) = (stdin, stdout, stderr) else {
        // Unreachable in practice (they are fresh pipes); the helper sees its stdin close.
        unit.kill().await;
        return None;
    };
    Some(Started {
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        stderr: Box::new(stderr),
        handle: Handle::Service(unit),
    })
}

/// Starts the helper as our child (no systemd: containers, tests), in a transient scope when
/// systemd gives one. Today's path, unchanged.
async fn start_direct(
    spec: &HookSpec,
    exe: &Path,
    args: &[String],
) -> Result<Started, Box<HookOutcome>> {
    let start = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.args(args)
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
            return Err(Box::new(outcome));
        }
    };
    let pid = child.id().map(|pid| Pid::from_raw(pid as i32));
    // The helper waits for the go byte before it starts the hook, so the scope (when systemd
    // gives one) holds the hook's whole tree from its first process. Bounded: no bus or no
    // systemd costs nothing measurable, a bus that does not answer at most a few seconds once.
    let scope = match child.id() {
        Some(pid) => start_scope(spec, pid).await,
        None => None,
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("the three pipes were requested");
    };
    Ok(Started {
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        stderr: Box::new(stderr),
        handle: Handle::Child { child, pid, scope },
    })
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
