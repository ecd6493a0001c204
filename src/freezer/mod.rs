//! The freezer: mount discovery, the storage-stack freeze order, and the freeze itself, done by
//! a watchdog process that never leaves a filesystem frozen.
//!
//! - [`mountinfo`] parses the mount table; [`select`] applies the config's selection rules;
//!   [`stack`] orders the targets along the storage stack.
//! - The freeze itself runs in a watchdog process, in two parts: [`core`] decides everything
//!   (order, deadline, thaw) as a pure state machine, events and the time in, effects out;
//!   [`watchdog`] is its IO shell (threads, the clock, FIFREEZE/FITHAW through [`ioctl`], the
//!   only unsafe code, the records, the pipe). [`protocol`] is the pipe between the agent and
//!   the watchdog, and [`session`] the agent's side of it; [`standby`] keeps a watchdog
//!   process ready before the request, in the daemon.
//! - [`recovery`] keeps in `state_dir` what is frozen, for `thaw-all` and the start-up recovery;
//!   [`rcu`] expedites RCU grace periods for exactly the freeze (and is recorded there too).

pub mod core;
pub mod mountinfo;
pub mod protocol;
pub mod rcu;
pub mod recovery;
pub mod select;
pub mod session;
pub mod stack;
pub mod standby;
pub mod watchdog;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mountinfo::{DevNum, MountInfo};
use protocol::{Plan, PlanMount};
use select::{Rules, SkipReason};

/// What discovery found: the targets in freeze order, and why the other mounts are skipped.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Targets in freeze order (thaw is the exact reverse).
    pub targets: Vec<MountInfo>,
    /// For each target, the indices (into `targets`) of the targets beneath it.
    pub beneath: Vec<Vec<usize>>,
    pub skipped: Vec<(MountInfo, SkipReason)>,
}

/// Why discovery or planning failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading /proc/self/mountinfo: {0}")]
    MountTable(#[source] std::io::Error),
    #[error(transparent)]
    Select(#[from] select::SelectError),
    #[error("cannot open mount point {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state_dir {state_dir} is on {mount}, which would be frozen: put state_dir on a tmpfs such as /run")]
    StateDirFrozen { state_dir: PathBuf, mount: PathBuf },
    #[error("state_dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the mount table and applies the rules; `requested` is a snapshot request's `mounts`.
pub fn discover(rules: &Rules, requested: Option<&[PathBuf]>) -> Result<Discovery, PlanError> {
    let table = mountinfo::read_self().map_err(PlanError::MountTable)?;
    discover_in(&table, rules, requested, &stack::Sysfs)
}

/// [`discover`] over a given mount table and block topology.
pub fn discover_in(
    table: &[MountInfo],
    rules: &Rules,
    requested: Option<&[PathBuf]>,
    topo: &dyn stack::Topology,
) -> Result<Discovery, PlanError> {
    let selection = select::select(table, rules, requested, &select::is_block_device_node)?;
    let st_devs: Vec<Option<DevNum>> = selection
        .targets
        .iter()
        .map(|m| {
            std::fs::metadata(&m.mount_point)
                .ok()
                .map(|md| DevNum::from_dev_t(md.dev()))
        })
        .collect();
    let order = stack::order(&selection.targets, &st_devs, topo);
    // Renumber `beneath` from mountinfo positions to freeze-order positions.
    let mut position = vec![0; selection.targets.len()];
    for (pos, &i) in order.freeze_order.iter().enumerate() {
        position[i] = pos;
    }
    let targets = order
        .freeze_order
        .iter()
        .map(|&i| selection.targets[i].clone())
        .collect();
    let beneath = order
        .freeze_order
        .iter()
        .map(|&i| {
            let mut b: Vec<usize> = order.beneath[i].iter().map(|&j| position[j]).collect();
            b.sort_unstable();
            b
        })
        .collect();
    Ok(Discovery {
        targets,
        beneath,
        skipped: selection.skipped,
    })
}

/// How a freeze is to run.
#[derive(Debug, Clone)]
pub struct FreezeOptions {
    pub timeout: Duration,
    pub preflush: bool,
    pub flush_budget: Duration,
    pub state_dir: PathBuf,
    /// `freeze.expedite_rcu`.
    pub expedite_rcu: bool,
}

/// Turns a discovery into the watchdog's plan: identifies every target, and refuses a
/// `state_dir` that lies on a target (its records must stay writable while frozen).
pub fn plan(discovery: &Discovery, opts: &FreezeOptions) -> Result<Plan, PlanError> {
    let state_err = |source| PlanError::StateDir {
        path: opts.state_dir.clone(),
        source,
    };
    recovery::Records::new(&opts.state_dir)
        .ensure_dir()
        .map_err(state_err)?;
    let state_dev = std::fs::metadata(&opts.state_dir).map_err(state_err)?.dev();
    let mut mounts = Vec::with_capacity(discovery.targets.len());
    for (i, m) in discovery.targets.iter().enumerate() {
        let (_, identity) =
            recovery::open_identified(&m.mount_point).map_err(|source| PlanError::Open {
                path: m.mount_point.clone(),
                source,
            })?;
        if identity.st_dev == state_dev || DevNum::from_dev_t(state_dev) == m.dev {
            return Err(PlanError::StateDirFrozen {
                state_dir: opts.state_dir.clone(),
                mount: m.mount_point.clone(),
            });
        }
        mounts.push(PlanMount {
            path: m.mount_point.clone(),
            fstype: m.fstype.clone(),
            dev: m.dev,
            identity,
            beneath: discovery.beneath[i].clone(),
        });
    }
    Ok(Plan {
        mounts,
        timeout_ms: opts.timeout.as_millis() as u64,
        preflush: opts.preflush,
        flush_budget_ms: opts.flush_budget.as_millis() as u64,
        state_dir: opts.state_dir.clone(),
        expedite_rcu: opts.expedite_rcu,
    })
}

/// Shown for a path in messages and reports (escaped when not printable).
pub fn show(path: &Path) -> String {
    protocol::escaped_path::display(path.as_os_str())
}
