//! A watchdog that is ready before the request.
//!
//! Starting a watchdog costs a fork, an exec of this binary, its dynamic loading and an
//! `mlockall`: a few milliseconds, on the path from the host's request to the first FIFREEZE.
//! The daemon keeps one spare watchdog process started ahead: it has locked its memory and waits
//! for a plan on its stdin, using no CPU. A freeze takes it and hands it the plan; the next
//! spare is started once that freeze has ended (never during one: no process start competes with
//! the frozen window). A spare whose stdin closes, because the daemon exited or died, exits.
//!
//! `quiesce freeze` (one freeze, then exit) keeps no spare and starts its watchdog on demand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};

use tokio::process::Child;

/// Starts a watchdog process (`exe watchdog`): it locks its memory and waits for a plan on
/// stdin (and exits when stdin closes before one came). Needs a tokio runtime.
pub fn spawn_watchdog(exe: &Path) -> std::io::Result<Child> {
    tokio::process::Command::new(exe)
        .arg("watchdog")
        // One malloc arena: each thread's own arena would reserve 64 MiB of address space.
        .env("MALLOC_ARENA_MAX", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The watchdog must outlive us if we die: that is its whole point.
        .kill_on_drop(false)
        .spawn()
}

/// The daemon's spare watchdog.
#[derive(Debug)]
pub struct Standby {
    exe: PathBuf,
    spare: Mutex<Option<Child>>,
}

impl Standby {
    /// No spare yet: [`Standby::fill`] starts one.
    pub fn new(exe: &Path) -> Standby {
        Standby {
            exe: exe.to_path_buf(),
            spare: Mutex::new(None),
        }
    }

    /// Starts a spare unless a live one is there. Needs a tokio runtime (the child's pipes).
    pub fn fill(&self) {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = spare.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return;
            }
        }
        *spare = match spawn_watchdog(&self.exe) {
            Ok(child) => Some(child),
            Err(e) => {
                // Not fatal: the next freeze starts its watchdog on demand, as it always could.
                tracing::warn!("cannot start the spare watchdog: {e}");
                None
            }
        };
    }

    /// The spare, if one is there and alive; the next one comes with [`Standby::fill`].
    pub fn take(&self) -> Option<Child> {
        let mut child = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        matches!(child.try_wait(), Ok(None)).then_some(child)
    }
}
