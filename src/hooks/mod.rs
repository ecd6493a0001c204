//! Hook execution: runs an operator's pre/post command and reports what happened.
//!
//! Each run goes through a helper process, this same binary started as `quiesce hook-exec`
//! (`exec`), which the async side (`runner`) drives over pipes:
//!
//! - The helper makes itself a child subreaper and starts the hook's argv directly (the kernel
//!   honours the shebang; nothing is run through `sh`), in a process group of its own, with stdin
//!   /dev/null and stdout+stderr both on the helper's stderr, so the runner gets one ordered stream.
//! - At the timeout, or when the runner cancels (SIGTERM to the helper, or the runner's end of
//!   the helper's stdin closing because the agent died or dropped the run), every descendant gets
//!   SIGTERM, then SIGKILL after a grace, and all are reaped before the helper reports. Because
//!   it is a subreaper, processes that left the group (setsid, double fork) are reparented to it
//!   and still found by their parent chain in /proc.
//! - The daemon itself never becomes a subreaper: tokio reaps only the children it spawned, by
//!   pid, so reparented orphans would pile up as zombies or race with it. Confining the subreaper
//!   and its `waitpid(-1)` to a process with no other children keeps both correct.
//! - When the hook exits by itself in time, the processes it left running are left alone (a post
//!   hook may start a service on purpose) and only counted in `stray_processes`. The runner stops
//!   reading the output shortly after the helper exits, even if such a process still holds the
//!   pipe; it keeps draining that pipe in the background, so the process does not get SIGPIPE.
//! - If the helper itself dies (OOM killer, a stray `kill -9`), the run fails and the runner
//!   SIGKILLs the hook's group, whose id the helper printed right after the spawn; a helper
//!   killed before that line leaves the hook to init, and descendants outside the group are
//!   out of reach either way.
//! - On a systemd machine each run is a transient service of its own
//!   ([`crate::systemd::dbus::service`]): systemd starts the helper (`--wait-go`) with the
//!   runner's three pipes as its stdio, outside the daemon's sandbox; the runner then sends the
//!   go byte, so the hook's whole tree is born in the unit's cgroup. When systemd refuses the
//!   service, the runner starts the helper itself and puts it in a transient scope
//!   ([`crate::systemd::dbus::scope`]) before the go byte. Either way, when the tree had to be
//!   stopped (timeout, cancellation) or the helper was lost, the runner SIGKILLs whatever is
//!   left in the cgroup (`KillUnit(all)`), including processes the helper could no longer see.
//!   Without a bus or systemd the go byte is sent at once and the process-group/subreaper path
//!   above is all there is.
//! - An exec error (missing file, missing interpreter, no execute permission, not executable
//!   format) is a failure carrying the OS error, never a success.

mod capture;
pub mod exec;
mod procfs;
mod protocol;
mod runner;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use runner::run_hook;

/// How much of a hook's combined output is kept for the report (the last bytes).
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// Default time between SIGTERM and SIGKILL when a hook's process tree is stopped.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// Which side of the freeze a hook command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the freeze.
    Pre,
    /// After the thaw.
    Post,
}

impl Phase {
    /// The contract's spelling: `pre` or `post` (also the value of `QUIESCE_PHASE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hook command to run.
#[derive(Debug, Clone)]
pub struct HookSpec {
    /// The hook's configured name (logs, `QUIESCE_HOOK`).
    pub name: String,
    /// The snapshot this run belongs to (the name of its systemd unit).
    pub snapshot_id: String,
    /// Pre or post.
    pub phase: Phase,
    /// Executable path and arguments, executed directly (no shell).
    pub argv: Vec<String>,
    /// The hook's configured `env`, added to the agent's environment.
    pub env: BTreeMap<String, String>,
    /// The `QUIESCE_*` variables; they win over `env` (see [`quiesce_vars`]).
    pub vars: Vec<(String, String)>,
    /// From the start of the command until its whole process tree is stopped.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL when the tree is stopped.
    pub kill_grace: Duration,
}

impl HookSpec {
    /// A spec with no extra environment and the default kill grace.
    pub fn new(name: &str, phase: Phase, argv: Vec<String>, timeout: Duration) -> Self {
        HookSpec {
            name: name.to_owned(),
            snapshot_id: String::new(),
            phase,
            argv,
            env: BTreeMap::new(),
            vars: Vec::new(),
            timeout,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }
}

/// The `QUIESCE_*` variables of the contract for one hook run; a post hook without a thaw
/// reason (nothing was frozen) gets `QUIESCE_THAW_REASON=none`.
pub fn quiesce_vars(
    snapshot_id: &str,
    phase: Phase,
    hook: &str,
    thaw_reason: Option<&str>,
) -> Vec<(String, String)> {
    let mut vars = vec![
        ("QUIESCE_SNAPSHOT_ID".to_owned(), snapshot_id.to_owned()),
        ("QUIESCE_PHASE".to_owned(), phase.as_str().to_owned()),
        ("QUIESCE_HOOK".to_owned(), hook.to_owned()),
    ];
    if phase == Phase::Post {
        let reason = thaw_reason.unwrap_or("none");
        vars.push(("QUIESCE_THAW_REASON".to_owned(), reason.to_owned()));
    }
    vars
}

/// What one hook run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookOutcome {
    /// Exit code of the hook's main process, when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal that ended the hook's main process, when one did.
    pub signal: Option<i32>,
    /// The timeout expired and the process tree was stopped.
    pub timed_out: bool,
    /// The run was cancelled and the process tree was stopped.
    pub cancelled: bool,
    /// From the start of the command until it ended (including the stop, when there was one).
    pub duration: Duration,
    /// The last [`OUTPUT_TAIL_BYTES`] of combined stdout+stderr, lossy UTF-8.
    pub output: String,
    /// Total bytes of output seen (more than `output` holds when it was cut).
    pub output_bytes: u64,
    /// Why the command could not run or its run could not be observed (exec error with the OS
    /// error, helper failure); `None` when it ran.
    pub error: Option<String>,
    /// Processes that were sent SIGTERM or SIGKILL when the tree was stopped.
    pub signalled: usize,
    /// Descendants still running when the run ended: left behind by a hook that exited by
    /// itself, or (rarely) processes that did not die even from SIGKILL in time.
    pub stray_processes: usize,
}

impl HookOutcome {
    /// Exit 0, in time, not cancelled, no error.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.cancelled && self.error.is_none()
    }

    /// A one-line reason for a failed run, for the report's errors or warnings; `None` on
    /// success.
    pub fn failure(&self) -> Option<String> {
        if self.succeeded() {
            return None;
        }
        Some(if let Some(e) = &self.error {
            e.clone()
        } else if self.timed_out {
            format!(
                "timed out (its processes were stopped after {:.1} s)",
                self.duration.as_secs_f64()
            )
        } else if self.cancelled {
            "cancelled".to_owned()
        } else if let Some(code) = self.exit_code {
            format!("exited with code {code}")
        } else if let Some(sig) = self.signal {
            format!("killed by signal {sig}")
        } else {
            "ended without an exit status".to_owned()
        })
    }
}
