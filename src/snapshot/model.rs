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

/// The front door a snapshot was ordered through (contract: `"channel"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The HTTP API.
    #[default]
    Http,
    /// The QEMU guest agent protocol.
    Qga,
    /// `quiesce freeze` on the command line (its report is printed, never served).
    Cli,
}

/// The Snapshot object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub request_id: Option<String>,
    pub channel: Channel,
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
