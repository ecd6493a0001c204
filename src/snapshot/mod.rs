//! One snapshot, run in-process: the pure [`lifecycle`](crate::snapshot::lifecycle) core wired by the
//! [`driver`] to the hook runner and the freezer ([`ports`]). Every front door (the HTTP API,
//! the QEMU guest agent protocol, `quiesce freeze`) creates a [`Request`], checks it with [`prepare`] (a bad request changes
//! nothing), then drives [`run`] through [`ControlMsg`]s and watches the
//! [`Snapshot`](model::Snapshot) it publishes.

mod driver;
#[cfg(test)]
pub(crate) mod fakes;
pub mod lifecycle;
pub mod model;
pub mod ports;
#[cfg(test)]
mod tests;

pub use driver::Outputs;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::config::Config;
pub use crate::freezer::session::rfc3339;
use crate::freezer::{Discovery, PlanError};
use crate::hooks::{HookOutcome, HookSpec, Phase};
use crate::snapshot::lifecycle::{
    HookPlan, Lifecycle, Refusal, Requested, Setup, State, ThawReason,
};
use model::{HookReport, MountReport, Snapshot};
use ports::Ports;

/// What the agent needs to run snapshots.
#[derive(Debug, Clone)]
pub struct Context {
    pub config: Arc<Config>,
    /// This binary (`/proc/self/exe`): the watchdog and the hook helper run it.
    pub exe: PathBuf,
    /// Signs the callbacks to the host (`auth.mode: hmac`); `None` sends them unsigned.
    pub callback_key: Option<crate::auth::Key>,
}

/// A host's request (the body of `POST /v1/snapshots`, plus the id the agent gave it).
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub request_id: Option<String>,
    /// The front door it came through (reported as the Snapshot's `channel`).
    pub channel: model::Channel,
    pub requested: Requested,
    pub freeze_timeout: Option<Duration>,
    pub mounts: Option<Vec<PathBuf>>,
    /// Where the Snapshot is POSTed when it becomes `frozen` and when it ends.
    pub callback_url: Option<String>,
    /// syncfs every target before the first FIFREEZE (`quiesce freeze --no-flush` clears it).
    pub preflush: bool,
}

/// Why a request is refused before anything runs (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("freeze timeout {asked} must be above 0 and at most freeze.max_timeout ({max})")]
    Timeout { asked: String, max: String },
    #[error(transparent)]
    Mounts(#[from] PlanError),
}

/// A checked request, ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: Request,
    pub discovery: Discovery,
    pub timeout: Duration,
}

/// Checks a request against the config and this machine's mounts; changes nothing.
pub fn prepare(ctx: &Context, request: Request) -> Result<Prepared, RequestError> {
    prepare_with(ctx, &Ports::real(&ctx.exe), request)
}

/// [`prepare`], finding the targets through `ports`.
pub fn prepare_with(
    ctx: &Context,
    ports: &Ports,
    request: Request,
) -> Result<Prepared, RequestError> {
    let f = &ctx.config.freeze;
    let timeout = request.freeze_timeout.unwrap_or(f.timeout);
    if timeout.is_zero() || timeout > f.max_timeout {
        return Err(RequestError::Timeout {
            asked: crate::duration::format(timeout),
            max: crate::duration::format(f.max_timeout),
        });
    }
    let discovery = ports
        .freezers
        .discover(&ctx.config.rules(), request.mounts.as_deref())?;
    Ok(Prepared {
        request,
        discovery,
        timeout,
    })
}

/// What the host (or the daemon) asks of a running snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    HostThaw { taken: bool },
    Abort,
    Shutdown,
}

/// A control and where to answer it: `Ok` once nothing is frozen any more, or the refusal.
#[derive(Debug)]
pub struct ControlMsg {
    pub control: Control,
    pub reply: Option<oneshot::Sender<Result<(), Refusal>>>,
}

pub(crate) use crate::duration::unix_ms_now as now_ms;

/// The Snapshot as it stands when created (state `pre_hooks`).
pub fn initial_snapshot(p: &Prepared) -> Snapshot {
    Snapshot {
        id: p.request.id.clone(),
        request_id: p.request.request_id.clone(),
        channel: p.request.channel,
        state: State::PreHooks,
        requested_consistency: p.request.requested,
        consistency: None,
        created_at: rfc3339(now_ms()),
        frozen_at: None,
        thawed_at: None,
        finished_at: None,
        freeze_deadline: None,
        frozen_ms: None,
        thaw_reason: None,
        mounts: p
            .discovery
            .targets
            .iter()
            .map(|m| MountReport {
                path: m.mount_point.clone(),
                fstype: m.fstype.clone(),
                frozen: false,
                error: None,
            })
            .collect(),
        hooks: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
        rcu: None,
    }
}

/// Runs the snapshot to its end state, publishing every change on `report`.
pub async fn run(
    ctx: Context,
    prepared: Prepared,
    controls: mpsc::Receiver<ControlMsg>,
    report: watch::Sender<Snapshot>,
) -> Snapshot {
    let ports = Ports::real(&ctx.exe);
    run_with(
        ctx,
        ports,
        prepared,
        controls,
        Outputs {
            report,
            freeze_view: None,
        },
    )
    .await
}

/// [`run`] on the given seams, publishing on `out`.
pub async fn run_with(
    ctx: Context,
    ports: Ports,
    prepared: Prepared,
    mut controls: mpsc::Receiver<ControlMsg>,
    out: Outputs,
) -> Snapshot {
    let (lc, actions) = Lifecycle::start(setup(&ctx, prepared.request.requested));
    // Every record of this snapshot carries its id (journal field QUIESCE_SNAPSHOT_ID).
    let span = tracing::info_span!("snapshot", snapshot_id = %prepared.request.id);
    driver::Driver::new(ctx, ports, prepared, lc, actions, out)
        .drive(&mut controls)
        .instrument(span)
        .await
}

/// The command of one hook run, with the contract's `QUIESCE_*` variables.
fn hook_spec(
    h: &crate::config::Hook,
    snapshot_id: &str,
    phase: Phase,
    thaw_reason: Option<ThawReason>,
) -> HookSpec {
    let argv = match phase {
        Phase::Pre => h.pre.clone(),
        Phase::Post => h.post_for(thaw_reason).cloned(),
    }
    .unwrap_or_default();
    let mut spec = HookSpec::new(&h.name, phase, argv, h.timeout);
    spec.env = h.env.clone();
    spec.snapshot_id = snapshot_id.to_owned();
    spec.vars =
        crate::hooks::quiesce_vars(snapshot_id, phase, &h.name, thaw_reason.map(|r| r.as_str()));
    spec
}

/// Runs `spec`, and again up to `retries` times while it fails (an imported Azure hook's
/// `preScriptNoOfRetries`); never again once cancelled. Every run's outcome, in order: the
/// last one is the hook's verdict.
pub(crate) async fn run_attempts(
    ports: &Ports,
    spec: HookSpec,
    retries: u32,
    cancel: watch::Receiver<bool>,
) -> Vec<HookOutcome> {
    let mut runs = Vec::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tracing::info!(
                "hook {} failed: run {} of {}",
                spec.name,
                attempt + 1,
                retries + 1
            );
        }
        let outcome = ports.hooks.run(spec.clone(), cancel.clone()).await;
        let stop = outcome.succeeded() || outcome.cancelled || *cancel.borrow();
        runs.push(outcome);
        if stop {
            break;
        }
    }
    runs
}

/// A hook run as the report shows it; a failed run's output ends with a `[quiesce]` line
/// saying why (the runner has logged it, in the hook's span).
fn hook_report(name: &str, phase: Phase, outcome: &HookOutcome) -> HookReport {
    let mut output = outcome.output.clone();
    if let Some(why) = outcome.failure() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&format!("[quiesce] {why}"));
    }
    HookReport {
        name: name.to_owned(),
        phase: phase.as_str(),
        exit_code: outcome.exit_code,
        timed_out: outcome.timed_out,
        duration_ms: outcome.duration.as_millis() as u64,
        output,
    }
}

/// Ends a snapshot whose driver was lost (its task panicked: a bug) the way the contract asks:
/// whatever it had frozen is thawed from the records in `state_dir` (its watchdog thaws too,
/// its pipe being closed), then the post hooks still due run, in reverse order, with
/// `QUIESCE_THAW_REASON=error`. `last` is the last Snapshot it published, already `failed`.
pub async fn after_a_lost_driver(ctx: &Context, ports: &Ports, mut last: Snapshot) -> Snapshot {
    let dir = ctx.config.state_dir.clone();
    match tokio::task::spawn_blocking(move || crate::freezer::recovery::thaw_recorded(&dir)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!("thawing from the records after a lost snapshot task: {e}"),
        Err(e) => tracing::error!("thawing from the records after a lost snapshot task: {e}"),
    }
    let hooks = &ctx.config.hooks;
    let index = |name: &str| hooks.iter().position(|h| h.name == name);
    let ran = |phase: &str| -> Vec<usize> {
        last.hooks
            .iter()
            .filter(|r| r.phase == phase)
            .filter_map(|r| index(&r.name))
            .collect()
    };
    let setup = setup(ctx, last.requested_consistency);
    let reached_freeze = !matches!(last.state, State::PreHooks)
        || last.freeze_deadline.is_some()
        || last.frozen_at.is_some();
    let due = lifecycle::posts_due_after_loss(&setup, &ran("pre"), &ran("post"), reached_freeze);
    let reason = reached_freeze.then_some(ThawReason::Error);
    let (_never, cancel) = watch::channel(false);
    for hook in due {
        let h = &hooks[hook];
        let spec = hook_spec(h, &last.id, Phase::Post, reason);
        let runs = run_attempts(ports, spec, h.post_retries, cancel.clone()).await;
        if !runs.last().is_some_and(HookOutcome::succeeded) {
            last.warnings.push(lifecycle::Problem {
                reason: lifecycle::Reason::PostHookFailed,
                message: format!("post hook {} failed", h.name),
            });
        }
        for outcome in &runs {
            last.hooks.push(hook_report(&h.name, Phase::Post, outcome));
        }
    }
    last
}

/// What the lifecycle needs to know of the config.
fn setup(ctx: &Context, requested: Requested) -> Setup {
    Setup {
        requested,
        hooks: ctx
            .config
            .hooks
            .iter()
            .map(|h| HookPlan {
                name: h.name.clone(),
                has_pre: h.pre.is_some(),
                has_post: h.post.is_some(),
                abort_on_failure: h.on_failure == crate::config::OnFailure::Abort,
            })
            .collect(),
        freeze_enabled: ctx.config.freezes(),
    }
}
