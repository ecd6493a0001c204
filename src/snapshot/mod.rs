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
use crate::snapshot::lifecycle::{HookPlan, Lifecycle, Refusal, Requested, Setup, State};
use model::{MountReport, Snapshot};
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
    let setup = Setup {
        requested: prepared.request.requested,
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
        freeze_enabled: ctx.config.freeze.enabled,
    };
    let (lc, actions) = Lifecycle::start(setup);
    // Every record of this snapshot carries its id (journal field QUIESCE_SNAPSHOT_ID).
    let span = tracing::info_span!("snapshot", snapshot_id = %prepared.request.id);
    driver::Driver::new(ctx, ports, prepared, lc, actions, out)
        .drive(&mut controls)
        .instrument(span)
        .await
}
