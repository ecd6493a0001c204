//! One snapshot, run in-process: the pure [`lifecycle`](crate::lifecycle) core wired to the hook
//! runner and the freezer. The HTTP layer creates a [`Request`], checks it with [`prepare`]
//! (a bad request changes nothing), then drives [`run`] through [`ControlMsg`]s and watches the
//! [`Snapshot`](model::Snapshot) it publishes.

pub mod model;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::freezer::protocol::{Event as WdEvent, ThawReason as WdReason};
use crate::freezer::session::{rfc3339, FreezeSession, Outcome};
use crate::freezer::{self, Discovery, FreezeOptions, PlanError};
use crate::hooks::{self, HookOutcome, HookSpec, Phase};
use crate::lifecycle::{
    Action, Event, HookPlan, Lifecycle, Problem, Refusal, Requested, Setup, State, ThawReason,
};
use crate::logging::ids;
use model::{HookReport, MountReport, Snapshot};

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
    pub requested: Requested,
    pub freeze_timeout: Option<Duration>,
    pub mounts: Option<Vec<PathBuf>>,
    /// Where the Snapshot is POSTed when it becomes `frozen` and when it ends.
    pub callback_url: Option<String>,
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
    let f = &ctx.config.freeze;
    let timeout = request.freeze_timeout.unwrap_or(f.timeout);
    if timeout.is_zero() || timeout > f.max_timeout {
        return Err(RequestError::Timeout {
            asked: crate::duration::format(timeout),
            max: crate::duration::format(f.max_timeout),
        });
    }
    let discovery = freezer::discover(&ctx.config.rules(), request.mounts.as_deref())?;
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The Snapshot as it stands when created (state `pre_hooks`).
pub fn initial_snapshot(p: &Prepared) -> Snapshot {
    Snapshot {
        id: p.request.id.clone(),
        request_id: p.request.request_id.clone(),
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

struct RunningHook {
    hook: usize,
    phase: Phase,
    cancel: watch::Sender<bool>,
    handle: JoinHandle<HookOutcome>,
}

struct Driver {
    ctx: Context,
    prepared: Prepared,
    lc: Lifecycle,
    snap: Snapshot,
    report: watch::Sender<Snapshot>,
    pending: VecDeque<Action>,
    running: Option<RunningHook>,
    session: Option<FreezeSession>,
    session_open: bool,
    thaw_requested: bool,
    thaw_fed: bool,
    thaw_waiters: Vec<oneshot::Sender<Result<(), Refusal>>>,
    extra_errors: Vec<Problem>,
    /// Callbacks sent so far: at `frozen`, at the end.
    called_back: (bool, bool),
}

/// Runs the snapshot to its end state, publishing every change on `report`.
pub async fn run(
    ctx: Context,
    prepared: Prepared,
    mut controls: mpsc::Receiver<ControlMsg>,
    report: watch::Sender<Snapshot>,
) -> Snapshot {
    let hooks = &ctx.config.hooks;
    let setup = Setup {
        requested: prepared.request.requested,
        hooks: hooks
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
    let d = Driver {
        snap: initial_snapshot(&prepared),
        ctx,
        prepared,
        lc,
        report,
        pending: actions.into(),
        running: None,
        session: None,
        session_open: false,
        thaw_requested: false,
        thaw_fed: false,
        thaw_waiters: Vec::new(),
        extra_errors: Vec::new(),
        called_back: (false, false),
    };
    d.drive(&mut controls).instrument(span).await
}

impl Driver {
    async fn drive(self, controls: &mut mpsc::Receiver<ControlMsg>) -> Snapshot {
        let mut d = self;
        let mut controls_open = true;
        tracing::info!(
            message_id = ids::SNAPSHOT_STARTED,
            requested = ?d.prepared.request.requested,
            mounts = d.prepared.discovery.targets.len(),
            hooks = d.ctx.config.hooks.len(),
            "snapshot started"
        );
        loop {
            while let Some(action) = d.pending.pop_front() {
                d.execute(action).await;
            }
            d.publish();
            if d.lc.state().is_end() {
                break;
            }
            tokio::select! {
                msg = controls.recv(), if controls_open => match msg {
                    Some(msg) => d.control(msg),
                    None => controls_open = false,
                },
                outcome = wait_hook(&mut d.running) => d.hook_done(outcome),
                ev = next_freezer_event(&mut d.session, d.session_open) => d.freezer_event(ev),
            }
        }
        for w in d.thaw_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        if let Some(session) = d.session.take() {
            session.finish().await;
        }
        tracing::info!(
            message_id = ids::SNAPSHOT_FINISHED,
            state = d.snap.state.as_str(),
            consistency = ?d.snap.consistency,
            frozen_ms = d.snap.frozen_ms,
            "snapshot ended"
        );
        d.snap
    }
}

async fn wait_hook(running: &mut Option<RunningHook>) -> (usize, Phase, HookOutcome) {
    match running {
        Some(r) => {
            let outcome = (&mut r.handle).await.unwrap_or_else(|e| HookOutcome {
                error: Some(format!("the hook task failed: {e}")),
                ..Default::default()
            });
            let done = running.take().expect("running hook");
            (done.hook, done.phase, outcome)
        }
        None => std::future::pending().await,
    }
}

async fn next_freezer_event(session: &mut Option<FreezeSession>, open: bool) -> Option<WdEvent> {
    match session {
        Some(s) if open => s.next_event().await,
        _ => std::future::pending().await,
    }
}

impl Driver {
    fn feed(&mut self, event: Event) {
        match self.lc.handle(event) {
            Ok(actions) => self.pending.extend(actions),
            Err(refusal) => tracing::debug!(?event, %refusal, "event refused by the lifecycle"),
        }
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::RunPreHook { hook } => self.start_hook(hook, Phase::Pre, None),
            Action::RunPostHook { hook, thaw_reason } => {
                self.start_hook(hook, Phase::Post, thaw_reason)
            }
            Action::CancelPreHook { .. } => {
                if let Some(r) = &self.running {
                    let _ = r.cancel.send(true);
                }
            }
            Action::Freeze => self.start_freeze().await,
            Action::Thaw { reason } => {
                self.thaw_requested = true;
                match self.session.as_mut() {
                    Some(s) if self.session_open && s.thaw_reason.is_none() => {
                        s.request_thaw(watchdog_reason(reason)).await
                    }
                    _ => self.thaw_done(Event::ThawFinished),
                }
            }
        }
    }

    fn start_hook(&mut self, hook: usize, phase: Phase, thaw_reason: Option<ThawReason>) {
        let h = &self.ctx.config.hooks[hook];
        let argv = match phase {
            Phase::Pre => h.pre.clone(),
            Phase::Post => h.post.clone(),
        }
        .unwrap_or_default();
        let mut spec = HookSpec::new(&h.name, phase, argv, h.timeout);
        spec.env = h.env.clone();
        spec.vars = hooks::quiesce_vars(
            &self.prepared.request.id,
            phase,
            &h.name,
            thaw_reason.map(|r| r.as_str()),
        );
        let (cancel, rx) = watch::channel(false);
        let exe = self.ctx.exe.clone();
        // A span of its own (QUIESCE_HOOK, QUIESCE_PHASE), inside the snapshot's.
        let span = tracing::info_span!("hook", hook = %h.name, phase = %phase);
        let handle =
            tokio::spawn(async move { hooks::run_hook(&spec, &exe, rx).await }.instrument(span));
        self.running = Some(RunningHook {
            hook,
            phase,
            cancel,
            handle,
        });
    }

    fn hook_done(&mut self, (hook, phase, outcome): (usize, Phase, HookOutcome)) {
        let ok = outcome.succeeded();
        let mut output = outcome.output.clone();
        if let Some(why) = outcome.failure() {
            // The runner has logged it, in the hook's span.
            if !ok {
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                output.push_str(&format!("[quiesce] {why}"));
            }
        }
        self.snap.hooks.push(HookReport {
            name: self.ctx.config.hooks[hook].name.clone(),
            phase: phase.as_str(),
            exit_code: outcome.exit_code,
            timed_out: outcome.timed_out,
            duration_ms: outcome.duration.as_millis() as u64,
            output,
        });
        self.feed(match phase {
            Phase::Pre => Event::PreHookFinished { hook, ok },
            Phase::Post => Event::PostHookFinished { hook, ok },
        });
    }

    async fn start_freeze(&mut self) {
        let targets = self.prepared.discovery.targets.len();
        if targets == 0 {
            self.feed(Event::FreezeSettled { targets, frozen: 0 });
            return;
        }
        let opts = FreezeOptions {
            timeout: self.prepared.timeout,
            preflush: true,
            flush_budget: self.prepared.timeout,
            state_dir: self.ctx.config.state_dir.clone(),
        };
        let started = match freezer::plan(&self.prepared.discovery, &opts) {
            Ok(plan) => FreezeSession::start(&plan, &self.ctx.exe)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match started {
            Ok(mut session) => {
                session.request_freeze().await;
                self.session = Some(session);
                self.session_open = true;
            }
            Err(error) => {
                tracing::error!(
                    message_id = ids::FREEZE_FAILED,
                    phase = "freeze",
                    "cannot freeze: {error}"
                );
                self.extra_errors.push(Problem {
                    reason: "freeze_failed",
                    message: format!("nothing was frozen: {error}"),
                });
                for m in self.snap.mounts.iter_mut() {
                    m.error = Some(error.clone());
                }
                self.feed(Event::FreezeSettled { targets, frozen: 0 });
            }
        }
    }

    fn freezer_event(&mut self, ev: Option<WdEvent>) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        for (report, status) in self.snap.mounts.iter_mut().zip(session.mounts.iter()) {
            report.frozen = status.frozen;
            report.error = status.error.clone();
        }
        if self.snap.freeze_deadline.is_none() {
            if let Some(start) = session.times.freeze_started_ms {
                self.snap.freeze_deadline =
                    Some(rfc3339(start + self.prepared.timeout.as_millis() as u64));
            }
        }
        match ev {
            Some(WdEvent::AllSettled { .. }) => {
                let counted: Vec<_> = session
                    .mounts
                    .iter()
                    .filter(|m| m.outcome != Outcome::Unsupported)
                    .collect();
                let frozen = counted.iter().filter(|m| m.frozen).count();
                self.feed(Event::FreezeSettled {
                    targets: counted.len(),
                    frozen,
                });
            }
            Some(WdEvent::ThawComplete { .. }) => {
                self.snap.thawed_at = session.times.thawed_ms.map(rfc3339);
                self.snap.frozen_ms = session.times.frozen_us.map(|us| us / 1000);
                let event = if self.thaw_requested {
                    Event::ThawFinished
                } else if session.deadline_hit {
                    Event::ThawedBy(ThawReason::Deadline)
                } else {
                    Event::ThawedBy(ThawReason::Error)
                };
                self.thaw_done(event);
            }
            None => {
                // The watchdog is gone: the session already thawed from the records.
                self.session_open = false;
                let event = if self.thaw_requested {
                    Event::ThawFinished
                } else {
                    Event::ThawedBy(ThawReason::Error)
                };
                self.thaw_done(event);
            }
            Some(_) => {}
        }
    }

    fn thaw_done(&mut self, event: Event) {
        if self.thaw_fed {
            return;
        }
        self.thaw_fed = true;
        self.feed(event);
        // Answered once the published snapshot shows everything thawed.
        self.publish();
        for w in self.thaw_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
    }

    fn control(&mut self, msg: ControlMsg) {
        let event = match msg.control {
            Control::HostThaw { taken } => Event::HostThaw { taken },
            Control::Abort => Event::Abort,
            Control::Shutdown => Event::Shutdown,
        };
        match self.lc.handle(event) {
            Err(refusal) => {
                if let Some(reply) = msg.reply {
                    let _ = reply.send(Err(refusal));
                }
            }
            Ok(actions) => {
                let thaws = actions.iter().any(|a| matches!(a, Action::Thaw { .. }));
                self.pending.extend(actions);
                if let Some(reply) = msg.reply {
                    if thaws && !self.thaw_fed {
                        self.thaw_waiters.push(reply);
                    } else {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
    }

    fn publish(&mut self) {
        let state = self.lc.state();
        if state == State::Frozen && self.snap.frozen_at.is_none() {
            self.snap.frozen_at = Some(rfc3339(now_ms()));
        }
        // In the same publication as the end state: a waiter must never see one without the other.
        if state.is_end() && self.snap.finished_at.is_none() {
            self.snap.finished_at = Some(rfc3339(now_ms()));
        }
        self.snap.state = state;
        self.snap.consistency = self.lc.consistency();
        self.snap.thaw_reason = self.lc.thaw_reason();
        self.snap.errors = self
            .extra_errors
            .iter()
            .chain(self.lc.errors())
            .cloned()
            .collect();
        self.snap.warnings = self.lc.warnings().to_vec();
        if let Some(s) = &self.session {
            self.snap
                .warnings
                .extend(s.warnings.iter().map(|w| Problem {
                    reason: "freezer",
                    message: w.clone(),
                }));
        }
        self.report.send_replace(self.snap.clone());
        self.call_back(state);
    }

    /// Queues the callbacks due at `frozen` and at the end; never waits for the receiver.
    fn call_back(&mut self, state: State) {
        let Some(url) = &self.prepared.request.callback_url else {
            return;
        };
        let due_frozen = state == State::Frozen && !self.called_back.0;
        let due_end = state.is_end() && !self.called_back.1;
        if due_frozen || due_end {
            self.called_back.0 |= due_frozen;
            self.called_back.1 |= due_end;
            let body = serde_json::to_value(&self.snap).unwrap_or_default();
            crate::callbacks::notify(url.clone(), self.ctx.callback_key.clone(), body);
        }
    }
}

fn watchdog_reason(reason: ThawReason) -> WdReason {
    match reason {
        ThawReason::Host => WdReason::Host,
        ThawReason::Deadline => WdReason::Deadline,
        ThawReason::Abort => WdReason::Abort,
        ThawReason::Shutdown => WdReason::Shutdown,
        ThawReason::Error => WdReason::Error,
    }
}
