//! The snapshot lifecycle as a pure state machine (contract: HTTP API states, Consistency rules).
//!
//! No IO, no clock, no tokio: the agent feeds it [`Event`]s (a pre hook finished, the freeze
//! settled, the host's thaw, the deadline, an abort...) and carries out the [`Action`]s it
//! answers with (run this hook, freeze, thaw). Every rule about states, consistency, thaw
//! reasons and hook order lives here, and is unit-tested over the whole table of scenarios.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Where a snapshot stands; the last three are end states.
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

/// Why the mounts were thawed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThawReason {
    Host,
    Deadline,
    Abort,
    Shutdown,
    Error,
}

impl ThawReason {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ThawReason::Host => "host",
            ThawReason::Deadline => "deadline",
            ThawReason::Abort => "abort",
            ThawReason::Shutdown => "shutdown",
            ThawReason::Error => "error",
        }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A pre hook ended; `ok` means exit 0 within its timeout.
    PreHookFinished { hook: usize, ok: bool },
    /// Every target mount has an outcome: `frozen` of `targets` froze.
    FreezeSettled { targets: usize, frozen: usize },
    /// The host's `POST .../thaw`: `taken` or `failed`.
    HostThaw { taken: bool },
    /// The mounts were thawed without being asked (the deadline, or an internal error).
    ThawedBy(ThawReason),
    /// The thaw we asked for is complete: nothing of ours is frozen.
    ThawFinished,
    /// `DELETE`.
    Abort,
    /// The agent is stopping (SIGTERM).
    Shutdown,
    /// A post hook ended (its failure is a warning).
    PostHookFinished { hook: usize, ok: bool },
}

/// Something for the agent to do now.
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
    /// Thaw everything frozen.
    Thaw {
        reason: ThawReason,
    },
    /// Run a post hook; `thaw_reason` is `None` when nothing was frozen.
    RunPostHook {
        hook: usize,
        thaw_reason: Option<ThawReason>,
    },
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Abort,
    Shutdown,
}

/// One snapshot's lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    setup: Setup,
    state: State,
    /// Pre hooks that started (their post hooks are due whatever happens).
    pre_started: Vec<bool>,
    next_pre: usize,
    running_pre: Option<usize>,
    pre_failed: bool,
    /// A pre hook failed with `on_failure: abort`.
    pre_aborted: bool,
    stop: Option<Stop>,
    host_thaw: Option<bool>,
    consistency: Option<Consistency>,
    thaw_reason: Option<ThawReason>,
    anything_frozen: bool,
    post_queue: Vec<usize>,
    running_post: Option<usize>,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Lifecycle {
    /// Starts a snapshot: the first actions are the first pre hook, or the freeze.
    pub fn start(setup: Setup) -> (Lifecycle, Vec<Action>) {
        let n = setup.hooks.len();
        let mut lc = Lifecycle {
            setup,
            state: State::PreHooks,
            pre_started: vec![false; n],
            next_pre: 0,
            running_pre: None,
            pre_failed: false,
            pre_aborted: false,
            stop: None,
            host_thaw: None,
            consistency: None,
            thaw_reason: None,
            anything_frozen: false,
            post_queue: Vec::new(),
            running_post: None,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let mut actions = Vec::new();
        lc.advance_pre(&mut actions);
        (lc, actions)
    }

    pub fn state(&self) -> State {
        self.state
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

    /// Handles one event; a refused one changes nothing.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>, Refusal> {
        let mut actions = Vec::new();
        match event {
            Event::PreHookFinished { hook, ok } => self.pre_finished(hook, ok, &mut actions),
            Event::FreezeSettled { targets, frozen } => self.freeze_settled(targets, frozen),
            Event::HostThaw { taken } => {
                if self.state != State::Frozen || self.stop.is_some() {
                    return Err(if self.state.is_end() {
                        Refusal::Ended(self.state)
                    } else {
                        Refusal::NotFrozen(self.state)
                    });
                }
                self.host_thaw = Some(taken);
                if !taken {
                    self.errors.push(Problem {
                        reason: "storage_snapshot_failed",
                        message: "the host reported that the storage snapshot failed".into(),
                    });
                }
                self.begin_thaw(ThawReason::Host, &mut actions);
            }
            Event::ThawedBy(reason) => self.thawed_by(reason, &mut actions),
            Event::ThawFinished => {
                if self.state == State::Thawing {
                    self.begin_post(&mut actions);
                }
            }
            Event::Abort => {
                if self.state.is_end() {
                    return Err(Refusal::Ended(self.state));
                }
                if self.host_thaw.is_some() {
                    return Err(Refusal::HostThawArrived);
                }
                self.stop_now(Stop::Abort, &mut actions);
            }
            Event::Shutdown => {
                // Once the host's thaw is in, the snapshot finishes as it would have.
                if !self.state.is_end() && self.host_thaw.is_none() {
                    self.stop_now(Stop::Shutdown, &mut actions);
                }
            }
            Event::PostHookFinished { hook, ok } => {
                if self.running_post == Some(hook) {
                    self.running_post = None;
                    if !ok {
                        self.warnings.push(Problem {
                            reason: "post_hook_failed",
                            message: format!("post hook {} failed", self.setup.hooks[hook].name),
                        });
                    }
                    self.next_post(&mut actions);
                }
            }
        }
        Ok(actions)
    }

    /// Starts the next pre hook, or moves on to the freeze when there is none left.
    fn advance_pre(&mut self, actions: &mut Vec<Action>) {
        if self.setup.requested == Requested::Application {
            while self.next_pre < self.setup.hooks.len() {
                let i = self.next_pre;
                self.next_pre += 1;
                // A hook without `pre` counts as having run its empty pre when its turn came.
                self.pre_started[i] = true;
                if self.setup.hooks[i].has_pre {
                    self.running_pre = Some(i);
                    actions.push(Action::RunPreHook { hook: i });
                    return;
                }
            }
        }
        self.state = State::Freezing;
        if self.setup.freeze_enabled {
            actions.push(Action::Freeze);
        } else {
            self.warnings.push(Problem {
                reason: "freeze_disabled",
                message: "freezing is disabled (freeze.enabled: false): crash-consistent at best"
                    .into(),
            });
            self.become_frozen(0, 0);
        }
    }

    fn pre_finished(&mut self, hook: usize, ok: bool, actions: &mut Vec<Action>) {
        if self.running_pre != Some(hook) {
            return;
        }
        self.running_pre = None;
        if !ok {
            let h = &self.setup.hooks[hook];
            self.errors.push(Problem {
                reason: "pre_hook_failed",
                message: format!(
                    "pre hook {} failed (on_failure: {})",
                    h.name,
                    if h.abort_on_failure {
                        "abort"
                    } else {
                        "continue"
                    }
                ),
            });
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
            self.advance_pre(actions);
        }
    }

    fn freeze_settled(&mut self, targets: usize, frozen: usize) {
        // After an abort or shutdown the state is already `thawing`: ThawFinished moves us on.
        if self.state == State::Freezing {
            self.become_frozen(targets, frozen);
        }
    }

    fn become_frozen(&mut self, targets: usize, frozen: usize) {
        self.anything_frozen = frozen > 0;
        self.state = State::Frozen;
        let all_froze = self.setup.freeze_enabled && targets > 0 && frozen == targets;
        if self.setup.freeze_enabled && frozen < targets {
            self.errors.push(Problem {
                reason: "mount_not_frozen",
                message: format!(
                    "{} of {targets} target mounts did not freeze",
                    targets - frozen
                ),
            });
        } else if self.setup.freeze_enabled && targets == 0 {
            self.warnings.push(Problem {
                reason: "no_target_mounts",
                message: "no mount could be frozen: crash-consistent at best".into(),
            });
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
    }

    fn begin_thaw(&mut self, reason: ThawReason, actions: &mut Vec<Action>) {
        self.thaw_reason = self.anything_frozen.then_some(reason);
        self.state = State::Thawing;
        actions.push(Action::Thaw { reason });
    }

    fn thawed_by(&mut self, reason: ThawReason, actions: &mut Vec<Action>) {
        match self.state {
            State::Freezing | State::Frozen => {
                if self.stop.is_some() {
                    return;
                }
                self.thaw_reason = Some(reason);
                self.consistency = Some(Consistency::Crash);
                self.errors.push(Problem {
                    reason: match reason {
                        ThawReason::Deadline => "deadline",
                        _ => "thawed_early",
                    },
                    message: match reason {
                        ThawReason::Deadline => {
                            "the deadline thawed the mounts before the host's thaw arrived".into()
                        }
                        r => format!("the mounts were thawed early ({})", r.as_str()),
                    },
                });
                self.begin_post(actions);
            }
            State::Thawing => self.begin_post(actions),
            _ => {}
        }
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
        match self.state {
            State::PreHooks => {
                if let Some(hook) = self.running_pre {
                    actions.push(Action::CancelPreHook { hook });
                } else {
                    self.begin_post(actions);
                }
            }
            State::Freezing | State::Frozen => {
                // Freezing: some FIFREEZE may be under way; whatever froze counts as frozen.
                if self.state == State::Freezing {
                    self.anything_frozen = true;
                }
                self.begin_thaw(reason, actions);
            }
            // Already thawed (deadline) or thawing: the post hooks run as planned.
            _ => {}
        }
    }

    fn begin_post(&mut self, actions: &mut Vec<Action>) {
        self.state = State::PostHooks;
        self.post_queue = (0..self.setup.hooks.len())
            .filter(|&i| self.pre_started[i] && self.setup.hooks[i].has_post)
            .collect();
        self.next_post(actions);
    }

    fn next_post(&mut self, actions: &mut Vec<Action>) {
        // Reverse order: the last hook whose pre ran gets its post first.
        if let Some(hook) = self.post_queue.pop() {
            self.running_post = Some(hook);
            actions.push(Action::RunPostHook {
                hook,
                thaw_reason: self.thaw_reason,
            });
        } else {
            self.finish();
        }
    }

    fn finish(&mut self) {
        self.state = if self.stop.is_some() {
            State::Aborted
        } else if self.pre_aborted || self.host_thaw == Some(false) {
            State::Failed
        } else if self.host_thaw == Some(true) {
            State::Succeeded
        } else {
            // Thawed before the host's thaw (deadline, error).
            State::Failed
        };
        match self.state {
            State::Aborted => self.consistency = None,
            State::Failed if self.pre_aborted || self.host_thaw == Some(false) => {
                self.consistency = None
            }
            _ => {}
        }
    }
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
            r.send(Event::ThawFinished);
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
        r.send(Event::ThawFinished);
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Succeeded, Some(C::Crash), None));
    }

    #[test]
    fn the_deadline_before_the_host_is_crash_and_failed() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.hooks_answer(&|_| true, true);
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        r.send(Event::ThawedBy(T::Deadline));
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
        r.send(Event::ThawedBy(T::Deadline));
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
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.hooks_answer(&|_| true, true);
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        assert_eq!(r.send(Event::Abort), [Action::Thaw { reason: T::Abort }]);
        assert_eq!(r.lc.state(), S::Thawing);
        // DELETE again, or the host's thaw, while thawing: refused.
        assert_eq!(
            r.lc.handle(Event::HostThaw { taken: true }),
            Err(Refusal::NotFrozen(S::Thawing))
        );
        r.send(Event::ThawFinished);
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
        r.send(Event::ThawFinished);
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Aborted, None, Some(T::Abort)));
    }

    #[test]
    fn abort_is_refused_once_the_host_thaw_arrived() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.hooks_answer(&|_| true, true);
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        r.send(Event::HostThaw { taken: true });
        assert_eq!(r.lc.handle(Event::Abort), Err(Refusal::HostThawArrived));
        r.send(Event::ThawFinished);
        assert_eq!(r.lc.handle(Event::Abort), Err(Refusal::HostThawArrived));
    }

    #[test]
    fn abort_after_a_deadline_thaw_ends_aborted_after_the_posts() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.hooks_answer(&|_| true, true);
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        r.send(Event::ThawedBy(T::Deadline));
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
        r.send(Event::ThawFinished);
        r.hooks_answer(&|_| true, true);
        assert_eq!(r.end(), (S::Aborted, None, Some(T::Shutdown)));
        assert_eq!(r.post_order()[0], (2, Some(T::Shutdown)));
    }

    #[test]
    fn shutdown_after_the_host_thaw_lets_the_snapshot_finish() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.hooks_answer(&|_| true, true);
        r.send(Event::FreezeSettled {
            targets: 1,
            frozen: 1,
        });
        r.send(Event::HostThaw { taken: true });
        assert!(r.send(Event::Shutdown).is_empty());
        r.send(Event::ThawFinished);
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
        r.send(Event::ThawFinished);
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
        r.send(Event::ThawedBy(T::Error));
        assert_eq!(r.end(), (S::Failed, Some(C::Crash), Some(T::Error)));
    }

    #[test]
    fn stray_events_are_ignored() {
        let mut r = Run::new(setup(Requested::Application, three_hooks()));
        r.send(Event::PreHookFinished { hook: 2, ok: true });
        r.send(Event::PostHookFinished { hook: 0, ok: true });
        r.send(Event::ThawFinished);
        assert_eq!(r.lc.state(), S::PreHooks);
        assert_eq!(r.pre_order(), [0]);
    }
}
