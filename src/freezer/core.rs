//! The freezer's decisions as a pure state machine: when to flush, record, freeze and thaw each
//! mount, when the deadline fires, and what the agent is told.
//!
//! No threads, no clock, no IO: the watchdog's shell ([`super::watchdog`]) feeds [`Core::handle`]
//! an [`Input`] (a command from the agent, a syscall that returned, a timer tick) together with
//! the current monotonic time, carries out the [`Effect`]s it answers with, and sleeps until
//! [`Core::next_wakeup`] (as ntpd-rs's protocol core asks its caller for timers). Effects that the
//! shell performs synchronously (writing a record) have their result fed back as the next input.
//!
//! The rules kept here:
//! - a mount is frozen only after its record was written ("never freeze what could not be
//!   recorded": the record is what thaws it after a SIGKILL of the watchdog);
//! - mounts freeze in parallel, except that a mount waits until every mount stacked above it has
//!   an outcome;
//! - one deadline, on the monotonic clock, set when the first FIFREEZE is issued;
//! - the thaw starts every FITHAW at once (issued in the reverse of the order in which the
//!   FIFREEZEs returned), except that a mount waits until every mount beneath it is thawed; a
//!   FITHAW that does not return within [`THAW_STEP_WAIT`] lets the mounts above it start; a
//!   FIFREEZE that returns after the thaw began is thawed the moment it returns;
//! - EBUSY (frozen by someone else) is never thawed and its record goes at once; EOPNOTSUPP is a
//!   skip; EINVAL from FITHAW means "not frozen any more", a thaw like any other;
//! - with `expedite_rcu`, RCU grace periods are expedited right before the first FIFREEZE and
//!   put back once every mount has an outcome or the thaw begins, whichever comes first: the
//!   knob is global, so it is on for exactly the freeze;
//! - `ThawComplete` once nothing of ours is frozen (with the FIFREEZEs still outstanding as
//!   `pending`), `Finished` and exit only once no call is outstanding at all.
//!
//! Wall-clock fields of the events it emits (`unix_ms`, `deadline_unix_ms`) are 0: the shell
//! stamps them as it writes each event.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::protocol::{Event, FailKind, Plan, ThawReason};

/// How long one FITHAW may take before the next mount's thaw starts anyway.
pub const THAW_STEP_WAIT: Duration = Duration::from_millis(200);

/// What the core needs of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePlan {
    /// One entry per mount, in freeze order: the indices of the mounts beneath it.
    pub beneath: Vec<Vec<usize>>,
    /// Thaw by itself this long after the first FIFREEZE was issued.
    pub timeout: Duration,
    /// syncfs every mount before the first FIFREEZE.
    pub preflush: bool,
    /// The most the pre-flush may delay the first FIFREEZE.
    pub flush_budget: Duration,
    /// Expedite RCU grace periods from the first FIFREEZE until the last one has returned.
    pub expedite_rcu: bool,
}

impl CorePlan {
    /// The core's part of the pipe protocol's plan.
    pub fn of(plan: &Plan) -> CorePlan {
        CorePlan {
            beneath: plan.mounts.iter().map(|m| m.beneath.clone()).collect(),
            timeout: Duration::from_millis(plan.timeout_ms),
            preflush: plan.preflush,
            flush_budget: Duration::from_millis(plan.flush_budget_ms),
            expedite_rcu: plan.expedite_rcu,
        }
    }
}

/// A record that could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    /// The OS error number (0 when there is none).
    pub errno: i32,
    pub message: String,
}

/// Something that happened, fed to [`Core::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The agent's `freeze`.
    Freeze,
    /// The agent's `thaw`.
    Thaw(ThawReason),
    /// A command line that could not be read: the safe reading is a thaw with reason `error`.
    Unreadable,
    /// End of file on stdin: the agent died (or let go of us).
    AgentGone,
    /// syncfs of a mount returned.
    Flushed {
        mount: usize,
        result: Result<(), Errno>,
        took: Duration,
    },
    /// The record of a mount was written (or not), after [`Effect::WriteRecord`].
    RecordWritten {
        mount: usize,
        result: Result<(), RecordFailure>,
    },
    /// FIFREEZE of a mount returned.
    FreezeReturned {
        mount: usize,
        result: Result<(), Errno>,
    },
    /// FITHAW of a mount returned.
    ThawReturned {
        mount: usize,
        result: Result<(), Errno>,
    },
    /// Nothing happened, but time passed (a wakeup asked for by [`Core::next_wakeup`]).
    Tick,
}

/// What the shell is to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Start syncfs of a mount (answered by [`Input::Flushed`]).
    Flush(usize),
    /// Write the record of a mount now, and feed the result back ([`Input::RecordWritten`]).
    WriteRecord(usize),
    /// Start FIFREEZE of a mount (answered by [`Input::FreezeReturned`]).
    Freeze(usize),
    /// Start FITHAW of a mount (answered by [`Input::ThawReturned`]).
    Thaw(usize),
    /// Remove the record of a mount.
    RemoveRecord(usize),
    /// Expedite RCU grace periods now (if this machine lets us): the first FIFREEZE follows.
    /// Always followed, later, by exactly one [`Effect::RelaxRcu`].
    ExpediteRcu,
    /// Put RCU grace periods back as they were: no FIFREEZE of ours is outstanding any more,
    /// or the thaw began.
    RelaxRcu,
    /// Send an event to the agent (after stamping its wall-clock fields).
    Emit(Event),
    /// Nothing is frozen and no call is outstanding: end the process.
    Exit,
}

/// Why the core thaws: a reason that goes on the wire, or the agent's death, which does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThawCause {
    Reason(ThawReason),
    AgentGone,
}

/// Where one mount stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Idle,
    /// Its record is being written.
    Recording,
    /// FIFREEZE issued, not returned.
    Freezing,
    Frozen,
    Failed,
    /// Never frozen: the thaw came first.
    Cancelled,
    /// FITHAW issued, not returned.
    Thawing,
    Thawed,
    ThawFailed,
}

impl St {
    /// An outcome that lets the mounts beneath proceed.
    fn resolved(self) -> bool {
        !matches!(self, St::Idle | St::Recording | St::Freezing)
    }

    /// A call (or a frozen filesystem) that keeps the watchdog alive.
    fn outstanding(self) -> bool {
        matches!(
            self,
            St::Recording | St::Freezing | St::Frozen | St::Thawing
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ready,
    Flushing { until: Instant },
    Freezing,
    Thawing(ThawCause),
}

/// The freezer's state machine; see the module documentation.
#[derive(Debug)]
pub struct Core {
    plan: CorePlan,
    /// Mounts stacked directly or indirectly on each mount (they must have an outcome first).
    above: Vec<Vec<usize>>,
    states: Vec<St>,
    flushing: Vec<bool>,
    call_started: Vec<Option<Instant>>,
    /// Mounts in the order their FIFREEZE returned successfully (before the thaw began).
    frozen_order: Vec<usize>,
    /// Frozen mounts waiting for their FITHAW, in the reverse of the freeze order.
    thaw_queue: VecDeque<usize>,
    /// When each mount's FITHAW was issued (while it is `Thawing`).
    thaw_started: Vec<Option<Instant>>,
    phase: Phase,
    first_freeze: Option<Instant>,
    deadline: Option<Instant>,
    settled_sent: bool,
    /// The time of the last input (what [`Core::next_wakeup`] compares with).
    now: Instant,
    /// [`Effect::ExpediteRcu`] was given and [`Effect::RelaxRcu`] not yet.
    rcu_expedited: bool,
    complete: bool,
    finished: bool,
    out: Vec<Effect>,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

impl Core {
    /// A core for a plan; nothing happens until [`Input::Freeze`].
    pub fn new(plan: CorePlan) -> Core {
        let n = plan.beneath.len();
        let mut above = vec![Vec::new(); n];
        for (i, beneath) in plan.beneath.iter().enumerate() {
            for &j in beneath {
                if j < n && j != i {
                    above[j].push(i);
                }
            }
        }
        Core {
            above,
            states: vec![St::Idle; n],
            flushing: vec![false; n],
            call_started: vec![None; n],
            frozen_order: Vec::new(),
            thaw_queue: VecDeque::new(),
            thaw_started: vec![None; n],
            phase: Phase::Ready,
            first_freeze: None,
            deadline: None,
            settled_sent: false,
            now: Instant::now(),
            rcu_expedited: false,
            complete: false,
            finished: false,
            out: Vec::new(),
            plan,
        }
    }

    /// The deadline, once the first FIFREEZE was issued (monotonic).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// When the shell is to call [`Core::handle`] with [`Input::Tick`] if nothing else happens.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let flush = match self.phase {
            Phase::Flushing { until } => Some(until),
            _ => None,
        };
        let deadline = match self.phase {
            Phase::Freezing => self.deadline,
            _ => None,
        };
        let step = self.holding_thaws().map(|t| t + THAW_STEP_WAIT).min();
        [flush, deadline, step].into_iter().flatten().min()
    }

    /// True once [`Effect::Exit`] was returned.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Takes one input at time `now` (monotonic, never earlier than the last one) and returns
    /// what to do.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        if self.finished {
            return Vec::new();
        }
        self.now = self.now.max(now);
        let n = self.states.len();
        match input {
            Input::Freeze => {
                if self.phase == Phase::Ready {
                    self.start(now);
                }
            }
            Input::Thaw(reason) => self.begin_thaw(ThawCause::Reason(reason), now),
            Input::Unreadable => self.begin_thaw(ThawCause::Reason(ThawReason::Error), now),
            Input::AgentGone => self.begin_thaw(ThawCause::AgentGone, now),
            Input::Flushed {
                mount,
                result,
                took,
            } if mount < n => self.flushed(mount, result, took, now),
            Input::RecordWritten { mount, result } if mount < n => {
                self.record_written(mount, result, now)
            }
            Input::FreezeReturned { mount, result } if mount < n => {
                self.freeze_returned(mount, result, now)
            }
            Input::ThawReturned { mount, result } if mount < n => {
                self.thaw_returned(mount, result, now)
            }
            // A mount the plan does not have: nothing the shell could have started.
            Input::Flushed { .. }
            | Input::RecordWritten { .. }
            | Input::FreezeReturned { .. }
            | Input::ThawReturned { .. }
            | Input::Tick => {}
        }
        self.check_timers(now);
        if self.complete && !self.states.iter().any(|s| s.outstanding()) {
            self.finished = true;
            self.emit(Event::Finished);
            self.out.push(Effect::Exit);
        }
        std::mem::take(&mut self.out)
    }

    fn emit(&mut self, ev: Event) {
        self.out.push(Effect::Emit(ev));
    }

    fn start(&mut self, now: Instant) {
        if self.plan.preflush && !self.states.is_empty() {
            self.phase = Phase::Flushing {
                until: now + self.plan.flush_budget,
            };
            for i in 0..self.states.len() {
                self.flushing[i] = true;
                self.out.push(Effect::Flush(i));
            }
        } else {
            self.start_freezing(now);
        }
    }

    fn flushed(&mut self, i: usize, result: Result<(), Errno>, took: Duration, now: Instant) {
        self.flushing[i] = false;
        self.emit(Event::Flushed {
            mount: i,
            duration_us: micros(took),
            error: result.err().map(|e| format!("syncfs: {}", e.desc())),
        });
        if matches!(self.phase, Phase::Flushing { .. }) && !self.flushing.contains(&true) {
            self.start_freezing(now);
        }
    }

    fn start_freezing(&mut self, now: Instant) {
        self.phase = Phase::Freezing;
        self.launch_ready();
        self.maybe_settled(now);
    }

    /// Asks for the record of every idle mount whose upper mounts all have an outcome.
    fn launch_ready(&mut self) {
        for i in 0..self.states.len() {
            if self.states[i] == St::Idle
                && self.above[i].iter().all(|&j| self.states[j].resolved())
            {
                self.states[i] = St::Recording;
                self.out.push(Effect::WriteRecord(i));
            }
        }
    }

    fn record_written(&mut self, i: usize, result: Result<(), RecordFailure>, now: Instant) {
        if self.states[i] != St::Recording {
            return;
        }
        match result {
            Ok(()) if self.phase == Phase::Freezing => {
                self.states[i] = St::Freezing;
                self.call_started[i] = Some(now);
                if self.first_freeze.is_none() {
                    self.first_freeze = Some(now);
                    self.deadline = Some(now + self.plan.timeout);
                    if self.plan.expedite_rcu {
                        self.rcu_expedited = true;
                        self.out.push(Effect::ExpediteRcu);
                    }
                }
                self.emit(Event::FreezeStarted {
                    mount: i,
                    unix_ms: 0,
                    deadline_unix_ms: 0,
                });
                self.out.push(Effect::Freeze(i));
            }
            // The thaw began while the record was written: it is not frozen, and never will be.
            Ok(()) => {
                self.states[i] = St::Cancelled;
                self.out.push(Effect::RemoveRecord(i));
            }
            Err(failure) => {
                self.states[i] = St::Failed;
                self.emit(Event::FreezeFailed {
                    mount: i,
                    kind: FailKind::Error,
                    errno: failure.errno,
                    error: format!(
                        "not frozen: cannot record it in state_dir: {}",
                        failure.message
                    ),
                });
            }
        }
        if self.phase == Phase::Freezing {
            self.launch_ready();
            self.maybe_settled(now);
        }
    }

    fn freeze_returned(&mut self, i: usize, result: Result<(), Errno>, now: Instant) {
        if self.states[i] != St::Freezing {
            return;
        }
        let took = self.call_started[i].map(|s| now.saturating_duration_since(s));
        match result {
            Ok(()) => {
                self.states[i] = St::Frozen;
                self.emit(Event::Frozen {
                    mount: i,
                    duration_us: took.map(micros).unwrap_or(0),
                });
                if matches!(self.phase, Phase::Thawing(_)) {
                    // A call that returned after the thaw began: thaw it now.
                    self.thaw_queue.push_front(i);
                    self.pump_thaw(now);
                } else {
                    self.frozen_order.push(i);
                }
            }
            Err(errno) => {
                // Not frozen by us (EBUSY: by someone else): it must never be thawed by us.
                self.out.push(Effect::RemoveRecord(i));
                self.states[i] = St::Failed;
                let kind = match errno {
                    Errno::EBUSY => FailKind::AlreadyFrozen,
                    Errno::EOPNOTSUPP => FailKind::Unsupported,
                    _ => FailKind::Error,
                };
                let error = match kind {
                    FailKind::AlreadyFrozen => {
                        "already frozen by another process: reported and left frozen".to_string()
                    }
                    FailKind::Unsupported => "this filesystem does not support freezing".into(),
                    FailKind::Error => format!("FIFREEZE: {}", errno.desc()),
                };
                self.emit(Event::FreezeFailed {
                    mount: i,
                    kind,
                    errno: errno as i32,
                    error,
                });
            }
        }
        if self.phase == Phase::Freezing {
            self.launch_ready();
            self.maybe_settled(now);
        }
    }

    fn maybe_settled(&mut self, now: Instant) {
        if !self.settled_sent
            && self.phase == Phase::Freezing
            && self
                .states
                .iter()
                .all(|s| matches!(s, St::Frozen | St::Failed))
        {
            self.settled_sent = true;
            self.relax_rcu();
            self.emit(Event::AllSettled { unix_ms: 0 });
            // No FIFREEZE was ever issued (every record failed, or no mount): the freeze still
            // ends by itself after the timeout, as the agent expects.
            self.deadline.get_or_insert(now + self.plan.timeout);
        }
    }

    /// Gives [`Effect::RelaxRcu`] once, if RCU was expedited.
    fn relax_rcu(&mut self) {
        if std::mem::take(&mut self.rcu_expedited) {
            self.out.push(Effect::RelaxRcu);
        }
    }

    fn begin_thaw(&mut self, cause: ThawCause, now: Instant) {
        if matches!(self.phase, Phase::Thawing(_)) {
            return;
        }
        self.phase = Phase::Thawing(cause);
        // A FIFREEZE still outstanding at the thaw gains nothing from fast grace periods.
        self.relax_rcu();
        for s in self.states.iter_mut() {
            if *s == St::Idle {
                *s = St::Cancelled;
            }
        }
        // In the reverse of the freeze order; `pump_thaw` starts each as soon as what lies
        // beneath it is thawed.
        self.thaw_queue
            .extend(self.frozen_order.iter().rev().copied());
        self.pump_thaw(now);
    }

    /// When the FITHAW of mount `i` was issued, if it is under way and still holds up the mounts
    /// stacked on it: issued less than [`THAW_STEP_WAIT`] ago (one stuck longer lets them go on).
    fn holding_thaw(&self, i: usize) -> Option<Instant> {
        match (self.states.get(i), self.thaw_started.get(i)) {
            (Some(St::Thawing), Some(&Some(t))) if self.now < t + THAW_STEP_WAIT => Some(t),
            _ => None,
        }
    }

    /// The issue times of every FITHAW that still holds (see [`Core::holding_thaw`]).
    fn holding_thaws(&self) -> impl Iterator<Item = Instant> + '_ {
        (0..self.states.len()).filter_map(|i| self.holding_thaw(i))
    }

    /// Starts the FITHAW of every queued mount whose lower mounts are out of the way: thawed,
    /// never ours, or thawing for longer than the step wait. Independent mounts thaw at once,
    /// in parallel; a mount stacked on another waits for that one's thaw (what lies beneath is
    /// thawed before what sits on it, so that the upper one's thaw can write through it).
    fn pump_thaw(&mut self, now: Instant) {
        let mut waiting = VecDeque::new();
        while let Some(i) = self.thaw_queue.pop_front() {
            if self.states[i] != St::Frozen {
                continue;
            }
            let blocked = self.plan.beneath[i].iter().any(|&j| {
                self.states.get(j) == Some(&St::Frozen) || self.holding_thaw(j).is_some()
            });
            if blocked {
                waiting.push_back(i);
                continue;
            }
            self.states[i] = St::Thawing;
            self.thaw_started[i] = Some(now);
            self.out.push(Effect::Thaw(i));
        }
        self.thaw_queue = waiting;
    }

    fn thaw_returned(&mut self, i: usize, result: Result<(), Errno>, now: Instant) {
        if self.states[i] != St::Thawing {
            return;
        }
        match result {
            // EINVAL: not frozen any more (someone thawed it, e.g. `fsfreeze -u`): done too.
            Ok(()) | Err(Errno::EINVAL) => {
                self.states[i] = St::Thawed;
                self.out.push(Effect::RemoveRecord(i));
                let frozen_us = self.call_started[i]
                    .map(|s| micros(now.saturating_duration_since(s)))
                    .unwrap_or(0);
                self.emit(Event::Thawed {
                    mount: i,
                    frozen_us,
                });
            }
            Err(errno) => {
                // The record stays: `thaw-all` tries again from it.
                self.states[i] = St::ThawFailed;
                self.emit(Event::ThawFailed {
                    mount: i,
                    errno: errno as i32,
                    error: format!("FITHAW: {}", errno.desc()),
                });
            }
        }
        self.thaw_started[i] = None;
        self.pump_thaw(now);
    }

    fn check_timers(&mut self, now: Instant) {
        if let Phase::Flushing { until } = self.phase {
            if now >= until {
                let still: Vec<usize> = (0..self.flushing.len())
                    .filter(|&i| self.flushing[i])
                    .collect();
                self.emit(Event::FlushBudgetExceeded { mounts: still });
                self.start_freezing(now);
            }
        }
        if self.phase == Phase::Freezing && self.deadline.is_some_and(|d| now >= d) {
            self.emit(Event::DeadlineReached { unix_ms: 0 });
            self.begin_thaw(ThawCause::Reason(ThawReason::Deadline), now);
        }
        if !self.thaw_queue.is_empty() {
            // A FITHAW stuck past the step wait lets the mounts stacked on it go on; its
            // answer will still be handled when it comes.
            self.pump_thaw(now);
        }
        self.maybe_complete(now);
    }

    fn maybe_complete(&mut self, now: Instant) {
        let Phase::Thawing(cause) = self.phase else {
            return;
        };
        if self.complete
            || self.holding_thaws().next().is_some()
            || !self.thaw_queue.is_empty()
            || self.states.contains(&St::Frozen)
        {
            return;
        }
        self.complete = true;
        // After the agent's death nobody reads the pipe: the thaw is complete all the same.
        if let ThawCause::Reason(reason) = cause {
            let pending = (0..self.states.len())
                .filter(|&i| matches!(self.states[i], St::Freezing | St::Thawing))
                .collect();
            self.emit(Event::ThawComplete {
                reason,
                unix_ms: 0,
                frozen_us: self
                    .first_freeze
                    .map(|t| micros(now.saturating_duration_since(t))),
                pending,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect as E;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// `n` independent mounts; `stacks` adds (upper, lower) pairs.
    fn plan(n: usize, stacks: &[(usize, usize)], preflush: bool) -> CorePlan {
        let mut beneath = vec![Vec::new(); n];
        for &(upper, lower) in stacks {
            beneath[upper].push(lower);
        }
        CorePlan {
            beneath,
            timeout: TIMEOUT,
            preflush,
            flush_budget: Duration::from_secs(2),
            expedite_rcu: false,
        }
    }

    /// [`plan`] with RCU expedited during the freeze.
    fn expedited(n: usize, stacks: &[(usize, usize)], preflush: bool) -> CorePlan {
        CorePlan {
            expedite_rcu: true,
            ..plan(n, stacks, preflush)
        }
    }

    /// Drives a core as the shell does: records are written at once (and fail for the mounts
    /// in `bad_records`), time is an offset from `t0`.
    struct Harness {
        core: Core,
        t0: Instant,
        now: Instant,
        bad_records: Vec<usize>,
    }

    impl Harness {
        fn new(plan: CorePlan) -> Harness {
            let t0 = Instant::now();
            Harness {
                core: Core::new(plan),
                t0,
                now: t0,
                bad_records: Vec::new(),
            }
        }

        fn at(&mut self, ms: u64) -> &mut Self {
            let t = self.t0 + Duration::from_millis(ms);
            assert!(t >= self.now, "time runs forward");
            self.now = t;
            self
        }

        fn ms(&self, t: Instant) -> u64 {
            t.duration_since(self.t0).as_millis() as u64
        }

        fn feed(&mut self, input: Input) -> Vec<Effect> {
            let mut pending: VecDeque<Effect> = self.core.handle(input, self.now).into();
            let mut all = Vec::new();
            while let Some(e) = pending.pop_front() {
                if let E::WriteRecord(i) = e {
                    let result = if self.bad_records.contains(&i) {
                        Err(RecordFailure {
                            errno: libc::ENOSPC,
                            message: "No space left on device".into(),
                        })
                    } else {
                        Ok(())
                    };
                    let next = Input::RecordWritten { mount: i, result };
                    pending.extend(self.core.handle(next, self.now));
                }
                all.push(e);
            }
            all
        }

        fn tick(&mut self) -> Vec<Effect> {
            self.feed(Input::Tick)
        }

        fn froze(&mut self, i: usize) -> Vec<Effect> {
            self.feed(Input::FreezeReturned {
                mount: i,
                result: Ok(()),
            })
        }

        fn freeze_err(&mut self, i: usize, errno: Errno) -> Vec<Effect> {
            self.feed(Input::FreezeReturned {
                mount: i,
                result: Err(errno),
            })
        }

        fn thawed(&mut self, i: usize) -> Vec<Effect> {
            self.feed(Input::ThawReturned {
                mount: i,
                result: Ok(()),
            })
        }

        fn flushed(&mut self, i: usize) -> Vec<Effect> {
            self.feed(Input::Flushed {
                mount: i,
                result: Ok(()),
                took: Duration::from_millis(3),
            })
        }

        /// Freeze without pre-flush and let every mount's FIFREEZE return, in index order.
        fn frozen_all(&mut self) {
            let fx = self.feed(Input::Freeze);
            let mut todo = freezes(&fx);
            while let Some(i) = todo.pop() {
                let fx = self.froze(i);
                todo.extend(freezes(&fx));
            }
        }
    }

    fn freezes(fx: &[Effect]) -> Vec<usize> {
        fx.iter()
            .filter_map(|e| match e {
                E::Freeze(i) => Some(*i),
                _ => None,
            })
            .collect()
    }

    fn thaws(fx: &[Effect]) -> Vec<usize> {
        fx.iter()
            .filter_map(|e| match e {
                E::Thaw(i) => Some(*i),
                _ => None,
            })
            .collect()
    }

    fn removed(fx: &[Effect]) -> Vec<usize> {
        fx.iter()
            .filter_map(|e| match e {
                E::RemoveRecord(i) => Some(*i),
                _ => None,
            })
            .collect()
    }

    fn events(fx: &[Effect]) -> Vec<Event> {
        fx.iter()
            .filter_map(|e| match e {
                E::Emit(ev) => Some(ev.clone()),
                _ => None,
            })
            .collect()
    }

    fn complete(fx: &[Effect]) -> Option<(ThawReason, Option<u64>, Vec<usize>)> {
        events(fx).into_iter().find_map(|e| match e {
            Event::ThawComplete {
                reason,
                frozen_us,
                pending,
                ..
            } => Some((reason, frozen_us, pending)),
            _ => None,
        })
    }

    fn exits(fx: &[Effect]) -> bool {
        let exit = fx.contains(&E::Exit);
        if exit {
            assert_eq!(fx.last(), Some(&E::Exit), "exit comes last");
            assert!(
                events(fx).contains(&Event::Finished),
                "finished before exit"
            );
        }
        exit
    }

    fn settled(fx: &[Effect]) -> bool {
        events(fx)
            .iter()
            .any(|e| matches!(e, Event::AllSettled { .. }))
    }

    #[test]
    fn independent_mounts_are_recorded_then_frozen_in_parallel() {
        let mut h = Harness::new(plan(3, &[], false));
        let fx = h.feed(Input::Freeze);
        // Each record before its FIFREEZE, all three at once.
        let order: Vec<&Effect> = fx
            .iter()
            .filter(|e| matches!(e, E::WriteRecord(_) | E::Freeze(_)))
            .collect();
        assert_eq!(
            order,
            [
                &E::WriteRecord(0),
                &E::WriteRecord(1),
                &E::WriteRecord(2),
                &E::Freeze(0),
                &E::Freeze(1),
                &E::Freeze(2)
            ]
        );
        let started = events(&fx)
            .iter()
            .filter(|e| matches!(e, Event::FreezeStarted { .. }))
            .count();
        assert_eq!(started, 3);
        assert!(!settled(&fx));
        h.at(5).froze(1);
        h.at(6).froze(0);
        let fx = h.at(7).froze(2);
        assert!(settled(&fx), "every mount has an outcome");
        assert!(!exits(&fx));
    }

    #[test]
    fn a_stacked_mount_freezes_only_after_the_one_above_it_returned() {
        // 0 sits on 1 (0 is above, 1 beneath); 2 is independent.
        let mut h = Harness::new(plan(3, &[(0, 1)], false));
        let fx = h.feed(Input::Freeze);
        assert_eq!(freezes(&fx), [0, 2]);
        assert!(freezes(&h.at(3).froze(2)).is_empty());
        assert_eq!(freezes(&h.at(4).froze(0)), [1]);
        assert!(settled(&h.at(5).froze(1)));
    }

    #[test]
    fn a_failed_upper_mount_lets_the_one_beneath_freeze() {
        let mut h = Harness::new(plan(2, &[(0, 1)], false));
        assert_eq!(freezes(&h.feed(Input::Freeze)), [0]);
        assert_eq!(freezes(&h.at(1).freeze_err(0, Errno::EIO)), [1]);
    }

    #[test]
    fn the_thaw_is_the_exact_reverse_of_the_stack() {
        let mut h = Harness::new(plan(2, &[(0, 1)], false));
        h.frozen_all();
        let fx = h.at(100).feed(Input::Thaw(ThawReason::Host));
        assert_eq!(thaws(&fx), [1], "what lies beneath first, one at a time");
        let fx = h.at(101).thawed(1);
        assert_eq!(thaws(&fx), [0]);
        assert_eq!(removed(&fx), [1]);
        let fx = h.at(102).thawed(0);
        let (reason, frozen_us, pending) = complete(&fx).expect("thaw complete");
        assert_eq!(reason, ThawReason::Host);
        assert_eq!(frozen_us, Some(102_000));
        assert!(pending.is_empty());
        assert!(exits(&fx));
    }

    #[test]
    fn independent_thaws_are_issued_in_the_reverse_of_the_order_fifreezes_returned() {
        let mut h = Harness::new(plan(3, &[], false));
        h.feed(Input::Freeze);
        h.at(1).froze(2);
        h.at(2).froze(0);
        h.at(3).froze(1);
        let mut order = thaws(&h.at(10).feed(Input::Thaw(ThawReason::Host)));
        for _ in 0..2 {
            let last = *order.last().unwrap();
            order.extend(thaws(&h.thawed(last)));
        }
        assert_eq!(order, [1, 0, 2]);
    }

    #[test]
    fn the_deadline_starts_at_the_first_fifreeze_not_at_the_pre_flush() {
        let mut h = Harness::new(plan(2, &[], true));
        let fx = h.feed(Input::Freeze);
        assert_eq!(fx, [E::Flush(0), E::Flush(1)]);
        assert_eq!(h.core.deadline(), None);
        assert_eq!(
            h.core.next_wakeup().map(|t| h.ms(t)),
            Some(2000),
            "flush budget"
        );
        h.at(300).flushed(1);
        let fx = h.at(400).flushed(0);
        assert_eq!(freezes(&fx), [0, 1]);
        assert_eq!(h.core.deadline().map(|t| h.ms(t)), Some(10_400));
        assert_eq!(h.core.next_wakeup().map(|t| h.ms(t)), Some(10_400));
    }

    #[test]
    fn the_flush_budget_lets_the_freeze_go_on_and_names_the_slow_mounts() {
        let mut h = Harness::new(plan(3, &[], true));
        h.feed(Input::Freeze);
        h.at(100).flushed(1);
        // The deadline does not run during the pre-flush: nothing fires at 1999 ms.
        assert!(h.at(1999).tick().is_empty());
        let fx = h.at(2000).tick();
        assert!(events(&fx).contains(&Event::FlushBudgetExceeded { mounts: vec![0, 2] }));
        assert_eq!(freezes(&fx), [0, 1, 2]);
        assert_eq!(h.core.deadline().map(|t| h.ms(t)), Some(12_000));
        // A late flush is still reported, and starts nothing.
        let fx = h.at(2500).flushed(0);
        assert!(freezes(&fx).is_empty());
        assert!(matches!(events(&fx)[..], [Event::Flushed { mount: 0, .. }]));
    }

    #[test]
    fn a_failed_syncfs_is_reported_and_the_freeze_goes_on() {
        let mut h = Harness::new(plan(1, &[], true));
        h.feed(Input::Freeze);
        let fx = h.at(1).feed(Input::Flushed {
            mount: 0,
            result: Err(Errno::EIO),
            took: Duration::from_micros(1500),
        });
        assert_eq!(
            events(&fx)[0],
            Event::Flushed {
                mount: 0,
                duration_us: 1500,
                error: Some(format!("syncfs: {}", Errno::EIO.desc())),
            }
        );
        assert_eq!(freezes(&fx), [0]);
    }

    #[test]
    fn the_deadline_after_every_mount_froze_thaws_them_all() {
        let mut h = Harness::new(plan(2, &[], false));
        h.frozen_all();
        assert!(h.at(9_999).tick().is_empty());
        let fx = h.at(10_000).tick();
        assert!(events(&fx)[0] == Event::DeadlineReached { unix_ms: 0 });
        assert_eq!(thaws(&fx), [0, 1], "at once, the last to return first");
        h.at(10_001).thawed(0);
        let fx = h.at(10_002).thawed(1);
        assert_eq!(complete(&fx).unwrap().0, ThawReason::Deadline);
        assert!(exits(&fx));
    }

    #[test]
    fn the_deadline_before_any_fifreeze_returned_leaves_them_pending() {
        let mut h = Harness::new(plan(2, &[], false));
        h.feed(Input::Freeze);
        let fx = h.at(10_000).tick();
        assert!(thaws(&fx).is_empty());
        let (reason, _, pending) = complete(&fx).unwrap();
        assert_eq!((reason, pending), (ThawReason::Deadline, vec![0, 1]));
        assert!(!exits(&fx), "calls are outstanding");
        assert_eq!(
            h.core.next_wakeup(),
            None,
            "nothing to wait for but the calls"
        );
    }

    #[test]
    fn the_deadline_during_the_freezes_thaws_what_froze_and_cancels_what_waits() {
        // 0 above 1; 2 independent. 2 froze, 0 hangs, 1 waits for 0.
        let mut h = Harness::new(plan(3, &[(0, 1)], false));
        h.feed(Input::Freeze);
        h.at(50).froze(2);
        let fx = h.at(10_000).tick();
        assert_eq!(thaws(&fx), [2]);
        assert!(complete(&fx).is_none(), "2 is not thawed yet");
        let fx = h.at(10_001).thawed(2);
        assert_eq!(complete(&fx).unwrap().2, vec![0], "0 pending; 1 cancelled");
        // The hung FIFREEZE returns long after: thawed the moment it does; 1 is never frozen.
        let fx = h.at(60_000).froze(0);
        assert_eq!(thaws(&fx), [0]);
        assert!(freezes(&fx).is_empty());
        let fx = h.at(60_001).thawed(0);
        assert!(complete(&fx).is_none(), "one thaw complete only");
        assert!(exits(&fx));
    }

    #[test]
    fn a_fifreeze_that_hangs_past_the_deadline_is_thawed_the_moment_it_returns() {
        let mut h = Harness::new(plan(1, &[], false));
        h.feed(Input::Freeze);
        assert!(!exits(&h.at(10_000).tick()));
        let fx = h.at(25_000).froze(0);
        assert!(matches!(
            events(&fx)[0],
            Event::Frozen {
                mount: 0,
                duration_us: 25_000_000
            }
        ));
        assert_eq!(thaws(&fx), [0]);
        assert!(exits(&h.at(25_001).thawed(0)));
    }

    #[test]
    fn a_hung_fifreeze_that_fails_ends_the_watchdog() {
        let mut h = Harness::new(plan(1, &[], false));
        h.feed(Input::Freeze);
        h.at(10_000).tick();
        let fx = h.at(20_000).freeze_err(0, Errno::EIO);
        assert_eq!(removed(&fx), [0]);
        assert!(thaws(&fx).is_empty());
        assert!(exits(&fx));
    }

    #[test]
    fn agent_gone_before_the_freeze_ends_at_once_and_says_nothing_more() {
        let mut h = Harness::new(plan(2, &[], false));
        let fx = h.feed(Input::AgentGone);
        assert_eq!(fx, [E::Emit(Event::Finished), E::Exit]);
        assert!(h.core.is_finished());
        assert!(h.feed(Input::Freeze).is_empty());
    }

    #[test]
    fn agent_gone_during_the_pre_flush_freezes_nothing() {
        let mut h = Harness::new(plan(2, &[], true));
        h.feed(Input::Freeze);
        let fx = h.at(10).feed(Input::AgentGone);
        assert!(exits(&fx), "flushes do not keep the watchdog alive");
        assert!(freezes(&fx).is_empty());
        assert!(h.at(20).flushed(0).is_empty());
    }

    #[test]
    fn agent_gone_during_the_freezes_thaws_each_as_it_returns() {
        let mut h = Harness::new(plan(2, &[(0, 1)], false));
        h.feed(Input::Freeze);
        let fx = h.at(10).feed(Input::AgentGone);
        assert!(
            events(&fx).is_empty(),
            "no thaw_complete on the wire: nobody reads it"
        );
        let fx = h.at(20).froze(0);
        assert_eq!(thaws(&fx), [0]);
        assert!(freezes(&fx).is_empty(), "1 is cancelled");
        let fx = h.at(21).thawed(0);
        assert_eq!(
            events(&fx),
            [
                Event::Thawed {
                    mount: 0,
                    frozen_us: 21_000
                },
                Event::Finished
            ]
        );
        assert!(exits(&fx));
    }

    #[test]
    fn agent_gone_while_frozen_thaws_everything() {
        let mut h = Harness::new(plan(2, &[], false));
        h.frozen_all();
        assert_eq!(thaws(&h.at(100).feed(Input::AgentGone)), [0, 1]);
        assert!(thaws(&h.at(101).thawed(0)).is_empty());
        let fx = h.at(102).thawed(1);
        assert!(complete(&fx).is_none());
        assert!(exits(&fx));
    }

    #[test]
    fn agent_gone_while_thawing_changes_nothing() {
        let mut h = Harness::new(plan(2, &[], false));
        h.frozen_all();
        h.at(100).feed(Input::Thaw(ThawReason::Abort));
        assert!(h.at(101).feed(Input::AgentGone).is_empty());
        h.at(102).thawed(0);
        let fx = h.at(103).thawed(1);
        assert_eq!(complete(&fx).unwrap().0, ThawReason::Abort);
        assert!(exits(&fx));
    }

    #[test]
    fn agent_gone_after_the_thaw_completed_with_a_pending_call_changes_nothing() {
        let mut h = Harness::new(plan(1, &[], false));
        h.feed(Input::Freeze);
        let fx = h.at(5).feed(Input::Thaw(ThawReason::Host));
        assert_eq!(complete(&fx).unwrap().2, vec![0]);
        assert!(h.at(6).feed(Input::AgentGone).is_empty());
        assert_eq!(thaws(&h.at(7).froze(0)), [0]);
        assert!(exits(&h.at(8).thawed(0)));
    }

    #[test]
    fn a_foreign_freeze_is_never_thawed_and_its_record_goes_at_once() {
        let mut h = Harness::new(plan(2, &[], false));
        h.feed(Input::Freeze);
        let fx = h.at(1).freeze_err(0, Errno::EBUSY);
        assert_eq!(removed(&fx), [0]);
        assert!(matches!(
            &events(&fx)[0],
            Event::FreezeFailed { mount: 0, kind: FailKind::AlreadyFrozen, errno, error }
                if *errno == libc::EBUSY && error.contains("already frozen")
        ));
        h.at(2).froze(1);
        let fx = h.at(3).feed(Input::Thaw(ThawReason::Host));
        assert_eq!(thaws(&fx), [1]);
        let fx = h.at(4).thawed(1);
        assert!(thaws(&fx).is_empty());
        assert!(exits(&fx));
    }

    #[test]
    fn an_unsupported_filesystem_is_a_skip_and_other_errors_keep_their_errno() {
        let mut h = Harness::new(plan(2, &[], false));
        h.feed(Input::Freeze);
        let fx = h.at(1).freeze_err(0, Errno::EOPNOTSUPP);
        assert!(matches!(
            &events(&fx)[0],
            Event::FreezeFailed { kind: FailKind::Unsupported, errno, .. }
                if *errno == libc::EOPNOTSUPP
        ));
        let fx = h.at(2).freeze_err(1, Errno::EIO);
        assert_eq!(
            events(&fx)[0],
            Event::FreezeFailed {
                mount: 1,
                kind: FailKind::Error,
                errno: libc::EIO,
                error: format!("FIFREEZE: {}", Errno::EIO.desc()),
            }
        );
        assert!(settled(&fx));
        // Nothing of ours is frozen: the thaw completes at once, with nothing to thaw.
        let fx = h.at(3).feed(Input::Thaw(ThawReason::Host));
        assert!(thaws(&fx).is_empty());
        assert!(exits(&fx));
    }

    #[test]
    fn a_record_that_cannot_be_written_means_no_freeze() {
        let mut h = Harness::new(plan(3, &[(0, 1)], false));
        h.bad_records = vec![0, 2];
        let fx = h.feed(Input::Freeze);
        assert_eq!(
            freezes(&fx),
            [1],
            "only the one recorded; 1 goes as 0 has an outcome"
        );
        let failed: Vec<(usize, i32)> = events(&fx)
            .iter()
            .filter_map(|e| match e {
                Event::FreezeFailed {
                    mount,
                    errno,
                    kind: FailKind::Error,
                    error,
                } if error.contains("cannot record it") => Some((*mount, *errno)),
                _ => None,
            })
            .collect();
        assert_eq!(failed, [(0, libc::ENOSPC), (2, libc::ENOSPC)]);
    }

    #[test]
    fn without_any_fifreeze_the_freeze_still_ends_by_the_deadline() {
        let mut h = Harness::new(plan(1, &[], false));
        h.bad_records = vec![0];
        let fx = h.at(5).feed(Input::Freeze);
        assert!(settled(&fx));
        assert_eq!(h.core.deadline().map(|t| h.ms(t)), Some(10_005));
        let fx = h.at(10_005).tick();
        let (reason, frozen_us, _) = complete(&fx).unwrap();
        assert_eq!((reason, frozen_us), (ThawReason::Deadline, None));
        assert!(exits(&fx));
    }

    #[test]
    fn a_thaw_asked_twice_is_ignored() {
        let mut h = Harness::new(plan(2, &[], false));
        h.frozen_all();
        let fx = h.at(10).feed(Input::Thaw(ThawReason::Host));
        assert_eq!(thaws(&fx), [0, 1]);
        assert!(h.at(11).feed(Input::Thaw(ThawReason::Abort)).is_empty());
        assert!(h.at(12).feed(Input::Unreadable).is_empty());
        h.at(13).thawed(0);
        let fx = h.at(14).thawed(1);
        assert_eq!(complete(&fx).unwrap().0, ThawReason::Host);
    }

    #[test]
    fn an_unreadable_command_thaws_with_reason_error() {
        let mut h = Harness::new(plan(1, &[], false));
        h.frozen_all();
        assert_eq!(thaws(&h.at(3).feed(Input::Unreadable)), [0]);
        assert_eq!(complete(&h.at(4).thawed(0)).unwrap().0, ThawReason::Error);
    }

    #[test]
    fn a_thaw_before_the_freeze_freezes_nothing_ever() {
        let mut h = Harness::new(plan(2, &[], false));
        let fx = h.feed(Input::Thaw(ThawReason::Abort));
        assert_eq!(
            complete(&fx),
            Some((ThawReason::Abort, None, vec![])),
            "nothing was frozen"
        );
        assert!(exits(&fx));
        assert!(h.feed(Input::Freeze).is_empty());
    }

    #[test]
    fn a_second_freeze_is_ignored() {
        let mut h = Harness::new(plan(1, &[], false));
        assert_eq!(freezes(&h.feed(Input::Freeze)), [0]);
        assert!(h.at(1).feed(Input::Freeze).is_empty());
    }

    #[test]
    fn a_stuck_fithaw_lets_the_mount_above_start_after_the_step_wait() {
        // 0 sits on 1, 1 on 2: thawed 2, then 1, then 0; 2's FITHAW gets stuck.
        let mut h = Harness::new(plan(3, &[(0, 1), (1, 2)], false));
        h.frozen_all();
        let fx = h.at(1000).feed(Input::Thaw(ThawReason::Host));
        assert_eq!(thaws(&fx), [2]);
        assert_eq!(h.core.next_wakeup().map(|t| h.ms(t)), Some(1200));
        assert!(thaws(&h.at(1199).tick()).is_empty());
        assert_eq!(thaws(&h.at(1200).tick()), [1]);
        let fx = h.at(1201).thawed(1);
        assert_eq!(thaws(&fx), [0]);
        let fx = h.at(1202).thawed(0);
        let (_, _, pending) = complete(&fx).expect("complete with the stuck one pending");
        assert_eq!(pending, [2]);
        assert!(!exits(&fx));
        let fx = h.at(5000).thawed(2);
        assert!(complete(&fx).is_none());
        assert!(exits(&fx));
    }

    #[test]
    fn independent_mounts_thaw_at_once_and_a_stacked_one_after_the_one_beneath() {
        // 0 sits on 1; 2 stands alone.
        let mut h = Harness::new(plan(3, &[(0, 1)], false));
        h.frozen_all();
        let fx = h.at(10).feed(Input::Thaw(ThawReason::Host));
        let mut first = thaws(&fx);
        first.sort_unstable();
        assert_eq!(
            first,
            [1, 2],
            "the lower one and the independent one together"
        );
        assert!(
            thaws(&h.at(11).thawed(2)).is_empty(),
            "0 waits for 1, not for 2"
        );
        assert_eq!(thaws(&h.at(12).thawed(1)), [0]);
        let fx = h.at(13).thawed(0);
        assert_eq!(complete(&fx).unwrap().0, ThawReason::Host);
        assert!(exits(&fx));
    }

    #[test]
    fn fithaw_einval_counts_as_thawed() {
        let mut h = Harness::new(plan(1, &[], false));
        h.frozen_all();
        h.at(10).feed(Input::Thaw(ThawReason::Host));
        let fx = h.at(11).feed(Input::ThawReturned {
            mount: 0,
            result: Err(Errno::EINVAL),
        });
        assert_eq!(removed(&fx), [0]);
        assert!(matches!(events(&fx)[0], Event::Thawed { mount: 0, .. }));
        assert!(exits(&fx));
    }

    #[test]
    fn a_failed_fithaw_is_reported_and_its_record_kept() {
        let mut h = Harness::new(plan(2, &[], false));
        h.frozen_all();
        assert_eq!(thaws(&h.at(10).feed(Input::Thaw(ThawReason::Host))), [0, 1]);
        let fx = h.at(11).feed(Input::ThawReturned {
            mount: 0,
            result: Err(Errno::EIO),
        });
        assert!(removed(&fx).is_empty(), "thaw-all retries from the record");
        assert_eq!(
            events(&fx)[0],
            Event::ThawFailed {
                mount: 0,
                errno: libc::EIO,
                error: format!("FITHAW: {}", Errno::EIO.desc()),
            }
        );
        assert!(thaws(&fx).is_empty());
        assert!(exits(&h.at(12).thawed(1)));
    }

    #[test]
    fn finished_only_once_nothing_is_outstanding() {
        let mut h = Harness::new(plan(3, &[], false));
        h.feed(Input::Freeze);
        h.at(1).froze(0);
        // 1 and 2 hang; the host thaws; 0 is thawed, 1 and 2 pending.
        h.at(2).feed(Input::Thaw(ThawReason::Host));
        let fx = h.at(3).thawed(0);
        assert_eq!(complete(&fx).unwrap().2, [1, 2]);
        assert!(!exits(&fx));
        let fx = h.at(4).freeze_err(1, Errno::EIO);
        assert!(!exits(&fx), "2 still outstanding");
        let fx = h.at(5).froze(2);
        assert_eq!(thaws(&fx), [2]);
        assert!(!exits(&fx), "2 frozen until its thaw returns");
        assert!(exits(&h.at(6).thawed(2)));
        assert!(h.at(7).tick().is_empty(), "nothing after exit");
    }

    #[test]
    fn a_fifreeze_returning_during_a_thaw_is_thawed_at_once() {
        let mut h = Harness::new(plan(3, &[], false));
        h.feed(Input::Freeze);
        h.at(1).froze(0);
        h.at(2).froze(1);
        assert_eq!(thaws(&h.at(3).feed(Input::Thaw(ThawReason::Host))), [1, 0]);
        assert_eq!(
            thaws(&h.at(4).froze(2)),
            [2],
            "the late one, without waiting"
        );
        h.at(5).thawed(1);
        h.at(6).thawed(2);
        assert!(exits(&h.at(7).thawed(0)));
    }

    #[test]
    fn answers_for_unknown_mounts_or_calls_not_made_are_ignored() {
        let mut h = Harness::new(plan(1, &[], false));
        assert!(h.froze(0).is_empty(), "no FIFREEZE was issued");
        assert!(h.froze(7).is_empty());
        assert!(h.thawed(0).is_empty());
        assert!(h.flushed(3).is_empty());
        h.frozen_all();
        assert!(h.froze(0).is_empty(), "answered twice");
    }

    #[test]
    fn durations_come_from_the_times_fed_in() {
        let mut h = Harness::new(plan(1, &[], false));
        h.at(100).feed(Input::Freeze);
        let fx = h.at(130).froze(0);
        assert!(matches!(
            events(&fx)[..],
            [
                Event::Frozen {
                    mount: 0,
                    duration_us: 30_000
                },
                Event::AllSettled { .. }
            ]
        ));
        h.at(1100).feed(Input::Thaw(ThawReason::Host));
        let fx = h.at(1150).thawed(0);
        assert_eq!(
            events(&fx)[0],
            Event::Thawed {
                mount: 0,
                frozen_us: 1_050_000
            }
        );
        assert_eq!(complete(&fx).unwrap().1, Some(1_050_000));
    }

    #[test]
    fn rcu_is_expedited_right_before_the_first_fifreeze_and_relaxed_when_the_last_returns() {
        // 0 sits on 1: 1 freezes only after 0 returned, and RCU stays expedited until then.
        let mut h = Harness::new(expedited(3, &[(0, 1)], false));
        let fx = h.feed(Input::Freeze);
        let first = fx.iter().position(|e| matches!(e, E::Freeze(_))).unwrap();
        assert_eq!(
            fx.iter().position(|e| *e == E::ExpediteRcu),
            Some(first - 2)
        );
        assert_eq!(fx.iter().filter(|e| **e == E::ExpediteRcu).count(), 1);
        assert_eq!(freezes(&fx), vec![0, 2]);
        assert!(!h.froze(2).contains(&E::RelaxRcu));
        let fx = h.froze(0);
        assert_eq!(freezes(&fx), vec![1]);
        assert!(!fx.contains(&E::RelaxRcu) && !fx.contains(&E::ExpediteRcu));
        let fx = h.froze(1);
        let relax = fx.iter().position(|e| *e == E::RelaxRcu).unwrap();
        assert!(
            relax
                < fx.iter()
                    .position(|e| matches!(e, E::Emit(Event::AllSettled { .. })))
                    .unwrap()
        );
        // Nothing more about RCU through the thaw.
        let mut fx = h.feed(Input::Thaw(ThawReason::Host));
        for i in [1, 0, 2] {
            fx.extend(h.thawed(i));
        }
        assert!(!fx.iter().any(|e| matches!(e, E::ExpediteRcu | E::RelaxRcu)));
        assert!(h.core.is_finished());
    }

    #[test]
    fn rcu_is_relaxed_at_the_thaw_when_a_fifreeze_hangs() {
        let mut h = Harness::new(expedited(2, &[], true));
        let fx = h.feed(Input::Freeze);
        assert!(!fx.contains(&E::ExpediteRcu), "not during the pre-flush");
        h.flushed(0);
        assert!(h.flushed(1).contains(&E::ExpediteRcu));
        h.froze(0);
        // Mount 1's FIFREEZE hangs; the deadline thaws mount 0 and relaxes RCU first.
        let fx = h.at(10_000).tick();
        let relax = fx.iter().position(|e| *e == E::RelaxRcu).unwrap();
        assert!(relax < fx.iter().position(|e| *e == E::Thaw(0)).unwrap());
        h.thawed(0);
        assert!(!h.froze(1).contains(&E::RelaxRcu), "relaxed once");
    }

    #[test]
    fn rcu_is_never_touched_without_a_fifreeze_or_when_not_asked() {
        let mut h = Harness::new(expedited(2, &[], false));
        h.bad_records = vec![0, 1];
        let fx = h.feed(Input::Freeze);
        assert!(!fx.iter().any(|e| matches!(e, E::ExpediteRcu | E::RelaxRcu)));
        let mut h = Harness::new(expedited(2, &[], false));
        let fx = h.feed(Input::AgentGone);
        assert!(!fx.iter().any(|e| matches!(e, E::ExpediteRcu | E::RelaxRcu)));
        let mut h = Harness::new(plan(2, &[], false));
        let mut fx = h.feed(Input::Freeze);
        fx.extend(h.froze(0));
        fx.extend(h.froze(1));
        assert!(!fx.iter().any(|e| matches!(e, E::ExpediteRcu | E::RelaxRcu)));
    }

    #[test]
    fn an_empty_plan_settles_at_once() {
        let mut h = Harness::new(plan(0, &[], true));
        let fx = h.feed(Input::Freeze);
        assert!(settled(&fx));
        assert!(exits(&h.feed(Input::Thaw(ThawReason::Host))));
    }

    /// A tiny xorshift, so that the property test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random plans, answers and commands against the invariants: every mount whose FIFREEZE
    /// succeeded is thawed exactly once; nothing is thawed that we did not freeze; a mount's
    /// FIFREEZE starts only once every mount above it has an outcome, and of two stacked mounts
    /// frozen before the thaw began the lower one's thaw starts first; with prompt calls, no
    /// thaw starts later than the deadline plus the step waits; the watchdog always ends.
    #[test]
    fn random_runs_keep_the_invariants() {
        for seed in 1..=400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let n = 1 + rng.below(5) as usize;
            let mut stacks = Vec::new();
            for upper in 0..n {
                for lower in upper + 1..n {
                    if rng.below(4) == 0 {
                        stacks.push((upper, lower));
                    }
                }
            }
            let preflush = rng.below(2) == 0;
            let expedite = rng.below(2) == 0;
            let mut p = plan(n, &stacks, preflush);
            p.expedite_rcu = expedite;
            let mut h = Harness::new(p);
            // RCU: expedited at most once, before the first FIFREEZE; relaxed once after, no
            // later than the moment no FIFREEZE is outstanding while freezing.
            let (mut rcu_on, mut rcu_ons, mut rcu_offs, mut freezes_issued) = (false, 0, 0, 0);
            h.bad_records = (0..n).filter(|_| rng.below(8) == 0).collect();
            let prompt = rng.below(2) == 0;

            // Outstanding calls, answered in random order at random times.
            let mut calls: Vec<Effect> = Vec::new();
            let mut frozen_ok = vec![false; n];
            let mut thaw_started = vec![0u32; n];
            let mut thawed_ok = vec![false; n];
            let mut thaw_at: Vec<Option<u64>> = vec![None; n];
            // Frozen before any thaw began: those are thawed in the exact reverse of the stack.
            let mut frozen_before_thaw = vec![false; n];
            let mut thaw_began = false;
            let mut answered = vec![false; n];
            let mut t = 0u64;
            let mut fx = h.feed(Input::Freeze);
            let command_at = rng.below(15_000);
            let mut commanded = false;
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 10_000, "seed {seed}: the watchdog never ends");
                for e in &fx {
                    match e {
                        E::ExpediteRcu => {
                            assert!(expedite, "seed {seed}: expedited without being asked");
                            assert_eq!(freezes_issued, 0, "seed {seed}: expedited late");
                            rcu_on = true;
                            rcu_ons += 1;
                        }
                        E::RelaxRcu => {
                            assert!(rcu_on, "seed {seed}: relaxed what was not expedited");
                            rcu_on = false;
                            rcu_offs += 1;
                        }
                        _ => {}
                    }
                    match e {
                        E::Emit(Event::DeadlineReached { .. }) => thaw_began = true,
                        E::Emit(Event::AllSettled { .. }) => {
                            assert!(!rcu_on, "seed {seed}: settled with RCU still expedited")
                        }
                        E::Freeze(lower) => {
                            freezes_issued += 1;
                            assert_eq!(
                                rcu_on,
                                expedite && !thaw_began,
                                "seed {seed}: FIFREEZE with RCU expedited {rcu_on}"
                            );
                            for &(upper, l) in &stacks {
                                if l == *lower {
                                    assert!(
                                        answered[upper] || h.bad_records.contains(&upper),
                                        "seed {seed}: {lower} frozen before {upper} above it"
                                    );
                                }
                            }
                            calls.push(e.clone());
                        }
                        E::Flush(_) => calls.push(e.clone()),
                        E::Thaw(i) => {
                            assert!(frozen_ok[*i], "seed {seed}: thaw of {i}, not frozen by us");
                            thaw_started[*i] += 1;
                            thaw_at[*i] = Some(t);
                            calls.push(e.clone());
                        }
                        _ => {}
                    }
                }
                if thaw_began {
                    assert!(!rcu_on, "seed {seed}: RCU still expedited during the thaw");
                }
                if h.core.is_finished() {
                    break;
                }
                // Next: a call returns, the command comes, or the timer fires.
                let wake = h.core.next_wakeup().map(|w| h.ms(w));
                let step = if prompt {
                    1 + rng.below(300)
                } else {
                    1 + rng.below(20_000)
                };
                let mut next_t = t + step;
                if let Some(w) = wake {
                    next_t = next_t.min(w);
                }
                if !commanded && command_at <= next_t && command_at >= t {
                    next_t = command_at;
                }
                if calls.is_empty() && wake.is_none() && commanded {
                    panic!("seed {seed}: stuck with nothing outstanding");
                }
                t = next_t.max(t);
                h.at(t);
                fx = if !commanded && t == command_at {
                    commanded = true;
                    thaw_began = true;
                    let input = match rng.below(4) {
                        0 => Input::AgentGone,
                        1 => Input::Unreadable,
                        _ => Input::Thaw(ThawReason::Host),
                    };
                    h.feed(input)
                } else if Some(t) == wake || calls.is_empty() {
                    if calls.is_empty() && wake.is_none() {
                        commanded = true;
                        thaw_began = true;
                        h.feed(Input::Thaw(ThawReason::Host))
                    } else {
                        h.tick()
                    }
                } else {
                    let call = calls.swap_remove(rng.below(calls.len() as u64) as usize);
                    match call {
                        E::Flush(i) => h.flushed(i),
                        E::Freeze(i) => {
                            answered[i] = true;
                            if rng.below(6) == 0 {
                                h.freeze_err(i, Errno::EBUSY)
                            } else {
                                frozen_ok[i] = true;
                                frozen_before_thaw[i] = !thaw_began;
                                h.froze(i)
                            }
                        }
                        E::Thaw(i) => {
                            thawed_ok[i] = true;
                            h.thawed(i)
                        }
                        _ => unreachable!(),
                    }
                };
            }
            assert!(!rcu_on, "seed {seed}: RCU left expedited at the end");
            assert_eq!(
                rcu_ons, rcu_offs,
                "seed {seed}: expedited {rcu_ons}, relaxed {rcu_offs}"
            );
            assert_eq!(
                rcu_ons,
                usize::from(expedite && freezes_issued > 0),
                "seed {seed}: expedited {rcu_ons} times for {freezes_issued} FIFREEZEs"
            );
            for i in 0..n {
                if frozen_ok[i] {
                    assert_eq!(thaw_started[i], 1, "seed {seed}: mount {i} thawed once");
                    assert!(thawed_ok[i], "seed {seed}: mount {i} left frozen");
                } else {
                    assert_eq!(thaw_started[i], 0, "seed {seed}: {i} never ours");
                }
            }
            for &(upper, lower) in &stacks {
                if !(frozen_before_thaw[upper] && frozen_before_thaw[lower]) {
                    continue;
                }
                if let (Some(tu), Some(tl)) = (thaw_at[upper], thaw_at[lower]) {
                    assert!(
                        tl <= tu,
                        "seed {seed}: {lower} beneath {upper} thawed first"
                    );
                }
            }
            if prompt {
                if let Some(d) = h.core.deadline().map(|d| h.ms(d)) {
                    let step = THAW_STEP_WAIT.as_millis() as u64;
                    let bound = d + step * n as u64 + 300 * n as u64;
                    for at in thaw_at.iter().flatten() {
                        assert!(*at <= bound, "seed {seed}: a thaw at {at} ms, deadline {d}");
                    }
                }
            }
        }
    }
}
