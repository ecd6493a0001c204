//! The watchdog: a small process (this same binary, `quiesce watchdog`) that owns a freeze.
//!
//! This is the IO shell around [`super::core`], which makes every decision (order, deadline,
//! thaw). The shell reads commands on a thread of its own, does each syscall (syncfs, FIFREEZE,
//! FITHAW) on a thread of its own, writes events on a thread of its own, and runs one loop on
//! its main thread: wait for an input until the core's next wakeup, hand it to the core with the
//! current time, carry out the effects. So no stuck call and no death of the agent can hold up a
//! thaw: it happens at the deadline, when told, or when stdin reaches end-of-file (the agent
//! died, even by SIGKILL), and a FIFREEZE that hangs in the kernel is thawed the moment it
//! returns. The process locks its memory, asks the OOM killer to spare it, ignores the
//! terminal's and systemd's stop signals (it ends by itself once everything is thawed) and does
//! no disk IO but the records in `state_dir` (a tmpfs). An unwinding guard thaws what is frozen
//! if the process panics.

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};

use super::core::{Core, CorePlan, Effect, Input, RecordFailure};
use super::protocol::{Command, Event, Plan, Rcu, SetupProblem};
use super::rcu::{self, Knobs};
use super::recovery::{self, Records};
use crate::sys::ioctl;
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
    // Before the plan: a spare watchdog (see `standby`) is ready when the request comes.
    let warnings = lock_in_memory();

    let (out_tx, out_rx) = mpsc::channel::<Event>();
    let writer = spawn_event_writer(out_rx);
    let code = run(out_tx, warnings);
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

fn run(out: mpsc::Sender<Event>, warnings: Vec<String>) -> i32 {
    let stdin = io::stdin();
    let mut first = String::new();
    let plan: Plan = match stdin.lock().read_line(&mut first) {
        Ok(0) => return 0,
        Ok(_) => match serde_json::from_str(&first) {
            Ok(plan) => plan,
            Err(e) => {
                let _ = out.send(Event::SetupFailed {
                    problem: SetupProblem::Plan {
                        error: format!("unreadable plan: {e}"),
                    },
                });
                return 2;
            }
        },
        Err(e) => {
            let _ = out.send(Event::SetupFailed {
                problem: SetupProblem::Plan {
                    error: format!("reading the plan: {e}"),
                },
            });
            return 2;
        }
    };

    let fds = match setup(&plan) {
        Ok(ok) => ok,
        Err(problem) => {
            let _ = out.send(Event::SetupFailed { problem });
            return 1;
        }
    };
    let (tx, rx) = mpsc::channel();
    spawn_stdin_reader(tx.clone());
    let mut shell = Shell::new(plan, fds, tx, out);
    shell.emit(Event::Ready { warnings });
    shell.run(rx);
    0
}

/// Locks the process's memory and protects it from the OOM killer; returns what could not be
/// done.
fn lock_in_memory() -> Vec<String> {
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
    warnings
}

/// Opens every mount point (before any freeze) and checks it is the planned filesystem, and
/// the records' folder.
fn setup(plan: &Plan) -> Result<Vec<Arc<OwnedFd>>, SetupProblem> {
    let errno = |e: &io::Error| e.raw_os_error().unwrap_or(0);
    let mut fds = Vec::with_capacity(plan.mounts.len());
    for m in &plan.mounts {
        let (fd, identity) =
            recovery::open_identified(&m.path).map_err(|e| SetupProblem::Open {
                path: m.path.clone(),
                errno: errno(&e),
            })?;
        if identity != m.identity {
            return Err(SetupProblem::Replaced {
                path: m.path.clone(),
            });
        }
        fds.push(Arc::new(fd));
    }
    Records::new(&plan.state_dir)
        .ensure_dir()
        .map_err(|e| SetupProblem::StateDir {
            path: plan.state_dir.clone(),
            errno: errno(&e),
        })?;
    Ok(fds)
}

fn spawn_stdin_reader(tx: mpsc::Sender<Input>) {
    std::thread::Builder::new()
        .name("commands".into())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let input = match line {
                    Ok(l) if l.trim().is_empty() => continue,
                    Ok(l) => match serde_json::from_str(&l) {
                        Ok(Command::Freeze) => Input::Freeze,
                        Ok(Command::Thaw { reason }) => Input::Thaw(reason),
                        Err(_) => Input::Unreadable,
                    },
                    Err(_) => break,
                };
                if tx.send(input).is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::AgentGone);
        })
        .expect("spawn the command reader thread");
}

/// Thaws, while unwinding from a panic, whatever the flags say is frozen, and puts RCU grace
/// periods back if we expedited them.
struct EmergencyThaw {
    fds: Vec<Arc<OwnedFd>>,
    frozen: Arc<Vec<AtomicBool>>,
    rcu: Arc<AtomicBool>,
    records: Records,
}

impl Drop for EmergencyThaw {
    fn drop(&mut self) {
        if self.rcu.swap(false, Ordering::SeqCst) {
            let _ = rcu::relax(&Knobs::system(), || self.records.remove_rcu());
        }
        for (fd, flag) in self.fds.iter().zip(self.frozen.iter()).rev() {
            if flag.swap(false, Ordering::SeqCst) {
                let _ = ioctl::thaw(fd.as_fd());
            }
        }
    }
}

fn spawn_worker(name: &str, f: impl FnOnce() + Send + 'static) {
    // A failed spawn (out of threads) is reported by the closure's absence: the core treats
    // such a mount as still pending, and the deadline covers it.
    let _ = std::thread::Builder::new()
        .name(name.into())
        .stack_size(WORKER_STACK)
        .spawn(f);
}

/// The core and everything it cannot touch: descriptors, records, threads, clocks, pipes.
struct Shell {
    core: Core,
    plan: Plan,
    fds: Vec<Arc<OwnedFd>>,
    /// Set by a FIFREEZE thread on success, cleared by the FITHAW thread: what the emergency
    /// guard thaws.
    frozen_flags: Arc<Vec<AtomicBool>>,
    /// We set `rcu_expedited` to 1 and have not put it back yet.
    rcu_set: Arc<AtomicBool>,
    records: Records,
    /// The core's deadline on the wall clock, computed once when it is set.
    deadline_unix_ms: Option<u64>,
    tx: mpsc::Sender<Input>,
    out: mpsc::Sender<Event>,
}

impl Shell {
    fn new(
        plan: Plan,
        fds: Vec<Arc<OwnedFd>>,
        tx: mpsc::Sender<Input>,
        out: mpsc::Sender<Event>,
    ) -> Self {
        let n = plan.mounts.len();
        Shell {
            core: Core::new(CorePlan::of(&plan)),
            records: Records::new(&plan.state_dir),
            frozen_flags: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            rcu_set: Arc::new(AtomicBool::new(false)),
            deadline_unix_ms: None,
            plan,
            fds,
            tx,
            out,
        }
    }

    fn emit(&self, ev: Event) {
        let _ = self.out.send(ev);
    }

    fn run(&mut self, rx: mpsc::Receiver<Input>) {
        let _guard = EmergencyThaw {
            fds: self.fds.clone(),
            frozen: self.frozen_flags.clone(),
            rcu: self.rcu_set.clone(),
            records: self.records.clone(),
        };
        loop {
            // The shell holds a sender itself, so the channel never disconnects; if it did,
            // nobody could tell us anything any more: that is the agent gone.
            let input = match self.core.next_wakeup() {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(input) => input,
                    Err(mpsc::RecvTimeoutError::Timeout) => Input::Tick,
                    Err(mpsc::RecvTimeoutError::Disconnected) => Input::AgentGone,
                },
                None => rx.recv().unwrap_or(Input::AgentGone),
            };
            if self.feed(input) {
                return;
            }
        }
    }

    /// Hands one input to the core and carries out the effects; true on [`Effect::Exit`].
    fn feed(&mut self, input: Input) -> bool {
        let mut effects: VecDeque<Effect> = self.core.handle(input, Instant::now()).into();
        while let Some(effect) = effects.pop_front() {
            match effect {
                Effect::Flush(i) => {
                    let fd = self.fds[i].clone();
                    let tx = self.tx.clone();
                    spawn_worker("syncfs", move || {
                        let t = Instant::now();
                        let result = nix::unistd::syncfs(fd.as_fd());
                        let took = t.elapsed();
                        let _ = tx.send(Input::Flushed {
                            mount: i,
                            result,
                            took,
                        });
                    });
                }
                Effect::WriteRecord(i) => {
                    let result = self
                        .records
                        .write(
                            &self.plan.mounts[i],
                            std::process::id(),
                            crate::duration::unix_ms_now(),
                        )
                        .map_err(|e| RecordFailure {
                            errno: e.raw_os_error().unwrap_or(0),
                            message: e.to_string(),
                        });
                    let next = Input::RecordWritten { mount: i, result };
                    effects.extend(self.core.handle(next, Instant::now()));
                }
                Effect::Freeze(i) => {
                    let fd = self.fds[i].clone();
                    let flags = self.frozen_flags.clone();
                    let tx = self.tx.clone();
                    spawn_worker("fifreeze", move || {
                        let result = ioctl::freeze(fd.as_fd());
                        if result.is_ok() {
                            flags[i].store(true, Ordering::SeqCst);
                        }
                        let _ = tx.send(Input::FreezeReturned { mount: i, result });
                    });
                }
                Effect::Thaw(i) => {
                    let fd = self.fds[i].clone();
                    let flags = self.frozen_flags.clone();
                    let tx = self.tx.clone();
                    spawn_worker("fithaw", move || {
                        let result = ioctl::thaw(fd.as_fd());
                        if matches!(result, Ok(()) | Err(Errno::EINVAL)) {
                            flags[i].store(false, Ordering::SeqCst);
                        }
                        let _ = tx.send(Input::ThawReturned { mount: i, result });
                    });
                }
                Effect::RemoveRecord(i) => {
                    let _ = self.records.remove(self.plan.mounts[i].dev);
                }
                Effect::ExpediteRcu => {
                    let records = &self.records;
                    let (rcu, error) = rcu::expedite(
                        &Knobs::system(),
                        || records.write_rcu(std::process::id(), crate::duration::unix_ms_now()),
                        || {
                            let _ = records.remove_rcu();
                        },
                    );
                    self.rcu_set.store(rcu == Rcu::Expedited, Ordering::SeqCst);
                    self.emit(Event::RcuExpedite { rcu, error });
                }
                Effect::RelaxRcu => {
                    if self.rcu_set.swap(false, Ordering::SeqCst) {
                        if let Err(error) =
                            rcu::relax(&Knobs::system(), || self.records.remove_rcu())
                        {
                            self.emit(Event::RcuRelaxFailed { error });
                        }
                    }
                }
                Effect::Emit(mut ev) => {
                    self.stamp(&mut ev);
                    self.emit(ev);
                }
                Effect::Exit => return true,
            }
        }
        false
    }

    /// Fills in the wall-clock fields that the core leaves at 0.
    fn stamp(&mut self, ev: &mut Event) {
        match ev {
            Event::FreezeStarted {
                unix_ms: at,
                deadline_unix_ms,
                ..
            } => {
                *at = crate::duration::unix_ms_now();
                *deadline_unix_ms = self.deadline_unix_ms().unwrap_or(0);
            }
            Event::AllSettled { unix_ms: at }
            | Event::DeadlineReached { unix_ms: at }
            | Event::ThawComplete { unix_ms: at, .. } => *at = crate::duration::unix_ms_now(),
            _ => {}
        }
    }

    /// The monotonic deadline as the wall clock reads it now, computed once.
    fn deadline_unix_ms(&mut self) -> Option<u64> {
        if self.deadline_unix_ms.is_none() {
            let deadline = self.core.deadline()?;
            let (wall, mono) = (SystemTime::now(), Instant::now());
            let at = match deadline.checked_duration_since(mono) {
                Some(ahead) => wall + ahead,
                None => wall - mono.duration_since(deadline),
            };
            self.deadline_unix_ms = Some(crate::duration::unix_ms(at));
        }
        self.deadline_unix_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_deadline_is_derived_from_the_core_and_stamped_on_events() {
        // No mounts: nothing is opened or frozen, but the core still keeps its deadline.
        let plan = Plan {
            mounts: Vec::new(),
            timeout_ms: 10_000,
            preflush: false,
            flush_budget_ms: 0,
            state_dir: std::env::temp_dir(),
            expedite_rcu: false,
        };
        let (tx, _rx) = mpsc::channel();
        let (out, events) = mpsc::channel();
        let mut shell = Shell::new(plan, Vec::new(), tx, out);
        let before = crate::duration::unix_ms_now();
        assert!(!shell.feed(Input::Freeze));
        let settled = events.try_recv().unwrap();
        assert!(matches!(settled, Event::AllSettled { unix_ms } if unix_ms >= before));
        let mut ev = Event::FreezeStarted {
            mount: 0,
            unix_ms: 0,
            deadline_unix_ms: 0,
        };
        shell.stamp(&mut ev);
        let Event::FreezeStarted {
            unix_ms: at,
            deadline_unix_ms,
            ..
        } = ev
        else {
            unreachable!()
        };
        assert!(at >= before);
        assert!(
            (before + 10_000..before + 11_000).contains(&deadline_unix_ms),
            "{deadline_unix_ms} vs {before}"
        );
        // Computed once: every event of the freeze carries the same deadline.
        assert_eq!(shell.deadline_unix_ms(), Some(deadline_unix_ms));
    }
}
