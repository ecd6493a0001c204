//! The watchdog: a small process (this same binary, `quiesce watchdog`) that owns a freeze.
//!
//! It does the FIFREEZE calls itself, each on a thread of its own, and keeps the deadline on its
//! main thread, so that no single stuck call, and no death of the agent, can leave a filesystem
//! frozen: it thaws at the deadline, when told, or when its stdin reaches end-of-file (the agent
//! died, even by SIGKILL), and a FIFREEZE that hangs in the kernel is thawed the moment it returns
//! while the other mounts are thawed on time. It locks its memory, asks the OOM killer to spare
//! it, ignores the terminal's and systemd's stop signals (it ends by itself once everything is
//! thawed) and does no disk IO but the records in `state_dir` (a tmpfs).

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};

use super::ioctl;
use super::protocol::{Command, Event, FailKind, Plan, ThawReason};
use super::records::{self, Records};

/// How long one FITHAW may take before the next mount's thaw starts anyway.
const THAW_STEP_WAIT: Duration = Duration::from_millis(200);
/// Stack of the freeze/flush/thaw threads: they make one syscall each. Small, as it is locked.
const WORKER_STACK: usize = 64 * 1024;

/// Entry point of `quiesce watchdog`: reads the plan from stdin, then runs until everything it
/// froze is thawed. Returns the process exit code.
pub fn main() -> i32 {
    // Ctrl-C in a terminal reaches the whole process group, and systemd's stop reaches the
    // whole cgroup: neither may kill the process that holds the thaw. Blocked signals stay
    // blocked in every thread spawned afterwards.
    let mut blocked = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        blocked.add(sig);
    }
    let _ = blocked.thread_block();

    let (out_tx, out_rx) = mpsc::channel::<Event>();
    let writer = spawn_event_writer(out_rx);
    let code = run(out_tx);
    // Let the last events reach the agent, but never hang on a pipe nobody reads.
    let _ = writer.recv_timeout(Duration::from_secs(1));
    code
}

/// Writes events on their own thread, so the coordinator never blocks on a full pipe.
fn spawn_event_writer(rx: mpsc::Receiver<Event>) -> mpsc::Receiver<()> {
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("events".into())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let stdout = io::stdout();
            for ev in rx {
                let mut out = stdout.lock();
                let line = serde_json::to_string(&ev).unwrap_or_default();
                // EPIPE once the agent is dead: keep draining, nothing else to do.
                let _ = writeln!(out, "{line}").and_then(|_| out.flush());
            }
            let _ = done_tx.send(());
        })
        .expect("spawn the event writer thread");
    done_rx
}

fn run(out: mpsc::Sender<Event>) -> i32 {
    let stdin = io::stdin();
    let mut first = String::new();
    let plan: Plan = match stdin.lock().read_line(&mut first) {
        Ok(0) => return 0,
        Ok(_) => match serde_json::from_str(&first) {
            Ok(plan) => plan,
            Err(e) => {
                let _ = out.send(Event::SetupFailed {
                    error: format!("unreadable plan: {e}"),
                });
                return 2;
            }
        },
        Err(e) => {
            let _ = out.send(Event::SetupFailed {
                error: format!("reading the plan: {e}"),
            });
            return 2;
        }
    };

    let (fds, warnings) = match setup(&plan) {
        Ok(ok) => ok,
        Err(error) => {
            let _ = out.send(Event::SetupFailed { error });
            return 1;
        }
    };
    let (tx, rx) = mpsc::channel();
    spawn_stdin_reader(tx.clone());
    let mut coord = Coordinator::new(plan, fds, tx, out);
    coord.emit(Event::Ready { warnings });
    coord.run(rx);
    0
}

/// Opens every mount point (before any freeze) and checks it is the planned filesystem; locks
/// memory and protects the process from the OOM killer.
fn setup(plan: &Plan) -> Result<(Vec<Arc<OwnedFd>>, Vec<String>), String> {
    let mut fds = Vec::with_capacity(plan.mounts.len());
    for m in &plan.mounts {
        let (fd, identity) = records::open_identified(&m.path)
            .map_err(|e| format!("opening {}: {e}", m.path.display()))?;
        if identity != m.identity {
            return Err(format!(
                "{} no longer holds the planned filesystem",
                m.path.display()
            ));
        }
        fds.push(Arc::new(fd));
    }
    Records::new(&plan.state_dir)
        .ensure_dir()
        .map_err(|e| format!("state_dir {}: {e}", plan.state_dir.display()))?;
    let mut warnings = Vec::new();
    use nix::sys::mman::{mlockall, MlockAllFlags};
    // MCL_ONFAULT locks pages as they are touched rather than populating every mapping (the
    // whole binary, each thread's malloc arena reservation): the pages the watchdog uses stay
    // resident, at a fraction of the memory. Kernels before 4.4 refuse it: lock everything.
    let all = MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE;
    let on_fault = MlockAllFlags::from_bits_retain(libc::MCL_ONFAULT);
    if let Err(e) = mlockall(all | on_fault).or_else(|_| mlockall(all)) {
        warnings.push(format!("watchdog: mlockall: {}", e.desc()));
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        warnings.push(format!("watchdog: oom_score_adj: {e}"));
    }
    Ok((fds, warnings))
}

fn spawn_stdin_reader(tx: mpsc::Sender<Msg>) {
    std::thread::Builder::new()
        .name("commands".into())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let msg = match line {
                    Ok(l) if l.trim().is_empty() => continue,
                    Ok(l) => Msg::Command(serde_json::from_str(&l).map_err(|e| e.to_string())),
                    Err(_) => break,
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            let _ = tx.send(Msg::AgentGone);
        })
        .expect("spawn the command reader thread");
}

enum Msg {
    Command(Result<Command, String>),
    AgentGone,
    Flushed(usize, Result<(), Errno>, Duration),
    FreezeDone(usize, Result<(), Errno>, Instant),
    ThawDone(usize, Result<(), Errno>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Idle,
    Freezing,
    Frozen,
    Failed,
    /// Never frozen: the thaw came first.
    Cancelled,
    Thawing,
    Thawed,
    ThawFailed,
}

impl St {
    /// An outcome that lets the mounts beneath proceed.
    fn resolved(self) -> bool {
        !matches!(self, St::Idle | St::Freezing)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ready,
    Flushing { until: Instant },
    Freezing,
    Thawing(ThawReason),
}

/// Thaws, while unwinding from a panic, whatever the flags say is frozen.
struct EmergencyThaw {
    fds: Vec<Arc<OwnedFd>>,
    frozen: Arc<Vec<AtomicBool>>,
}

impl Drop for EmergencyThaw {
    fn drop(&mut self) {
        for (fd, flag) in self.fds.iter().zip(self.frozen.iter()).rev() {
            if flag.swap(false, Ordering::SeqCst) {
                let _ = ioctl::thaw(fd.as_fd());
            }
        }
    }
}

struct Coordinator {
    plan: Plan,
    fds: Vec<Arc<OwnedFd>>,
    frozen_flags: Arc<Vec<AtomicBool>>,
    states: Vec<St>,
    /// Mounts stacked directly or indirectly on each mount (they must freeze first).
    above: Vec<Vec<usize>>,
    flushing: Vec<bool>,
    call_started: Vec<Option<Instant>>,
    frozen_order: Vec<usize>,
    thaw_queue: VecDeque<usize>,
    thaw_inflight: Option<(usize, Instant)>,
    phase: Phase,
    first_freeze: Option<Instant>,
    deadline: Option<Instant>,
    settled_sent: bool,
    complete_sent: bool,
    records: Records,
    tx: mpsc::Sender<Msg>,
    out: mpsc::Sender<Event>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn spawn_worker(name: &str, f: impl FnOnce() + Send + 'static) {
    // A failed spawn (out of threads) is reported by the closure's absence: the coordinator
    // treats such a mount as still pending, and the deadline covers it.
    let _ = std::thread::Builder::new()
        .name(name.into())
        .stack_size(WORKER_STACK)
        .spawn(f);
}

impl Coordinator {
    fn new(
        plan: Plan,
        fds: Vec<Arc<OwnedFd>>,
        tx: mpsc::Sender<Msg>,
        out: mpsc::Sender<Event>,
    ) -> Self {
        let n = plan.mounts.len();
        let mut above = vec![Vec::new(); n];
        for (i, m) in plan.mounts.iter().enumerate() {
            for &j in &m.beneath {
                if j < n && j != i {
                    above[j].push(i);
                }
            }
        }
        Coordinator {
            records: Records::new(&plan.state_dir),
            frozen_flags: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            states: vec![St::Idle; n],
            above,
            flushing: vec![false; n],
            call_started: vec![None; n],
            frozen_order: Vec::new(),
            thaw_queue: VecDeque::new(),
            thaw_inflight: None,
            phase: Phase::Ready,
            first_freeze: None,
            deadline: None,
            settled_sent: false,
            complete_sent: false,
            plan,
            fds,
            tx,
            out,
        }
    }

    fn emit(&self, ev: Event) {
        let _ = self.out.send(ev);
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let _guard = EmergencyThaw {
            fds: self.fds.clone(),
            frozen: self.frozen_flags.clone(),
        };
        loop {
            let msg = match self.next_wakeup() {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => Some(Msg::AgentGone),
                },
                None => Some(rx.recv().unwrap_or(Msg::AgentGone)),
            };
            if let Some(msg) = msg {
                self.handle(msg);
            }
            self.check_timers();
            if self.finished() {
                self.emit(Event::Finished);
                return;
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
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

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Command(Ok(Command::Freeze)) => {
                if self.phase == Phase::Ready {
                    self.start();
                }
            }
            Msg::Command(Ok(Command::Thaw { reason })) => self.begin_thaw(reason),
            // A command we cannot read is a bug on the agent's side: the safe reading is "thaw".
            Msg::Command(Err(_)) => self.begin_thaw(ThawReason::Error),
            Msg::AgentGone => self.begin_thaw(ThawReason::AgentGone),
            Msg::Flushed(i, result, took) => {
                self.flushing[i] = false;
                self.emit(Event::Flushed {
                    mount: i,
                    duration_us: micros(took),
                    error: result.err().map(|e| format!("syncfs: {}", e.desc())),
                });
                if matches!(self.phase, Phase::Flushing { .. }) && !self.flushing.contains(&true) {
                    self.start_freezing();
                }
            }
            Msg::FreezeDone(i, result, returned) => self.freeze_done(i, result, returned),
            Msg::ThawDone(i, result) => self.thaw_done(i, result),
        }
    }

    fn check_timers(&mut self) {
        let now = Instant::now();
        if let Phase::Flushing { until } = self.phase {
            if now >= until {
                let still: Vec<usize> = (0..self.flushing.len())
                    .filter(|&i| self.flushing[i])
                    .collect();
                self.emit(Event::FlushBudgetExceeded { mounts: still });
                self.start_freezing();
            }
        }
        if self.phase == Phase::Freezing && self.deadline.is_some_and(|d| now >= d) {
            self.emit(Event::DeadlineReached { unix_ms: unix_ms() });
            self.begin_thaw(ThawReason::Deadline);
        }
        if let Some((_, started)) = self.thaw_inflight {
            if now >= started + THAW_STEP_WAIT {
                // That FITHAW is stuck; its answer will still be handled when it comes.
                self.thaw_inflight = None;
                self.pump_thaw();
            }
        }
        self.maybe_complete();
    }

    fn start(&mut self) {
        if self.plan.preflush && !self.plan.mounts.is_empty() {
            let until = Instant::now() + Duration::from_millis(self.plan.flush_budget_ms);
            self.phase = Phase::Flushing { until };
            for i in 0..self.fds.len() {
                self.flushing[i] = true;
                let fd = self.fds[i].clone();
                let tx = self.tx.clone();
                spawn_worker("syncfs", move || {
                    let t = Instant::now();
                    let r = nix::unistd::syncfs(fd.as_fd());
                    let _ = tx.send(Msg::Flushed(i, r, t.elapsed()));
                });
            }
        } else {
            self.start_freezing();
        }
    }

    fn start_freezing(&mut self) {
        self.phase = Phase::Freezing;
        let now = Instant::now();
        self.first_freeze = Some(now);
        self.deadline = Some(now + Duration::from_millis(self.plan.timeout_ms));
        self.launch_ready();
        self.maybe_settled();
    }

    /// Starts the FIFREEZE of every idle mount whose upper mounts have all finished theirs.
    fn launch_ready(&mut self) {
        for i in 0..self.states.len() {
            if self.states[i] == St::Idle
                && self.above[i].iter().all(|&j| self.states[j].resolved())
            {
                self.launch(i);
            }
        }
    }

    fn launch(&mut self, i: usize) {
        let mount = &self.plan.mounts[i];
        // Never freeze what could not be recorded: the record is what thaws it after a SIGKILL.
        if let Err(e) = self.records.write(mount, std::process::id(), unix_ms()) {
            self.states[i] = St::Failed;
            self.emit(Event::FreezeFailed {
                mount: i,
                kind: FailKind::Error,
                errno: e.raw_os_error().unwrap_or(0),
                error: format!("not frozen: cannot record it in state_dir: {e}"),
            });
            return;
        }
        self.states[i] = St::Freezing;
        self.call_started[i] = Some(Instant::now());
        self.emit(Event::FreezeStarted {
            mount: i,
            unix_ms: unix_ms(),
        });
        let fd = self.fds[i].clone();
        let flags = self.frozen_flags.clone();
        let tx = self.tx.clone();
        spawn_worker("fifreeze", move || {
            let r = ioctl::freeze(fd.as_fd());
            if r.is_ok() {
                flags[i].store(true, Ordering::SeqCst);
            }
            let _ = tx.send(Msg::FreezeDone(i, r, Instant::now()));
        });
    }

    fn freeze_done(&mut self, i: usize, result: Result<(), Errno>, returned: Instant) {
        let took = self.call_started[i].map(|s| returned.saturating_duration_since(s));
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
                    self.pump_thaw();
                } else {
                    self.frozen_order.push(i);
                }
            }
            Err(errno) => {
                // Not frozen by us (EBUSY: by someone else): it must never be thawed by us.
                let _ = self.records.remove(self.plan.mounts[i].dev);
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
            self.maybe_settled();
        }
        self.maybe_complete();
    }

    fn maybe_settled(&mut self) {
        if !self.settled_sent
            && self.phase == Phase::Freezing
            && self
                .states
                .iter()
                .all(|s| matches!(s, St::Frozen | St::Failed))
        {
            self.settled_sent = true;
            self.emit(Event::AllSettled { unix_ms: unix_ms() });
        }
    }

    fn begin_thaw(&mut self, reason: ThawReason) {
        if matches!(self.phase, Phase::Thawing(_)) {
            return;
        }
        self.phase = Phase::Thawing(reason);
        for s in self.states.iter_mut() {
            if *s == St::Idle {
                *s = St::Cancelled;
            }
        }
        // Exact reverse of the freeze order: what lies beneath is thawed before what sits on it.
        self.thaw_queue
            .extend(self.frozen_order.iter().rev().copied());
        self.pump_thaw();
        self.maybe_complete();
    }

    fn pump_thaw(&mut self) {
        if self.thaw_inflight.is_some() {
            return;
        }
        while let Some(i) = self.thaw_queue.pop_front() {
            if self.states[i] != St::Frozen {
                continue;
            }
            self.states[i] = St::Thawing;
            let fd = self.fds[i].clone();
            let tx = self.tx.clone();
            spawn_worker("fithaw", move || {
                let _ = tx.send(Msg::ThawDone(i, ioctl::thaw(fd.as_fd())));
            });
            self.thaw_inflight = Some((i, Instant::now()));
            return;
        }
    }

    fn thaw_done(&mut self, i: usize, result: Result<(), Errno>) {
        match result {
            // EINVAL: not frozen any more (someone thawed it, e.g. `fsfreeze -u`): done too.
            Ok(()) | Err(Errno::EINVAL) => {
                self.frozen_flags[i].store(false, Ordering::SeqCst);
                self.states[i] = St::Thawed;
                let _ = self.records.remove(self.plan.mounts[i].dev);
                let frozen_us = self.call_started[i]
                    .map(|s| micros(s.elapsed()))
                    .unwrap_or(0);
                self.emit(Event::Thawed {
                    mount: i,
                    frozen_us,
                });
            }
            Err(errno) => {
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
        self.pump_thaw();
        self.maybe_complete();
    }

    fn maybe_complete(&mut self) {
        let Phase::Thawing(reason) = self.phase else {
            return;
        };
        if self.complete_sent || self.thaw_inflight.is_some() || !self.thaw_queue.is_empty() {
            return;
        }
        if self.states.contains(&St::Frozen) {
            return;
        }
        self.complete_sent = true;
        let pending = (0..self.states.len())
            .filter(|&i| matches!(self.states[i], St::Freezing | St::Thawing))
            .collect();
        self.emit(Event::ThawComplete {
            reason,
            unix_ms: unix_ms(),
            frozen_us: self.first_freeze.map(|t| micros(t.elapsed())),
            pending,
        });
    }

    fn finished(&self) -> bool {
        self.complete_sent
            && !self
                .states
                .iter()
                .any(|s| matches!(s, St::Freezing | St::Thawing | St::Frozen))
    }
}
