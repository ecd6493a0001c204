//! The snapshot lifecycle as a pure state machine (contract: HTTP API states, Consistency rules).
//!
//! No IO, no clock, no tokio: the driver feeds it [`Event`]s (a pre hook finished, the freeze
//! settled or failed, the host's thaw, the freezer's thaw and why, an abort, the watchdog lost...)
//! and carries out the [`Action`]s it answers with (run this hook, freeze, thaw, tell the host).
//! Every rule about states, consistency, thaw reasons, report reasons and hook order lives here,
//! and nowhere else: the driver keeps no state of its own about the snapshot. Unit-tested over
//! the whole table of scenarios, and by random event sequences against the invariants.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Where a snapshot stands, as reported; the last three are end states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    PreHooks,
    Freezing,
    Frozen,
    Thawing,
    PostHooks,
    Succeeded,
    Failed,
    Aborted,
}

impl State {
    /// True for `succeeded`, `failed` and `aborted`.
    pub fn is_end(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Aborted)
    }

    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::PreHooks => "pre_hooks",
            State::Freezing => "freezing",
            State::Frozen => "frozen",
            State::Thawing => "thawing",
            State::PostHooks => "post_hooks",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Aborted => "aborted",
        }
    }
}

/// What the host asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requested {
    Application,
    FileSystem,
}

/// What the storage snapshot captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    Application,
    FileSystem,
    Crash,
}

impl Consistency {
    /// The contract's name of the level.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Application => "application",
            Consistency::FileSystem => "file_system",
            Consistency::Crash => "crash",
        }
    }
}

/// Why the mounts were thawed: the one enum of the agent, the watchdog's pipe and the reports
/// (defined with the freezer, which acts on it).
pub use crate::freezer::protocol::ThawReason;

/// The stable codes of a report's `errors[].reason` and `warnings[].reason`
/// (`docs/http.md` lists them; a test holds the two together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Error: a pre hook failed (either `on_failure`).
    PreHookFailed,
    /// Error: some target mounts did not freeze.
    MountNotFrozen,
    /// Error: the freeze could not start at all (nothing was frozen).
    FreezeFailed,
    /// Error: the deadline thawed the mounts before the host's thaw arrived.
    Deadline,
    /// Error: the mounts were thawed before the host's thaw for another reason.
    ThawedEarly,
    /// Error: the host reported that the storage snapshot failed.
    StorageSnapshotFailed,
    /// Error: the snapshot's task failed (a bug); the watchdog thawed what was frozen.
    InternalError,
    /// Warning: a post hook failed.
    PostHookFailed,
    /// Warning: `freeze.enabled: false`.
    FreezeDisabled,
    /// Warning: there was no mount to freeze.
    NoTargetMounts,
    /// Warning: something the freezer reported (pre-flush, memory lock, watchdog lost).
    Freezer,
    /// A reason from a newer agent that this build does not know (read side only).
    #[serde(other)]
    Unknown,
}

impl Reason {
    /// Every reason an agent reports, errors first.
    pub const ALL: [Reason; 11] = [
        Reason::PreHookFailed,
        Reason::MountNotFrozen,
        Reason::FreezeFailed,
        Reason::Deadline,
        Reason::ThawedEarly,
        Reason::StorageSnapshotFailed,
        Reason::InternalError,
        Reason::PostHookFailed,
        Reason::FreezeDisabled,
        Reason::NoTargetMounts,
        Reason::Freezer,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PreHookFailed => "pre_hook_failed",
            Reason::MountNotFrozen => "mount_not_frozen",
            Reason::FreezeFailed => "freeze_failed",
            Reason::Deadline => "deadline",
            Reason::ThawedEarly => "thawed_early",
            Reason::StorageSnapshotFailed => "storage_snapshot_failed",
            Reason::InternalError => "internal_error",
            Reason::PostHookFailed => "post_hook_failed",
            Reason::FreezeDisabled => "freeze_disabled",
            Reason::NoTargetMounts => "no_target_mounts",
            Reason::Freezer => "freezer",
            Reason::Unknown => "unknown",
        }
    }

    /// True for the reasons that go into `errors` (the others are warnings).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Reason::PreHookFailed
                | Reason::MountNotFrozen
                | Reason::FreezeFailed
                | Reason::Deadline
                | Reason::ThawedEarly
                | Reason::StorageSnapshotFailed
                | Reason::InternalError
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One configured hook, as the lifecycle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookPlan {
    pub name: String,
    pub has_pre: bool,
    pub has_post: bool,
    /// `on_failure: abort`: a failed pre hook stops the snapshot before any freeze.
    pub abort_on_failure: bool,
}

/// Everything fixed when the snapshot starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub requested: Requested,
    pub hooks: Vec<HookPlan>,
    /// `freeze.enabled`.
    pub freeze_enabled: bool,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pre hook ended; `ok` means exit 0 within its timeout.
    PreHookFinished { hook: usize, ok: bool },
    /// Every target mount has an outcome: `frozen` of `targets` froze.
    FreezeSettled { targets: usize, frozen: usize },
    /// The freeze could not start (no watchdog, a mount gone): nothing was frozen.
    FreezeFailed { targets: usize, error: String },
    /// The host's `POST .../thaw`: `taken` or `failed`.
    HostThaw { taken: bool },
    /// Nothing of ours is frozen any more; `reason` is why the freezer thawed (the first reason
    /// it acted on: the deadline, or the thaw we asked for).
    Thawed { reason: ThawReason },
    /// The watchdog died without finishing; the records in `state_dir` thawed what it held.
    WatchdogLost { detail: String },
    /// Something the freezer reports that does not change the outcome.
    FreezerWarning { message: String },
    /// `DELETE`.
    Abort,
    /// The agent is stopping (SIGTERM).
    Shutdown,
    /// A post hook ended (its failure is a warning).
    PostHookFinished { hook: usize, ok: bool },
}

/// A moment the host is told about (`callback_url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// The snapshot is `frozen`: the storage snapshot can be taken now.
    Frozen,
    /// The snapshot has reached its end state.
    Ended,
}

/// Something for the driver to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RunPreHook {
        hook: usize,
    },
    /// Kill the hook that is running (abort or shutdown during the pre hooks).
    CancelPreHook {
        hook: usize,
    },
    /// Flush and freeze the target mounts (the deadline starts with the first FIFREEZE).
    Freeze,
    /// Thaw everything frozen; answered by [`Event::Thawed`].
    Thaw {
        reason: ThawReason,
    },
    /// Run a post hook; `thaw_reason` is `None` when nothing was frozen.
    RunPostHook {
        hook: usize,
        thaw_reason: Option<ThawReason>,
    },
    /// Tell the host (once per milestone).
    Announce(Milestone),
}

/// Why an event was refused (the HTTP layer answers 409 with the snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the snapshot is not frozen (state {})", .0.as_str())]
    NotFrozen(State),
    #[error("the snapshot has already ended (state {})", .0.as_str())]
    Ended(State),
    #[error("the host's thaw has already arrived")]
    HostThawArrived,
}

/// A problem for the report's `errors` or `warnings`, with a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    fn new(reason: Reason, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Abort,
    Shutdown,
}

/// Where the snapshot stands, with the data each stage needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// `running`: the pre hook under way; `next`: the next one to consider.
    PreHooks {
        running: Option<usize>,
        next: usize,
    },
    Freezing,
    Frozen,
    /// The thaw asked for, until the freezer says nothing of ours is frozen.
    Thawing {
        asked: ThawReason,
    },
    /// `queue`: the post hooks still due (the last runs first); `running`: the one under way.
    PostHooks {
        queue: Vec<usize>,
        running: Option<usize>,
    },
    Ended(State),
}

/// One snapshot's lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    setup: Setup,
    stage: Stage,
    /// Pre hooks that started (their post hooks are due whatever happens).
    pre_started: Vec<bool>,
    pre_failed: bool,
    /// A pre hook failed with `on_failure: abort`.
    pre_aborted: bool,
    stop: Option<Stop>,
    host_thaw: Option<bool>,
    /// The deadline thawed before the thaw we asked for reached the freezer.
    deadline_first: bool,
    consistency: Option<Consistency>,
    thaw_reason: Option<ThawReason>,
    anything_frozen: bool,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Lifecycle {
    /// Starts a snapshot: the first actions are the first pre hook, or the freeze.
    pub fn start(setup: Setup) -> (Lifecycle, Vec<Action>) {
        let n = setup.hooks.len();
        let mut lc = Lifecycle {
            setup,
            stage: Stage::PreHooks {
                running: None,
                next: 0,
            },
            pre_started: vec![false; n],
            pre_failed: false,
            pre_aborted: false,
            stop: None,
            host_thaw: None,
            deadline_first: false,
            consistency: None,
            thaw_reason: None,
            anything_frozen: false,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let mut actions = Vec::new();
        lc.advance_pre(0, &mut actions);
        (lc, actions)
    }

    /// The contract's state.
    pub fn state(&self) -> State {
        match self.stage {
            Stage::PreHooks { .. } => State::PreHooks,
            Stage::Freezing => State::Freezing,
            Stage::Frozen => State::Frozen,
            Stage::Thawing { .. } => State::Thawing,
            Stage::PostHooks { .. } => State::PostHooks,
            Stage::Ended(s) => s,
        }
    }

    /// Set when the snapshot becomes `frozen`; final in the end state.
    pub fn consistency(&self) -> Option<Consistency> {
        self.consistency
    }

    pub fn thaw_reason(&self) -> Option<ThawReason> {
        self.thaw_reason
    }

    pub fn requested(&self) -> Requested {
        self.setup.requested
    }

    pub fn errors(&self) -> &[Problem] {
        &self.errors
    }

    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// True once the host's thaw came in (DELETE is refused from then on).
    pub fn host_thaw_arrived(&self) -> bool {
        self.host_thaw.is_some()
    }

    /// True once nothing can be frozen by this snapshot any more (the post hooks or the end):
    /// a host's thaw or abort is answered then.
    pub fn thawed(&self) -> bool {
        matches!(self.stage, Stage::PostHooks { .. } | Stage::Ended(_))
    }

    /// Handles one event; a refused one changes nothing.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>, Refusal> {
        let mut actions = Vec::new();
        match event {
            Event::PreHookFinished { hook, ok } => self.pre_finished(hook, ok, &mut actions),
            Event::FreezeSettled { targets, frozen } => {
                // After an abort or shutdown the stage is already `thawing`: Thawed moves on.
                if self.stage == Stage::Freezing {
                    self.become_frozen(targets, frozen, &mut actions);
                }
            }
            Event::FreezeFailed { targets, error } => {
                if matches!(self.stage, Stage::Freezing | Stage::Thawing { .. }) {
                    self.errors.push(Problem::new(
                        Reason::FreezeFailed,
                        format!("nothing was frozen: {error}"),
                    ));
                }
                if self.stage == Stage::Freezing {
                    self.become_frozen(targets, 0, &mut actions);
                }
            }
            Event::HostThaw { taken } => {
                if self.stage != Stage::Frozen || self.stop.is_some() {
                    let state = self.state();
                    return Err(if state.is_end() {
                        Refusal::Ended(state)
                    } else {
                        Refusal::NotFrozen(state)
                    });
                }
                self.host_thaw = Some(taken);
                if !taken {
                    self.errors.push(Problem::new(
                        Reason::StorageSnapshotFailed,
                        "the host reported that the storage snapshot failed",
                    ));
                }
                self.begin_thaw(ThawReason::Host, &mut actions);
            }
            Event::Thawed { reason } => self.thawed_by(reason, &mut actions),
            Event::WatchdogLost { detail } => {
                if matches!(
                    self.stage,
                    Stage::Freezing | Stage::Frozen | Stage::Thawing { .. }
                ) {
                    self.warnings.push(Problem::new(Reason::Freezer, detail));
                    self.thawed_by(ThawReason::Error, &mut actions);
                }
            }
            Event::FreezerWarning { message } => {
                if !matches!(self.stage, Stage::Ended(_)) {
                    self.warnings.push(Problem::new(Reason::Freezer, message));
                }
            }
            Event::Abort => {
                let state = self.state();
                if state.is_end() {
                    return Err(Refusal::Ended(state));
                }
                if self.host_thaw.is_some() {
                    return Err(Refusal::HostThawArrived);
                }
                self.stop_now(Stop::Abort, &mut actions);
            }
            Event::Shutdown => {
                // Once the host's thaw is in, the snapshot finishes as it would have.
                if !self.state().is_end() && self.host_thaw.is_none() {
                    self.stop_now(Stop::Shutdown, &mut actions);
                }
            }
            Event::PostHookFinished { hook, ok } => {
                if let Stage::PostHooks { running, .. } = &mut self.stage {
                    if *running == Some(hook) {
                        *running = None;
                        if !ok {
                            self.warnings.push(Problem::new(
                                Reason::PostHookFailed,
                                format!("post hook {} failed", self.setup.hooks[hook].name),
                            ));
                        }
                        self.next_post(&mut actions);
                    }
                }
            }
        }
        Ok(actions)
    }

    /// Starts the next pre hook from `next`, or moves on to the freeze when none is left.
    fn advance_pre(&mut self, mut next: usize, actions: &mut Vec<Action>) {
        if self.setup.requested == Requested::Application {
            while next < self.setup.hooks.len() {
                let i = next;
                next += 1;
                // A hook without `pre` counts as having run its empty pre when its turn came.
                self.pre_started[i] = true;
                if self.setup.hooks[i].has_pre {
                    self.stage = Stage::PreHooks {
                        running: Some(i),
                        next,
                    };
                    actions.push(Action::RunPreHook { hook: i });
                    return;
                }
            }
        }
        self.stage = Stage::Freezing;
        if self.setup.freeze_enabled {
            actions.push(Action::Freeze);
        } else {
            self.warnings.push(Problem::new(
                Reason::FreezeDisabled,
                "freezing is disabled (freeze.enabled: false, or an imported Azure config's fsFreezeEnabled: false): crash-consistent at best",
            ));
            self.become_frozen(0, 0, actions);
        }
    }

    fn pre_finished(&mut self, hook: usize, ok: bool, actions: &mut Vec<Action>) {
        let Stage::PreHooks { running, next } = self.stage else {
            return;
        };
        if running != Some(hook) {
            return;
        }
        self.stage = Stage::PreHooks {
            running: None,
            next,
        };
        if !ok {
            let h = &self.setup.hooks[hook];
            self.errors.push(Problem::new(
                Reason::PreHookFailed,
                format!(
                    "pre hook {} failed (on_failure: {})",
                    h.name,
                    if h.abort_on_failure {
                        "abort"
                    } else {
                        "continue"
                    }
                ),
            ));
            self.pre_failed = true;
            if h.abort_on_failure && self.stop.is_none() {
                self.pre_aborted = true;
                self.begin_post(actions);
                return;
            }
        }
        if self.stop.is_some() {
            self.begin_post(actions);
        } else {
            self.advance_pre(next, actions);
        }
    }

    fn become_frozen(&mut self, targets: usize, frozen: usize, actions: &mut Vec<Action>) {
        self.anything_frozen = frozen > 0;
        self.stage = Stage::Frozen;
        let enabled = self.setup.freeze_enabled;
        let all_froze = enabled && targets > 0 && frozen == targets;
        if enabled && frozen < targets {
            self.errors.push(Problem::new(
                Reason::MountNotFrozen,
                format!(
                    "{} of {targets} target mounts did not freeze",
                    targets - frozen
                ),
            ));
        } else if enabled && targets == 0 {
            self.warnings.push(Problem::new(
                Reason::NoTargetMounts,
                "no mount could be frozen: crash-consistent at best",
            ));
        }
        self.consistency = Some(if !all_froze {
            Consistency::Crash
        } else if self.setup.requested == Requested::Application
            && !self.setup.hooks.is_empty()
            && !self.pre_failed
        {
            Consistency::Application
        } else {
            Consistency::FileSystem
        });
        actions.push(Action::Announce(Milestone::Frozen));
    }

    fn begin_thaw(&mut self, reason: ThawReason, actions: &mut Vec<Action>) {
        self.thaw_reason = self.anything_frozen.then_some(reason);
        self.stage = Stage::Thawing { asked: reason };
        actions.push(Action::Thaw { reason });
    }

    /// The freezer says nothing of ours is frozen any more, for `reason`.
    fn thawed_by(&mut self, reason: ThawReason, actions: &mut Vec<Action>) {
        match self.stage {
            Stage::Freezing | Stage::Frozen => {
                // Unasked: the deadline, or an error in the freezer.
                self.thaw_reason = Some(reason);
                self.early_thaw_error(reason);
                self.begin_post(actions);
            }
            Stage::Thawing { asked } => {
                if reason == ThawReason::Deadline && asked != ThawReason::Deadline {
                    // The deadline reached the freezer before the thaw we asked for.
                    if self.anything_frozen {
                        self.thaw_reason = Some(ThawReason::Deadline);
                    }
                    if asked == ThawReason::Host {
                        self.deadline_first = true;
                        self.early_thaw_error(reason);
                    }
                }
                self.begin_post(actions);
            }
            _ => {}
        }
    }

    fn early_thaw_error(&mut self, reason: ThawReason) {
        self.consistency = Some(Consistency::Crash);
        self.errors.push(match reason {
            ThawReason::Deadline => Problem::new(
                Reason::Deadline,
                "the deadline thawed the mounts before the host's thaw arrived",
            ),
            r => Problem::new(
                Reason::ThawedEarly,
                format!("the mounts were thawed early ({})", r.as_str()),
            ),
        });
    }

    fn stop_now(&mut self, stop: Stop, actions: &mut Vec<Action>) {
        if self.stop.is_some() {
            return;
        }
        self.stop = Some(stop);
        let reason = match stop {
            Stop::Abort => ThawReason::Abort,
            Stop::Shutdown => ThawReason::Shutdown,
        };
        match self.stage {
            Stage::PreHooks { running, .. } => {
                if let Some(hook) = running {
                    actions.push(Action::CancelPreHook { hook });
                } else {
                    self.begin_post(actions);
                }
            }
            Stage::Freezing => {
                // Some FIFREEZE may be under way: whatever froze counts as frozen.
                self.anything_frozen = true;
                self.begin_thaw(reason, actions);
            }
            Stage::Frozen => self.begin_thaw(reason, actions),
            // Already thawed (deadline) or thawing: the post hooks run as planned.
            _ => {}
        }
    }

    fn begin_post(&mut self, actions: &mut Vec<Action>) {
        let queue = (0..self.setup.hooks.len())
            .filter(|&i| self.pre_started[i] && self.setup.hooks[i].has_post)
            .collect();
        self.stage = Stage::PostHooks {
            queue,
            running: None,
        };
        self.next_post(actions);
    }

    fn next_post(&mut self, actions: &mut Vec<Action>) {
        let Stage::PostHooks { queue, running } = &mut self.stage else {
            return;
        };
        // Reverse order: the last hook whose pre ran gets its post first.
        if let Some(hook) = queue.pop() {
            *running = Some(hook);
            actions.push(Action::RunPostHook {
                hook,
                thaw_reason: self.thaw_reason,
            });
        } else {
            self.finish(actions);
        }
    }

    fn finish(&mut self, actions: &mut Vec<Action>) {
        let end = if self.stop.is_some() {
            State::Aborted
        } else if self.pre_aborted || self.host_thaw == Some(false) {
            State::Failed
        } else if self.host_thaw == Some(true) && !self.deadline_first {
            State::Succeeded
        } else {
            // Thawed before the host's thaw (deadline, error).
            State::Failed
        };
        match end {
            State::Aborted => self.consistency = None,
            State::Failed if self.pre_aborted || self.host_thaw == Some(false) => {
                self.consistency = None
            }
            _ => {}
        }
        self.stage = Stage::Ended(end);
        actions.push(Action::Announce(Milestone::Ended));
    }
}

/// The post hooks still due when a snapshot's driver was lost (a bug), in the order to run
/// them: the contract's rule (a post for every hook whose pre started, in reverse order) read
/// from what the report shows. `pre_done`: hooks whose pre ended; `post_done`: whose post ran;
/// `reached_freeze`: the snapshot got past its pre hooks (every hook was considered). Before
/// that, the hook after the last one whose pre ended is taken as started: the driver starts the
/// next pre the moment the previous one ends.
pub fn posts_due_after_loss(
    setup: &Setup,
    pre_done: &[usize],
    post_done: &[usize],
    reached_freeze: bool,
) -> Vec<usize> {
    if setup.requested != Requested::Application {
        return Vec::new();
    }
    let n = setup.hooks.len();
    let considered = if reached_freeze {
        n
    } else {
        // Up to and including the next hook with a pre after the last one that ended.
        let from = pre_done.iter().max().map_or(0, |&l| l + 1);
        (from..n)
            .find(|&i| setup.hooks[i].has_pre)
            .map_or(n, |i| i + 1)
    };
    (0..considered)
        .rev()
        .filter(|&i| setup.hooks[i].has_post && !post_done.contains(&i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, pre: bool, post: bool, abort: bool) -> HookPlan {
        HookPlan {
            name: name.into(),
            has_pre: pre,
            has_post: post,
            abort_on_failure: abort,
        }
    }

    fn setup(requested: Requested, hooks: Vec<HookPlan>) -> Setup {
        Setup {
            requested,
            hooks,
            freeze_enabled: true,
        }
    }

    /// Drives a lifecycle: hooks answer from `pre_ok`/`post_ok`, the freeze settles with
    /// `frozen` of `targets`, then `after_frozen` events follow. Returns the lifecycle and the
    /// log of actions.
    struct Run {
        lc: Lifecycle,
        log: Vec<Action>,
    }

    impl Run {
        fn new(s: Setup) -> Run {
            let (lc, actions) = Lifecycle::start(s);
            Run { lc, log: actions }
        }
        fn send(&mut self, ev: Event) -> Vec<Action> {
            let a = self.lc.handle(ev).expect("event accepted");
            self.log.extend(a.iter().copied());
            a
        }
        /// Answers every hook action with `ok` until nothing is pending.
        fn hooks_answer(&mut self, pre_ok: &dyn Fn(usize) -> bool, post_ok: bool) {
            // Only the newest actions are pending; answered ones never count twice.
            let mut pending: Vec<Action> = self.log.last().copied().into_iter().collect();
            while let Some(action) = pending.pop() {
                let next = match action {
                    Action::RunPreHook { hook } => self.send(Event::PreHookFinished {
                        hook,
                        ok: pre_ok(hook),
                    }),
                    Action::RunPostHook { hook, .. } => {
                        self.send(Event::PostHookFinished { hook, ok: post_ok })
                    }
                    _ => Vec::new(),
                };
                pending.extend(next);
            }
        }
        /// An application snapshot with `hooks`, all pre hooks ok, its one mount frozen.
        fn frozen(hooks: Vec<HookPlan>) -> Run {
            let mut r = Run::new(setup(Requested::Application, hooks));
            r.hooks_answer(&|_| true, true);
            r.send(Event::FreezeSettled {
                targets: 1,
                frozen: 1,
            });
            r
        }
        /// The freezer's answer to the last thaw asked for.
        fn thaw_done(&mut self) {
            let reason = self
                .log
                .iter()
                .rev()
                .find_map(|a| match a {
                    Action::Thaw { reason } => Some(*reason),
                    _ => None,
                })
                .expect("a thaw was asked for");
            self.send(Event::Thawed { reason });
        }
        fn pre_order(&self) -> Vec<usize> {
            self.log
                .iter()
                .filter_map(|a| match a {
                    Action::RunPreHook { hook } => Some(*hook),
                    _ => None,
                })
                .collect()
        }
        fn post_order(&self) -> Vec<(usize, Option<ThawReason>)> {
            self.log
                .iter()
                .filter_map(|a| match a {
                    Action::RunPostHook { hook, thaw_reason } => Some((*hook, *thaw_reason)),
                    _ => None,
                })
                .collect()
        }
        fn froze(&self) -> bool {
            self.log.contains(&Action::Freeze)
        }
        fn end(&self) -> (State, Option<Consistency>, Option<ThawReason>) {
            (
                self.lc.state(),
                self.lc.consistency(),
                self.lc.thaw_reason(),
            )
        }
    }

    fn three_hooks() -> Vec<HookPlan> {
        vec![
            hook("a", true, true, false),
            hook("b", true, true, false),
            hook("c", true, true, false),
        ]
    }

    /// The whole cycle with a host thaw: pre hooks, freeze of `frozen`/`targets`, host thaw.
    fn cycle(
        s: Setup,
        pre_ok: &dyn Fn(usize) -> bool,
        targets: usize,
        frozen: usize,
        taken: bool,
    ) -> Run {
        let mut r = Run::new(s);
        r.hooks_answer(pre_ok, true);
        if r.lc.state() == State::Freezing {
            r.send(Event::FreezeSettled { targets, frozen });
        }
        if r.lc.state() == State::Frozen {
            r.send(Event::HostThaw { taken });
            assert_eq!(r.lc.state(), State::Thawing);
            r.thaw_done();
            r.hooks_answer(pre_ok, true);
        }
        r
    }

    use Consistency as C;
    use State as S;
    use ThawReason as T;

    #[test]
    fn application_when_every_rule_holds() {
        let r = cycle(
            setup(Requested::Application, three_hooks()),
            &|_| true,
            2,
            2,
            true,
        );
        assert_eq!(r.end(), (S::Succeeded, Some(C::Application), Some(T::Host)));
        assert_eq!(r.pre_order(), [0, 1, 2]);
        assert_eq!(
            r.post_order(),
            [(2, Some(T::Host)), (1, Some(T::Host)), (0, Some(T::Host))]
        );
        assert!(r.lc.errors().is_empty());
    }

    #[test]
    fn consistency_is_set_when_frozen() {
        let mut r = Run::new(setup(
            Requested::Application,
            vec![hook("a", true, true, false)],
        ));
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.lc.state(), S::Freezing);
        assert_eq!(r.lc.consistency(), None);
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        assert_eq!(
            (r.lc.state(), r.lc.consistency()),
            (S::Frozen, Some(C::Application))
        );
    }

    #[test]
    fn file_system_without_hooks() {
        let r = cycle(setup(Requested::Application, vec![]), &|_| true, 1, 1, true);
        assert_eq!(r.end(), (S::Succeeded, Some(C::FileSystem), Some(T::Host)));
    }

    #[test]
    fn file_system_request_runs_no_hooks() {
        let r = cycle(
            setup(Requested::FileSystem, three_hooks()),
            &|_| true,
            1,
            1,
            true,
        );
        assert_eq!(r.end(), (S::Succeeded, Some(C::FileSystem), Some(T::Host)));
        assert!(r.pre_order().is_empty());
        assert!(r.post_order().is_empty(), "no pre ran, so no post is due");
    }

    #[test]
    fn a_failed_pre_hook_with_continue_gives_file_system_and_goes_on() {
        let r = cycle(
            setup(Requested::Application, three_hooks()),
            &|h| h != 1,
            1,
            1,
            true,
        );
        assert_eq!(r.end(), (S::Succeeded, Some(C::FileSystem), Some(T::Host)));
        assert_eq!(r.pre_order(), [0, 1, 2]);
        assert_eq!(r.post_order().len(), 3);
        assert_eq!(r.lc.errors()[0].reason, "pre_hook_failed");
    }

    #[test]
    fn a_failed_pre_hook_with_abort_freezes_nothing_and_runs_the_due_posts() {
        let hooks = vec![
            hook("a", true, true, false),
            hook("b", true, true, true),
            hook("c", true, true, false),
        ];
        let r = cycle(
            setup(Requested::Application, hooks),
            &|h| h != 1,
            1,
            1,
            true,
        );
        assert_eq!(r.end(), (S::Failed, None, None));
        assert!(!r.froze());
        assert_eq!(r.pre_order(), [0, 1], "c's pre never runs");
        // b's pre started (and failed): its post is due, then a's; c's is not.
        assert_eq!(r.post_order(), [(1, None), (0, None)]);
    }

    #[test]
    fn a_failed_mount_gives_crash_and_can_still_succeed() {
        let r = cycle(
            setup(Requested::Application, three_hooks()),
            &|_| true,
            3,
            2,
            true,
        );
        assert_eq!(r.end(), (S::Succeeded, Some(C::Crash), Some(T::Host)));
        assert_eq!(r.lc.errors()[0].reason, "mount_not_frozen");
    }

    #[test]
    fn no_mount_frozen_at_all_is_crash_with_no_thaw_reason() {
        let r = cycle(
            setup(Requested::Application, three_hooks()),
            &|_| true,
            2,
            0,
            true,
        );
        assert_eq!(r.end(), (S::Succeeded, Some(C::Crash), None));
        assert!(r.post_order().iter().all(|(_, t)| t.is_none()));
    }

    #[test]
    fn no_target_mounts_is_crash() {
        let r = cycle(setup(Requested::Application, vec![]), &|_| true, 0, 0, true);
        assert_eq!(r.end(), (S::Succeeded, Some(C::Crash), None));
    }

    #[test]
    fn freeze_disabled_goes_through_frozen_with_crash() {
        let mut s = setup(Requested::Application, three_hooks());
        s.freeze_enabled = false;
        let mut r = Run::new(s);
        r.hooks_answer(&|_| true, true);
        assert!(!r.froze());
        assert_eq!(
            (r.lc.state(), r.lc.consistency()),
            (S::Frozen, Some(C::Crash))
        );
        r.send(Event::HostThaw { taken: true });
        r.thaw_done();
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Succeeded, Some(C::Crash), None));
    }

    #[test]
    fn the_deadline_before_the_host_is_crash_and_failed() {
        let mut r = Run::frozen(three_hooks());
        r.send(Event::Thawed {
            reason: T::Deadline,
        });
        assert_eq!(r.lc.state(), S::PostHooks);
        // The host's thaw after the deadline: 409.
        assert_eq!(
            r.lc.handle(Event::HostThaw { taken: true }),
            Err(Refusal::NotFrozen(S::PostHooks))
        );
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Failed, Some(C::Crash), Some(T::Deadline)));
        assert_eq!(
            r.post_order(),
            [
                (2, Some(T::Deadline)),
                (1, Some(T::Deadline)),
                (0, Some(T::Deadline))
            ]
        );
        assert_eq!(r.lc.errors()[0].reason, "deadline");
    }

    #[test]
    fn the_deadline_while_a_freeze_hangs_is_crash() {
        let mut r = Run::new(setup(Requested::Application, vec![]));
        assert_eq!(r.lc.state(), S::Freezing);
        r.send(Event::Thawed {
            reason: T::Deadline,
        });
        assert_eq!(r.end(), (S::Failed, Some(C::Crash), Some(T::Deadline)));
    }

    #[test]
    fn the_host_saying_failed_ends_failed_with_no_consistency() {
        let r = cycle(
            setup(Requested::Application, three_hooks()),
            &|_| true,
            1,
            1,
            false,
        );
        assert_eq!(r.end(), (S::Failed, None, Some(T::Host)));
        assert_eq!(r.post_order().len(), 3);
    }

    #[test]
    fn abort_while_frozen_thaws_runs_posts_and_ends_aborted() {
        let mut r = Run::frozen(three_hooks());
        assert_eq!(r.send(Event::Abort), [Action::Thaw { reason: T::Abort }]);
        assert_eq!(r.lc.state(), S::Thawing);
        // DELETE again, or the host's thaw, while thawing: refused.
        assert_eq!(
            r.lc.handle(Event::HostThaw { taken: true }),
            Err(Refusal::NotFrozen(S::Thawing))
        );
        r.thaw_done();
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Aborted, None, Some(T::Abort)));
        assert_eq!(r.post_order().len(), 3);
        assert_eq!(r.lc.handle(Event::Abort), Err(Refusal::Ended(S::Aborted)));
    }

    #[test]
    fn abort_during_a_pre_hook_cancels_it_and_runs_the_due_posts() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.send(Event::PreHookFinished { hook: 0, ok: true });
        assert_eq!(r.send(Event::Abort), [Action::CancelPreHook { hook: 1 }]);
        r.send(Event::PreHookFinished { hook: 1, ok: false });
        r.hooks_answer(&|_| true, true);
        assert!(!r.froze());
        assert_eq!(r.end(), (S::Aborted, None, None));
        assert_eq!(r.post_order(), [(1, None), (0, None)]);
    }

    #[test]
    fn abort_while_freezing_thaws_whatever_froze() {
        let mut r = Run::new(setup(
            Requested::Application,
            vec![hook("a", true, true, false)],
        ));
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.lc.state(), S::Freezing);
        r.send(Event::Abort);
        // The freeze settles while the thaw is under way: ignored.
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        assert_eq!(r.lc.state(), S::Thawing);
        r.thaw_done();
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Aborted, None, Some(T::Abort)));
    }

    #[test]
    fn abort_is_refused_once_the_host_thaw_arrived() {
        let mut r = Run::frozen(three_hooks());
        r.send(Event::HostThaw { taken: true });
        assert_eq!(r.lc.handle(Event::Abort), Err(Refusal::HostThawArrived));
        r.thaw_done();
        assert_eq!(r.lc.handle(Event::Abort), Err(Refusal::HostThawArrived));
    }

    #[test]
    fn abort_after_a_deadline_thaw_ends_aborted_after_the_posts() {
        let mut r = Run::frozen(three_hooks());
        r.send(Event::Thawed {
            reason: T::Deadline,
        });
        assert!(r.send(Event::Abort).is_empty(), "nothing left to thaw");
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Aborted, None, Some(T::Deadline)));
    }

    #[test]
    fn shutdown_while_frozen_thaws_and_ends_aborted() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.hooks_answer(&|_| true, true);
        r.send(Event::FreezeSettled {
            targets: 2,
            frozen: 2,
        });
        assert_eq!(
            r.send(Event::Shutdown),
            [Action::Thaw {
                reason: T::Shutdown
            }]
        );
        r.thaw_done();
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Aborted, None, Some(T::Shutdown)));
        assert_eq!(r.post_order()[0], (2, Some(T::Shutdown)));
    }

    #[test]
    fn shutdown_after_the_host_thaw_lets_the_snapshot_finish() {
        let mut r = Run::frozen(three_hooks());
        r.send(Event::HostThaw { taken: true });
        assert!(r.send(Event::Shutdown).is_empty());
        r.thaw_done();
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Succeeded, Some(C::Application), Some(T::Host)));
    }

    #[test]
    fn shutdown_during_pre_hooks_cancels_and_runs_posts() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        assert_eq!(r.send(Event::Shutdown), [Action::CancelPreHook { hook: 0 }]);
        r.send(Event::PreHookFinished { hook: 0, ok: false });
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Aborted, None, None));
        assert_eq!(r.post_order(), [(0, None)]);
    }

    #[test]
    fn hooks_without_pre_count_as_run_and_without_post_are_skipped() {
        let hooks = vec![
            hook("only-post", false, true, false),
            hook("both", true, true, false),
            hook("only-pre", true, false, false),
        ];
        let r = cycle(setup(Requested::Application, hooks), &|_| true, 1, 1, true);
        assert_eq!(r.pre_order(), [1, 2]);
        assert_eq!(r.post_order(), [(1, Some(T::Host)), (0, Some(T::Host))]);
        assert_eq!(r.end(), (S::Succeeded, Some(C::Application), Some(T::Host)));
    }

    #[test]
    fn a_post_hook_failure_is_a_warning_only() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.hooks_answer(&|_| true, false);
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        r.send(Event::HostThaw { taken: true });
        r.thaw_done();
        r.hooks_answer(&|_| true, false);
        assert_eq!(r.end(), (S::Succeeded, Some(C::Application), Some(T::Host)));
        assert_eq!(r.lc.warnings().len(), 3);
        assert!(r.lc.errors().is_empty());
    }

    #[test]
    fn thaw_before_frozen_is_refused_and_changes_nothing() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        let before = format!("{:?}", r.lc);
        assert_eq!(
            r.lc.handle(Event::HostThaw { taken: true }),
            Err(Refusal::NotFrozen(S::PreHooks))
        );
        assert_eq!(format!("{:?}", r.lc), before);
    }

    #[test]
    fn an_internal_error_thaw_is_crash_and_failed() {
        let mut r = Run::new(setup(Requested::Application, vec![]));
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        r.send(Event::Thawed { reason: T::Error });
        assert_eq!(r.end(), (S::Failed, Some(C::Crash), Some(T::Error)));
    }

    #[test]
    fn stray_events_are_ignored() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.send(Event::PreHookFinished { hook: 2, ok: true });
        r.send(Event::PostHookFinished { hook: 0, ok: true });
        r.send(Event::Thawed { reason: T::Host });
        assert_eq!(r.lc.state(), S::PreHooks);
        assert_eq!(r.pre_order(), [0]);
    }

    #[test]
    fn the_deadline_racing_the_host_thaw_is_crash_and_failed() {
        let mut r = Run::frozen(three_hooks());
        r.send(Event::HostThaw { taken: true });
        // The watchdog had already thawed at the deadline when our thaw reached it.
        r.send(Event::Thawed {
            reason: T::Deadline,
        });
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Failed, Some(C::Crash), Some(T::Deadline)));
        assert_eq!(r.lc.errors()[0].reason, Reason::Deadline);
        assert!(r.post_order().iter().all(|(_, t)| *t == Some(T::Deadline)));
    }

    #[test]
    fn a_freeze_that_cannot_start_is_crash_with_both_errors() {
        let mut r = Run::new(setup(Requested::Application, vec![]));
        r.send(Event::FreezeFailed {
            targets: 2,
            error: "the watchdog did not start".into(),
        });
        assert_eq!(
            (r.lc.state(), r.lc.consistency()),
            (S::Frozen, Some(C::Crash))
        );
        let reasons: Vec<Reason> = r.lc.errors().iter().map(|p| p.reason).collect();
        assert_eq!(reasons, [Reason::FreezeFailed, Reason::MountNotFrozen]);
        r.send(Event::HostThaw { taken: true });
        r.thaw_done();
        assert_eq!(r.end(), (S::Succeeded, Some(C::Crash), None));
    }

    #[test]
    fn a_lost_watchdog_while_frozen_is_an_early_thaw() {
        let mut r = Run::frozen(three_hooks());
        r.send(Event::WatchdogLost {
            detail: "the watchdog exited".into(),
        });
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Failed, Some(C::Crash), Some(T::Error)));
        assert_eq!(r.lc.errors()[0].reason, Reason::ThawedEarly);
        assert_eq!(r.lc.warnings()[0].reason, Reason::Freezer);
        assert_eq!(r.post_order().len(), 3);
    }

    #[test]
    fn a_lost_watchdog_after_the_host_thaw_still_succeeds() {
        let mut r = Run::new(setup(Requested::Application, vec![]));
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        r.send(Event::HostThaw { taken: true });
        r.send(Event::WatchdogLost {
            detail: "gone".into(),
        });
        assert_eq!(r.end(), (S::Succeeded, Some(C::FileSystem), Some(T::Host)));
        assert_eq!(r.lc.warnings().len(), 1);
    }

    #[test]
    fn freezer_warnings_are_kept_in_order() {
        let mut r = Run::new(setup(Requested::Application, vec![]));
        r.send(Event::FreezerWarning {
            message: "mlockall".into(),
        });
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        assert_eq!(r.lc.warnings()[0].message, "mlockall");
        assert_eq!(r.lc.warnings()[0].reason, Reason::Freezer);
    }

    #[test]
    fn the_host_is_told_once_at_frozen_and_once_at_the_end() {
        let r = cycle(
            setup(Requested::Application, three_hooks()),
            &|_| true,
            1,
            1,
            true,
        );
        let told: Vec<Milestone> = r
            .log
            .iter()
            .filter_map(|a| match a {
                Action::Announce(m) => Some(*m),
                _ => None,
            })
            .collect();
        assert_eq!(told, [Milestone::Frozen, Milestone::Ended]);
    }

    #[test]
    fn reasons_serialize_as_their_codes() {
        for r in Reason::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        let unknown: Reason = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(unknown, Reason::Unknown);
    }

    #[test]
    fn docs_http_lists_exactly_the_reasons() {
        let doc = include_str!("../../docs/http.md");
        let start = doc.find("Codes:").expect("docs/http.md lists the codes");
        let end = start + doc[start..].find("\n- ").expect("end of the codes item");
        let listed: Vec<&str> = doc[start..end].split('`').skip(1).step_by(2).collect();
        let errors: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| r.is_error())
            .map(|r| r.as_str())
            .collect();
        let warnings: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| !r.is_error())
            .map(|r| r.as_str())
            .collect();
        assert_eq!(listed, [errors, warnings].concat());
    }

    /// Random event sequences against the invariants of the contract.
    mod property {
        use super::*;

        /// xorshift64*: deterministic, no dependency.
        struct Rng(u64);
        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
            }
            fn below(&mut self, n: u64) -> usize {
                (self.next() % n) as usize
            }
            fn chance(&mut self, percent: u64) -> bool {
                self.next() % 100 < percent
            }
        }

        /// What is under way outside the lifecycle.
        #[derive(Default)]
        struct World {
            pre: Option<usize>,
            post: Option<usize>,
            freezing: bool,
            thawing: Option<ThawReason>,
            /// Mounts that froze (known once the freeze settled).
            frozen: usize,
        }

        struct Trace {
            actions: Vec<Action>,
            pre_ok: Vec<bool>,
            settled: Option<(usize, usize)>,
            thawed_seen: bool,
            host: Option<bool>,
            early: Option<ThawReason>,
            stopped: bool,
        }

        fn one_run(seed: u64) {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let n = rng.below(4);
            let hooks: Vec<HookPlan> = (0..n)
                .map(|i| HookPlan {
                    name: format!("h{i}"),
                    has_pre: rng.chance(80),
                    has_post: rng.chance(80),
                    abort_on_failure: rng.chance(30),
                })
                .collect();
            let s = Setup {
                requested: if rng.chance(80) {
                    Requested::Application
                } else {
                    Requested::FileSystem
                },
                hooks: hooks.clone(),
                freeze_enabled: rng.chance(90),
            };
            let (mut lc, first) = Lifecycle::start(s.clone());
            let mut w = World::default();
            let mut t = Trace {
                actions: Vec::new(),
                pre_ok: vec![true; n],
                settled: None,
                thawed_seen: false,
                host: None,
                early: None,
                stopped: false,
            };
            let mut todo: Vec<Action> = first;
            for _step in 0..400 {
                for a in todo.drain(..) {
                    t.actions.push(a);
                    match a {
                        Action::RunPreHook { hook } => w.pre = Some(hook),
                        Action::RunPostHook { hook, .. } => w.post = Some(hook),
                        Action::Freeze => w.freezing = true,
                        Action::Thaw { reason } => w.thawing = Some(reason),
                        Action::CancelPreHook { .. } | Action::Announce(_) => {}
                    }
                }
                if lc.state().is_end() {
                    break;
                }
                let state = lc.state();
                let ev = match rng.below(10) {
                    0 if state != State::Frozen => Event::Abort,
                    1 if rng.chance(30) => Event::Shutdown,
                    2 if state == State::Frozen && w.thawing.is_none() => {
                        let taken = rng.chance(70);
                        Event::HostThaw { taken }
                    }
                    3 if (w.freezing || w.frozen > 0) && w.thawing.is_none() => {
                        // The deadline (or an error) thaws by itself.
                        let reason = if rng.chance(80) {
                            ThawReason::Deadline
                        } else {
                            ThawReason::Error
                        };
                        w.freezing = false;
                        w.frozen = 0;
                        if state == State::Freezing || state == State::Frozen {
                            t.early = Some(reason);
                        }
                        if rng.chance(20) {
                            Event::WatchdogLost {
                                detail: "gone".into(),
                            }
                        } else {
                            Event::Thawed { reason }
                        }
                    }
                    4 => Event::FreezerWarning {
                        message: "w".into(),
                    },
                    _ => {
                        if let Some(hook) = w.pre.take() {
                            let ok = rng.chance(75);
                            t.pre_ok[hook] = ok;
                            Event::PreHookFinished { hook, ok }
                        } else if let Some(hook) = w.post.take() {
                            Event::PostHookFinished {
                                hook,
                                ok: rng.chance(80),
                            }
                        } else if w.freezing {
                            w.freezing = false;
                            let targets = rng.below(4);
                            if rng.chance(10) {
                                t.settled = Some((targets, 0));
                                Event::FreezeFailed {
                                    targets,
                                    error: "x".into(),
                                }
                            } else {
                                let frozen = if rng.chance(70) {
                                    targets
                                } else {
                                    rng.below(targets as u64 + 1)
                                };
                                w.frozen = frozen;
                                t.settled = Some((targets, frozen));
                                Event::FreezeSettled { targets, frozen }
                            }
                        } else if let Some(reason) = w.thawing.take() {
                            w.frozen = 0;
                            Event::Thawed { reason }
                        } else if state == State::Frozen {
                            Event::HostThaw {
                                taken: rng.chance(70),
                            }
                        } else {
                            continue;
                        }
                    }
                };
                if matches!(ev, Event::Thawed { .. } | Event::WatchdogLost { .. })
                    && matches!(state, State::Freezing | State::Frozen | State::Thawing)
                {
                    t.thawed_seen = true;
                }
                let is_stop = matches!(ev, Event::Abort | Event::Shutdown);
                let host = match ev {
                    Event::HostThaw { taken } => Some(taken),
                    _ => None,
                };
                if let Ok(actions) = lc.handle(ev) {
                    if host.is_some() {
                        t.host = host;
                    }
                    if is_stop && lc.host_thaw.is_none() {
                        t.stopped = true;
                    }
                    todo = actions;
                }
            }
            assert!(lc.state().is_end(), "seed {seed}: never ended ({lc:?})");
            check(seed, &s, &lc, &t);
        }

        fn check(seed: u64, s: &Setup, lc: &Lifecycle, t: &Trace) {
            let froze = t.actions.contains(&Action::Freeze);
            // Every freeze is followed by a thaw: the end comes only after the freezer said
            // nothing of ours is frozen.
            if froze {
                assert!(t.thawed_seen, "seed {seed}: ended without a thaw");
            }
            // Post hooks: in reverse order, for exactly the hooks whose pre started.
            let pres: Vec<usize> = t
                .actions
                .iter()
                .filter_map(|a| match a {
                    Action::RunPreHook { hook } => Some(*hook),
                    _ => None,
                })
                .collect();
            // Every hook was considered once the snapshot got to the freeze; else those up to
            // the last pre hook that ran.
            let reached_freeze = t
                .actions
                .iter()
                .any(|a| matches!(a, Action::Freeze | Action::Announce(Milestone::Frozen)));
            let considered = if reached_freeze {
                s.hooks.len()
            } else {
                pres.last().map_or(0, |&l| l + 1)
            };
            let started: Vec<usize> = if s.requested == Requested::Application {
                (0..considered)
                    .filter(|&i| !s.hooks[i].has_pre || pres.contains(&i))
                    .collect()
            } else {
                Vec::new()
            };
            assert_eq!(
                started,
                (0..s.hooks.len())
                    .filter(|&i| lc.pre_started[i])
                    .collect::<Vec<_>>(),
                "seed {seed}: pre hooks started"
            );
            let expected_posts: Vec<usize> = started
                .iter()
                .rev()
                .copied()
                .filter(|&i| s.hooks[i].has_post)
                .collect();
            let posts: Vec<(usize, Option<ThawReason>)> = t
                .actions
                .iter()
                .filter_map(|a| match a {
                    Action::RunPostHook { hook, thaw_reason } => Some((*hook, *thaw_reason)),
                    _ => None,
                })
                .collect();
            assert_eq!(
                posts.iter().map(|p| p.0).collect::<Vec<_>>(),
                expected_posts,
                "seed {seed}: post hooks"
            );
            assert!(
                posts.iter().all(|p| p.1 == lc.thaw_reason()),
                "seed {seed}: post hooks see the final thaw reason"
            );
            // Consistency follows the contract's table.
            let state = lc.state();
            if t.stopped {
                assert_eq!(state, State::Aborted, "seed {seed}");
                assert_eq!(lc.consistency(), None, "seed {seed}");
                return;
            }
            let pre_aborted = (0..s.hooks.len())
                .any(|i| pres.contains(&i) && !t.pre_ok[i] && s.hooks[i].abort_on_failure);
            if pre_aborted {
                assert!(!froze, "seed {seed}: a failed abort hook freezes nothing");
                assert_eq!((state, lc.consistency()), (State::Failed, None), "{seed}");
                return;
            }
            if t.host == Some(false) {
                assert_eq!((state, lc.consistency()), (State::Failed, None), "{seed}");
                return;
            }
            if t.early.is_some() || lc.deadline_first {
                assert_eq!(
                    (state, lc.consistency()),
                    (State::Failed, Some(Consistency::Crash)),
                    "seed {seed}"
                );
                return;
            }
            assert_eq!(state, State::Succeeded, "seed {seed}");
            let all_froze = s.freeze_enabled
                && t.settled
                    .is_some_and(|(targets, frozen)| targets > 0 && frozen == targets);
            let expected = if !all_froze {
                Consistency::Crash
            } else if s.requested == Requested::Application
                && !s.hooks.is_empty()
                && t.pre_ok
                    .iter()
                    .enumerate()
                    .all(|(i, ok)| *ok || !pres.contains(&i))
            {
                Consistency::Application
            } else {
                Consistency::FileSystem
            };
            assert_eq!(lc.consistency(), Some(expected), "seed {seed}");
        }

        #[test]
        fn random_event_sequences_keep_the_invariants() {
            for seed in 0..5000 {
                one_run(seed);
            }
        }
    }

    #[test]
    fn posts_due_after_a_lost_driver_follow_the_contracts_rule() {
        let s = setup(Requested::Application, three_hooks());
        // Lost during b's pre (a's ended): b's and a's posts, b first.
        assert_eq!(posts_due_after_loss(&s, &[0], &[], false), [1, 0]);
        // Lost while frozen: every post, in reverse.
        assert_eq!(posts_due_after_loss(&s, &[0, 1, 2], &[], true), [2, 1, 0]);
        // Lost during the posts: only those not run yet.
        assert_eq!(posts_due_after_loss(&s, &[0, 1, 2], &[2], true), [1, 0]);
        // A file_system snapshot ran no pre: nothing is due.
        let fs = setup(Requested::FileSystem, three_hooks());
        assert!(posts_due_after_loss(&fs, &[], &[], true).is_empty());
        // Hooks without a pre count as started when their turn came; without a post, skipped.
        let mixed = setup(
            Requested::Application,
            vec![
                hook("only-post", false, true, false),
                hook("both", true, true, false),
                hook("only-pre", true, false, false),
            ],
        );
        assert_eq!(posts_due_after_loss(&mixed, &[], &[], false), [1, 0]);
    }
}
