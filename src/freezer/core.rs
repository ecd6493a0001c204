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
//! - the thaw goes in the exact reverse of the order in which FIFREEZEs returned; a FITHAW that
//!   does not return within [`THAW_STEP_WAIT`] lets the next one start; a FIFREEZE that returns
//!   after the thaw began is thawed the moment it returns;
//! - EBUSY (frozen by someone else) is never thawed and its record goes at once; EOPNOTSUPP is a
//!   skip; EINVAL from FITHAW means "not frozen any more", a thaw like any other;
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
}

impl CorePlan {
    /// The core's part of the pipe protocol's plan.
    pub fn of(plan: &Plan) -> CorePlan {
        CorePlan {
            beneath: plan.mounts.iter().map(|m| m.beneath.clone()).collect(),
            timeout: Duration::from_millis(plan.timeout_ms),
            preflush: plan.preflush,
            flush_budget: Duration::from_millis(plan.flush_budget_ms),
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
    thaw_queue: VecDeque<usize>,
    thaw_inflight: Option<(usize, Instant)>,
    phase: Phase,
    first_freeze: Option<Instant>,
    deadline: Option<Instant>,
    settled_sent: bool,
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
            thaw_inflight: None,
            phase: Phase::Ready,
            first_freeze: None,
            deadline: None,
            settled_sent: false,
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
        let step = self.thaw_inflight.map(|(_, t)| t + THAW_STEP_WAIT);
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
            self.emit(Event::AllSettled { unix_ms: 0 });
            // No FIFREEZE was ever issued (every record failed, or no mount): the freeze still
            // ends by itself after the timeout, as the agent expects.
            self.deadline.get_or_insert(now + self.plan.timeout);
        }
    }

    fn begin_thaw(&mut self, cause: ThawCause, now: Instant) {
        if matches!(self.phase, Phase::Thawing(_)) {
            return;
        }
        self.phase = Phase::Thawing(cause);
        for s in self.states.iter_mut() {
            if *s == St::Idle {
                *s = St::Cancelled;
            }
        }
        // Exact reverse of the freeze order: what lies beneath is thawed before what sits on it.
        self.thaw_queue
            .extend(self.frozen_order.iter().rev().copied());
        self.pump_thaw(now);
    }

    fn pump_thaw(&mut self, now: Instant) {
        if self.thaw_inflight.is_some() {
            return;
        }
        while let Some(i) = self.thaw_queue.pop_front() {
            if self.states[i] != St::Frozen {
                continue;
            }
            self.states[i] = St::Thawing;
            self.out.push(Effect::Thaw(i));
            self.thaw_inflight = Some((i, now));
            return;
        }
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
        if self.thaw_inflight.is_some_and(|(j, _)| j == i) {
            self.thaw_inflight = None;
        }
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
        if let Some((_, started)) = self.thaw_inflight {
            if now >= started + THAW_STEP_WAIT {
                // That FITHAW is stuck; its answer will still be handled when it comes.
                self.thaw_inflight = None;
                self.pump_thaw(now);
            }
        }
        self.maybe_complete(now);
    }

    fn maybe_complete(&mut self, now: Instant) {
        let Phase::Thawing(cause) = self.phase else {
            return;
        };
        if self.complete
            || self.thaw_inflight.is_some()
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
