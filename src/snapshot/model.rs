//! The Snapshot object of the contract, as reported to hosts.

use std::path::PathBuf;

use serde::Serialize;

use crate::freezer::protocol::escaped_path;
use crate::snapshot::lifecycle::{Consistency, Problem, Requested, State, ThawReason};

/// One target mount.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MountReport {
    #[serde(with = "escaped_path")]
    pub path: PathBuf,
    pub fstype: String,
    /// Frozen by us at this moment.
    pub frozen: bool,
    /// Why it did not freeze (or thaw), if so.
    pub error: Option<String>,
}

/// One hook run (pre or post), in the order they ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookReport {
    pub name: String,
    pub phase: &'static str,
    /// `null` when it was killed or could not be started.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// The last 4 KiB of stdout+stderr (and the runner's error, if any).
    pub output: String,
}

/// The Snapshot object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub request_id: Option<String>,
    pub state: State,
    pub requested_consistency: Requested,
    pub consistency: Option<Consistency>,
    pub created_at: String,
    pub frozen_at: Option<String>,
    pub thawed_at: Option<String>,
    pub finished_at: Option<String>,
    pub freeze_deadline: Option<String>,
    pub frozen_ms: Option<u64>,
    pub thaw_reason: Option<ThawReason>,
    pub mounts: Vec<MountReport>,
    pub hooks: Vec<HookReport>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Snapshot {
    /// The status line for a snapshot: its progress while it runs, then its result, e.g.
    /// `last snapshot 2026-11-22T10:00:00Z: application, frozen 41 ms`.
    pub fn status_line(&self) -> String {
        let s = self;
        let frozen = s
            .frozen_ms
            .map(|ms| format!(", frozen {ms} ms"))
            .unwrap_or_default();
        if !s.state.is_end() {
            return format!("snapshot {} in progress: {}", s.id, s.state.as_str());
        }
        let when = s.finished_at.as_deref().unwrap_or(&s.created_at);
        let consistency = s
            .consistency
            .map(|c| c.as_str())
            .unwrap_or("no consistency");
        let outcome = match s.state {
            State::Succeeded => String::new(),
            other => format!(" ({})", other.as_str()),
        };
        let errors = match s.errors.len() {
            0 => String::new(),
            1 => format!(", 1 error: {}", s.errors[0].reason),
            n => format!(", {n} errors, first: {}", s.errors[0].reason),
        };
        format!("last snapshot {when}: {consistency}{outcome}{frozen}{errors}")
    }
}
