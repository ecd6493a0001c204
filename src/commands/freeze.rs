//! `quiesce freeze`: a local freeze without the daemon, through the same snapshot path as every
//! other front door (a `file_system` snapshot with no hooks, driven from the command line).
//!
//! Output, on stdout, one JSON object per line: `{"event":"frozen",...}` once every mount has an
//! outcome, then `{"event":"done",...}` after the thaw. Exit 0 only when every target froze and
//! was thawed before the deadline.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use super::args::FreezeArgs;
use crate::freezer::protocol::escaped_path;
use crate::freezer::recovery::{self, AgentLock, Recovery};
use crate::freezer::select::SkipReason;
use crate::freezer::session::{rfc3339, MountStatus, Outcome};
use crate::freezer::{self, FreezeOptions};
use crate::snapshot::lifecycle::{Reason, Requested, State, ThawReason};
use crate::snapshot::model::Snapshot;
use crate::snapshot::ports::{FreezeView, Ports};
use crate::snapshot::{
    self, Context, Control, ControlMsg, Outputs, Prepared, Request, RequestError,
};

/// A mount that is not frozen, and why.
#[derive(Debug, Serialize)]
struct Skipped {
    #[serde(with = "escaped_path")]
    path: PathBuf,
    fstype: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    event: &'a str,
    thaw_reason: Option<&'static str>,
    freeze_started_at: Option<String>,
    frozen_at: Option<String>,
    thawed_at: Option<String>,
    /// From the first FIFREEZE call to the end of the last thaw.
    frozen_ms: Option<f64>,
    mounts: &'a [MountStatus],
    skipped: &'a [Skipped],
    exec_exit_code: Option<i32>,
    recovered: &'a [Recovery],
    warnings: &'a [String],
}

fn print_report(
    event: &str,
    v: &FreezeView,
    skipped: &[Skipped],
    exec_exit_code: Option<i32>,
    recovered: &[Recovery],
) {
    let report = Report {
        event,
        thaw_reason: v.thaw_reason.map(|r| r.as_str()),
        freeze_started_at: v.times.freeze_started_ms.map(rfc3339),
        frozen_at: v.times.settled_ms.map(rfc3339),
        thawed_at: v.times.thawed_ms.map(rfc3339),
        frozen_ms: v.times.frozen_us.map(|us| us as f64 / 1000.0),
        mounts: &v.mounts,
        skipped,
        exec_exit_code,
        recovered,
        warnings: &v.warnings,
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
}

/// Runs the command; returns the exit code.
pub async fn run(args: FreezeArgs) -> anyhow::Result<i32> {
    let (ctx, prepared) = prepare(&args)?;
    let state_dir = ctx.config.state_dir.clone();
    let _lock = AgentLock::acquire(&state_dir)
        .with_context(|| format!("locking state_dir {}", state_dir.display()))?;
    // Whatever a killed predecessor left frozen is thawed first (same filesystems only).
    let dir = state_dir.clone();
    let recovered = tokio::task::spawn_blocking(move || recovery::thaw_recorded(&dir))
        .await?
        .context("recovering records in state_dir")?;
    let skipped = skipped(&prepared);
    // Refused before anything runs: a state_dir on a target, a mount point that cannot be
    // opened (the daemon reports these in the snapshot instead; here they are bad input).
    freezer::plan(
        &prepared.discovery,
        &FreezeOptions {
            timeout: prepared.timeout,
            preflush: prepared.request.preflush,
            flush_budget: prepared.timeout,
            state_dir,
            expedite_rcu: ctx.config.freeze.expedite_rcu,
        },
    )?;

    // Signals are watched before the freeze, so that none can kill us half-way.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let (controls, rx) = mpsc::channel(4);
    let (report_tx, mut report) = watch::channel(snapshot::initial_snapshot(&prepared));
    let (view_tx, view) = watch::channel(FreezeView::default());
    let ports = Ports::real(&ctx.exe);
    let task = tokio::spawn(snapshot::run_with(
        ctx,
        ports,
        prepared,
        rx,
        Outputs {
            report: report_tx,
            freeze_view: Some(view_tx),
        },
    ));
    let _ = report
        .wait_for(|s| !matches!(s.state, State::PreHooks | State::Freezing))
        .await;
    if let Some(error) = freeze_failure(&report.borrow()) {
        // The watchdog could not start: nothing is frozen; end the snapshot and say why.
        send(&controls, Control::Shutdown).await;
        let _ = task.await;
        bail!("{error}");
    }
    print_report("frozen", &view.borrow(), &skipped, None, &recovered);

    let mut exec_child = match &args.exec {
        Some(cmd) => {
            Some(super::spawn_shell(cmd).with_context(|| format!("running --exec {cmd:?}"))?)
        }
        None => None,
    };
    let mut exec_exit_code = None;
    let control = tokio::select! {
        // The deadline (or an error) thawed first.
        _ = report.wait_for(|s| s.state != State::Frozen) => None,
        code = told(exec_child.as_mut()) => { exec_exit_code = code; Some(Control::HostThaw { taken: true }) }
        _ = sigterm.recv() => Some(Control::Shutdown),
        _ = sigint.recv() => Some(Control::Shutdown),
    };
    if let Some(control) = control {
        send(&controls, control).await;
    }
    drop(controls);
    let end = task.await.context("the snapshot task")?;
    if let (Some(child), None) = (exec_child.as_mut(), exec_exit_code) {
        // The deadline or a signal came first: the command still decides nothing, but its
        // exit code belongs in the report.
        if control != Some(Control::Shutdown) {
            exec_exit_code = child.wait().await.ok().map(|s| s.code().unwrap_or(-1));
        }
    }
    let v = view.borrow().clone();
    print_report("done", &v, &skipped, exec_exit_code, &recovered);
    let all_froze = v
        .mounts
        .iter()
        .all(|m| matches!(m.outcome, Outcome::Thawed | Outcome::Unsupported));
    let ok = all_froze
        && end.state == State::Succeeded
        && v.thaw_reason == Some(ThawReason::Host)
        && exec_exit_code.unwrap_or(0) == 0;
    Ok(if ok { 0 } else { 1 })
}

/// The config (without hooks: the operator's own freeze) and the request, checked as the
/// HTTP API checks one, in this command's words.
fn prepare(args: &FreezeArgs) -> anyhow::Result<(Context, Prepared)> {
    let mut config = super::load_config(&args.config.config)?;
    if let Some(why) = config.why_no_freeze() {
        bail!("freezing is disabled in the configuration ({why})");
    }
    config.hooks.clear();
    let exe = PathBuf::from("/proc/self/exe");
    let ports = Ports::real(&exe);
    let ctx = Context {
        config: Arc::new(config),
        exe,
        callback_key: None,
    };
    let request = Request {
        id: crate::agent::new_id(),
        request_id: None,
        channel: crate::snapshot::model::Channel::Cli,
        requested: Requested::FileSystem,
        freeze_timeout: args.timeout,
        mounts: (!args.mounts.is_empty()).then(|| args.mounts.clone()),
        callback_url: None,
        preflush: !args.no_flush,
    };
    let prepared = match snapshot::prepare_with(&ctx, &ports, request) {
        Ok(p) => p,
        Err(RequestError::Timeout { asked, max }) => {
            bail!("--timeout {asked} must be above 0 and at most freeze.max_timeout ({max})")
        }
        Err(e) => return Err(e.into()),
    };
    if prepared.discovery.targets.is_empty() {
        bail!("no mount to freeze: every mount is skipped (`quiesce check-config` shows why)");
    }
    Ok((ctx, prepared))
}

/// The mounts the operator may have expected frozen; those left out by the include list or the
/// --mount list, or hidden, are noise here (check-config shows them).
fn skipped(prepared: &Prepared) -> Vec<Skipped> {
    prepared
        .discovery
        .skipped
        .iter()
        .filter(|(_, why)| {
            !matches!(
                why,
                SkipReason::NotIncluded | SkipReason::NotRequested | SkipReason::Shadowed
            )
        })
        .map(|(m, why)| Skipped {
            path: m.mount_point.clone(),
            fstype: m.fstype.clone(),
            reason: why.to_string(),
        })
        .collect()
}

/// Why the freeze could not start at all, if so.
fn freeze_failure(s: &Snapshot) -> Option<String> {
    s.errors
        .iter()
        .find(|e| e.reason == Reason::FreezeFailed)
        .map(|e| e.message.clone())
}

/// Until CMD exits (its exit code), or without CMD until stdin gets a line or ends.
async fn told(exec_child: Option<&mut tokio::process::Child>) -> Option<i32> {
    match exec_child {
        Some(child) => child.wait().await.ok().map(|s| s.code().unwrap_or(-1)),
        None => {
            let mut line = String::new();
            let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let _ = stdin.read_line(&mut line).await;
            None
        }
    }
}

/// Hands a control to the snapshot and waits for its answer (after the thaw, for a thaw).
async fn send(controls: &mpsc::Sender<ControlMsg>, control: Control) {
    let (reply, answer) = oneshot::channel();
    let msg = ControlMsg {
        control,
        reply: Some(reply),
    };
    if controls.send(msg).await.is_ok() {
        let _ = answer.await;
    }
}
