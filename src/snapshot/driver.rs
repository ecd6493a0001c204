//! The driver: plumbing between the [`Lifecycle`] and the world. It carries out the
//! lifecycle's actions on the hook runner and the freezer, turns what they report (and the
//! host's controls) into lifecycle events, and publishes the Snapshot. It decides nothing: every
//! rule is in the lifecycle.

use std::collections::VecDeque;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::model::{MountReport, Snapshot};
use super::ports::{FreezeView, Freezer, Ports};
use super::{now_ms, rfc3339, Context, Control, ControlMsg, Prepared};
use crate::hooks::{HookOutcome, Phase};
use crate::logging::ids;
use crate::snapshot::lifecycle::{Action, Event, Lifecycle, Milestone, Refusal, State, ThawReason};

struct RunningHook {
    hook: usize,
    phase: Phase,
    cancel: watch::Sender<bool>,
    /// Every run of the hook (more than one when it is retried).
    handle: JoinHandle<Vec<HookOutcome>>,
}

/// Where the driver publishes what it sees.
pub struct Outputs {
    /// The Snapshot, at every change.
    pub report: watch::Sender<Snapshot>,
    /// The freezer's own view (each mount's outcome and timings), for `quiesce freeze`.
    pub freeze_view: Option<watch::Sender<FreezeView>>,
}

pub(super) struct Driver {
    ctx: Context,
    ports: Ports,
    prepared: Prepared,
    lc: Lifecycle,
    snap: Snapshot,
    out: Outputs,
    pending: VecDeque<Action>,
    /// Events from the hook runner and the freezer, fed one at a time.
    inbox: VecDeque<Event>,
    running: Option<RunningHook>,
    freezer: Option<Box<dyn Freezer>>,
    /// Hosts waiting for the thaw they asked for (answered once nothing is frozen).
    thaw_waiters: Vec<oneshot::Sender<Result<(), Refusal>>>,
}

impl Driver {
    pub(super) fn new(
        ctx: Context,
        ports: Ports,
        prepared: Prepared,
        lc: Lifecycle,
        first: Vec<Action>,
        out: Outputs,
    ) -> Driver {
        Driver {
            snap: super::initial_snapshot(&prepared),
            ctx,
            ports,
            prepared,
            lc,
            out,
            pending: first.into(),
            inbox: VecDeque::new(),
            running: None,
            freezer: None,
            thaw_waiters: Vec::new(),
        }
    }

    /// Runs the snapshot to its end state.
    pub(super) async fn drive(mut self, controls: &mut mpsc::Receiver<ControlMsg>) -> Snapshot {
        let mut controls_open = true;
        tracing::info!(
            message_id = ids::SNAPSHOT_STARTED,
            requested = ?self.prepared.request.requested,
            mounts = self.prepared.discovery.targets.len(),
            hooks = self.ctx.config.hooks.len(),
            "snapshot started"
        );
        loop {
            // Each event's actions are carried out before the next event is fed.
            loop {
                if let Some(action) = self.pending.pop_front() {
                    self.execute(action).await;
                } else if let Some(event) = self.inbox.pop_front() {
                    self.feed(event);
                } else {
                    break;
                }
            }
            self.publish();
            if self.lc.thawed() {
                for w in self.thaw_waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            if self.lc.state().is_end() {
                break;
            }
            tokio::select! {
                msg = controls.recv(), if controls_open => match msg {
                    Some(msg) => self.control(msg),
                    None => controls_open = false,
                },
                outcome = wait_hook(&mut self.running) => self.hook_done(outcome),
                events = next_events(&mut self.freezer) => {
                    self.sync_freezer();
                    self.inbox.extend(events);
                }
            }
        }
        if let Some(f) = self.freezer.take() {
            f.finish().await;
        }
        tracing::info!(
            message_id = ids::SNAPSHOT_FINISHED,
            state = self.snap.state.as_str(),
            consistency = ?self.snap.consistency,
            frozen_ms = self.snap.frozen_ms,
            "snapshot ended"
        );
        self.snap
    }

    fn feed(&mut self, event: Event) {
        match self.lc.handle(event.clone()) {
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
            Action::Freeze => {
                let mut f = self.ports.freezers.freezer(super::ports::FreezePlan {
                    discovery: self.prepared.discovery.clone(),
                    timeout: self.prepared.timeout,
                    preflush: self.prepared.request.preflush,
                    state_dir: self.ctx.config.state_dir.clone(),
                    expedite_rcu: self.ctx.config.freeze.expedite_rcu,
                });
                f.start().await;
                self.freezer = Some(f);
                self.sync_freezer();
            }
            Action::Thaw { reason } => match self.freezer.as_mut() {
                Some(f) => f.thaw(reason).await,
                // Never started (freezing disabled): nothing of ours is frozen.
                None => self.feed(Event::Thawed { reason }),
            },
            Action::Announce(milestone) => {
                self.publish();
                self.call_back(milestone);
            }
        }
    }

    fn start_hook(&mut self, hook: usize, phase: Phase, thaw_reason: Option<ThawReason>) {
        let h = &self.ctx.config.hooks[hook];
        let spec = super::hook_spec(h, &self.prepared.request.id, phase, thaw_reason);
        let retries = match phase {
            Phase::Pre => h.pre_retries,
            Phase::Post => h.post_retries,
        };
        let (cancel, rx) = watch::channel(false);
        let ports = self.ports.clone();
        let run = async move { super::run_attempts(&ports, spec, retries, rx).await };
        // A span of its own (QUIESCE_HOOK, QUIESCE_PHASE), inside the snapshot's.
        let span = tracing::info_span!("hook", hook = %h.name, phase = %phase);
        let handle = tokio::spawn(run.instrument(span));
        self.running = Some(RunningHook {
            hook,
            phase,
            cancel,
            handle,
        });
    }

    fn hook_done(&mut self, (hook, phase, runs): (usize, Phase, Vec<HookOutcome>)) {
        let ok = runs.last().is_some_and(HookOutcome::succeeded);
        let name = &self.ctx.config.hooks[hook].name;
        for outcome in &runs {
            self.snap
                .hooks
                .push(super::hook_report(name, phase, outcome));
        }
        self.feed(match phase {
            Phase::Pre => Event::PreHookFinished { hook, ok },
            Phase::Post => Event::PostHookFinished { hook, ok },
        });
    }

    /// Copies the freezer's view into the Snapshot (each mount, the deadline, the thaw times).
    fn sync_freezer(&mut self) {
        let Some(f) = self.freezer.as_ref() else {
            return;
        };
        let view = f.view();
        self.snap.mounts = view
            .mounts
            .iter()
            .map(|m| MountReport {
                path: m.path.clone(),
                fstype: m.fstype.clone(),
                frozen: m.frozen,
                error: m.error.clone(),
            })
            .collect();
        if self.snap.freeze_deadline.is_none() {
            self.snap.freeze_deadline = view.times.deadline_ms.map(rfc3339);
        }
        if view.thaw_reason.is_some() && self.snap.thawed_at.is_none() {
            self.snap.thawed_at = view.times.thawed_ms.map(rfc3339);
            self.snap.frozen_ms = view.times.frozen_us.map(|us| us / 1000);
        }
        self.snap.rcu = view.rcu;
        if let Some(tx) = &self.out.freeze_view {
            tx.send_replace(view.clone());
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
                    if thaws {
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
        self.snap.errors = self.lc.errors().to_vec();
        self.snap.warnings = self.lc.warnings().to_vec();
        self.out.report.send_replace(self.snap.clone());
    }

    /// Sends the Snapshot to the host's `callback_url`; never waits for the receiver.
    fn call_back(&self, milestone: Milestone) {
        // A freeze that was over before it could be announced is not announced as frozen.
        if milestone == Milestone::Frozen && self.snap.state != State::Frozen {
            return;
        }
        if let Some(url) = &self.prepared.request.callback_url {
            let body = serde_json::to_value(&self.snap).unwrap_or_default();
            crate::callbacks::notify(url.clone(), self.ctx.callback_key.clone(), body);
        }
    }
}

async fn wait_hook(running: &mut Option<RunningHook>) -> (usize, Phase, Vec<HookOutcome>) {
    match running {
        Some(r) => {
            let outcome = (&mut r.handle).await.unwrap_or_else(|e| {
                vec![HookOutcome {
                    error: Some(format!("the hook task failed: {e}")),
                    ..Default::default()
                }]
            });
            let done = running.take().expect("running hook");
            (done.hook, done.phase, outcome)
        }
        None => std::future::pending().await,
    }
}

async fn next_events(freezer: &mut Option<Box<dyn Freezer>>) -> Vec<Event> {
    match freezer {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}
