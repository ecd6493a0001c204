//! The pipe protocol between the agent and its watchdog process: one JSON object per line.
//!
//! The agent writes a [`Plan`] and then [`Command`]s to the watchdog's stdin; the watchdog
//! answers with [`Event`]s on its stdout. The watchdog treats end-of-file on stdin as the
//! agent's death.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mountinfo::DevNum;

/// What makes "the same filesystem" at a path: the directory's st_dev and the statvfs fsid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsIdentity {
    pub st_dev: u64,
    pub fsid: u64,
}

/// One mount the watchdog is to freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanMount {
    #[serde(with = "escaped_path")]
    pub path: PathBuf,
    pub fstype: String,
    /// The superblock's device number from mountinfo (the record's name in `state_dir`).
    pub dev: DevNum,
    pub identity: FsIdentity,
    /// Indices of the plan's mounts that lie beneath this one: frozen after it, thawed before.
    pub beneath: Vec<usize>,
}

/// Everything the watchdog needs, sent once as the first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Freeze order; the thaw follows the stack in reverse (`beneath` first), independent
    /// mounts at once.
    pub mounts: Vec<PlanMount>,
    /// Thaw by itself this long after the first FIFREEZE call started.
    pub timeout_ms: u64,
    /// syncfs every mount (in parallel) before the first FIFREEZE.
    pub preflush: bool,
    /// The most the pre-flush may delay the first FIFREEZE.
    pub flush_budget_ms: u64,
    /// Where a record of each mount is written before its FIFREEZE (a tmpfs).
    #[serde(with = "escaped_path")]
    pub state_dir: PathBuf,
    /// Expedite RCU grace periods (`/sys/kernel/rcu_expedited`) from the first FIFREEZE until
    /// the last one returned, when nobody else set them (`freeze.expedite_rcu`).
    #[serde(default)]
    pub expedite_rcu: bool,
}

/// What became of RCU grace periods for a freeze (see [`super::rcu`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rcu {
    /// We set `rcu_expedited` to 1 for the freeze, and put it back to 0 after.
    Expedited,
    /// It was 1 already (someone else's setting): the freeze was expedited, the knob untouched.
    AlreadyExpedited,
    /// Not expedited: `rcu_normal` is 1 (normal grace periods forced), or the knob could not be
    /// read or set. The freeze went on at the normal pace.
    Unavailable,
    /// Not expedited: `freeze.expedite_rcu` is false, or nothing was frozen.
    Off,
}

impl Rcu {
    /// The metric's and the journal's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Rcu::Expedited => "expedited",
            Rcu::AlreadyExpedited => "already_expedited",
            Rcu::Unavailable => "unavailable",
            Rcu::Off => "off",
        }
    }

    /// Every value, in the metric's order.
    pub const ALL: [Rcu; 4] = [
        Rcu::Expedited,
        Rcu::AlreadyExpedited,
        Rcu::Unavailable,
        Rcu::Off,
    ];
}

/// Why mounts are thawed: the lifecycle's reason, on the wire as the contract spells it. The
/// watchdog's own "the agent died" never goes on the wire (nobody is left to read it): see
/// [`super::core::ThawCause`].
/// Why the mounts were thawed: the one enum of the watchdog's pipe, the snapshot lifecycle and
/// the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThawReason {
    /// The host said the storage snapshot is done.
    Host,
    /// The hard deadline passed.
    Deadline,
    /// The snapshot was aborted.
    Abort,
    /// The agent is stopping.
    Shutdown,
    /// An error inside the agent (or the watchdog lost).
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

/// Agent → watchdog, after the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Flush, then freeze every mount in order.
    Freeze,
    /// Thaw everything frozen (at once, a stacked mount after the one beneath it) and end.
    Thaw { reason: ThawReason },
}

/// How a FIFREEZE failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    /// EBUSY: frozen by someone else; we must never thaw it.
    AlreadyFrozen,
    /// EOPNOTSUPP: the filesystem cannot be frozen (a skip, not an error).
    Unsupported,
    /// Anything else.
    Error,
}

/// Why the watchdog could not set up a plan (errno values are the OS's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SetupProblem {
    /// The plan line could not be read or parsed.
    Plan { error: String },
    /// A mount point could not be opened.
    Open {
        #[serde(with = "escaped_path")]
        path: PathBuf,
        errno: i32,
    },
    /// A mount point no longer holds the planned filesystem.
    Replaced {
        #[serde(with = "escaped_path")]
        path: PathBuf,
    },
    /// state_dir could not be created.
    StateDir {
        #[serde(with = "escaped_path")]
        path: PathBuf,
        errno: i32,
    },
}

/// Watchdog → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every mount is open and identified, memory locked: ready for `freeze`.
    Ready { warnings: Vec<String> },
    /// The plan could not be set up; nothing was frozen, and the watchdog exits.
    SetupFailed { problem: SetupProblem },
    /// syncfs of one mount returned.
    Flushed {
        mount: usize,
        duration_us: u64,
        error: Option<String>,
    },
    /// The pre-flush budget ran out with these mounts still flushing; freezing goes on.
    FlushBudgetExceeded { mounts: Vec<usize> },
    /// FIFREEZE was issued on a mount (the first one starts the deadline).
    FreezeStarted {
        mount: usize,
        unix_ms: u64,
        /// The watchdog's deadline (kept on the monotonic clock), as wall-clock Unix ms: the
        /// same in every `freeze_started` of a freeze.
        deadline_unix_ms: u64,
    },
    /// FIFREEZE returned success.
    Frozen { mount: usize, duration_us: u64 },
    /// FIFREEZE failed; the mount is not frozen by us.
    FreezeFailed {
        mount: usize,
        kind: FailKind,
        errno: i32,
        error: String,
    },
    /// RCU grace periods, right before the first FIFREEZE; `error` says why they were not
    /// expedited when they could not be.
    RcuExpedite { rcu: Rcu, error: Option<String> },
    /// `rcu_expedited` could not be put back to 0 (its record stays, for `thaw-all`).
    RcuRelaxFailed { error: String },
    /// Every mount has an outcome (frozen or failed): the storage snapshot may be taken now.
    AllSettled { unix_ms: u64 },
    /// The deadline passed: thawing follows at once.
    DeadlineReached { unix_ms: u64 },
    /// A mount was thawed (`frozen_us` counts from its FIFREEZE's return).
    Thawed { mount: usize, frozen_us: u64 },
    /// FITHAW failed or did not return in time.
    ThawFailed {
        mount: usize,
        errno: i32,
        error: String,
    },
    /// Every mount that we froze is thawed. `pending` lists mounts whose FIFREEZE has not
    /// returned yet: the watchdog stays alive and thaws each one the moment its call returns.
    ThawComplete {
        reason: ThawReason,
        unix_ms: u64,
        /// From the first FIFREEZE call to the last thaw, when anything was frozen.
        frozen_us: Option<u64>,
        pending: Vec<usize>,
    },
    /// Nothing of ours is frozen and no call is outstanding: the watchdog exits.
    Finished,
}

/// Paths as text with the kernel's mountinfo escapes (`\ooo` for bytes that are not printable
/// ASCII, spaces and backslashes), so that non-UTF-8 mount points cross JSON intact.
pub mod escaped_path {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn escape(path: &Path) -> String {
        let mut out = String::new();
        for &b in path.as_os_str().as_bytes() {
            if b.is_ascii_graphic() && b != b'\\' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03o}"));
            }
        }
        out
    }

    pub fn unescape(text: &str) -> Result<PathBuf, String> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\\' {
                let oct = bytes
                    .get(i + 1..i + 4)
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| u8::from_str_radix(d, 8).ok())
                    .ok_or_else(|| format!("bad escape in path {text:?}"))?;
                out.push(oct);
                i += 4;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
    }

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&escape(path))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let text = String::deserialize(d)?;
        unescape(&text).map_err(serde::de::Error::custom)
    }

    /// For display of paths that may not be UTF-8.
    pub fn display(path: &OsStr) -> String {
        escape(Path::new(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_survive_escaping() {
        let weird = PathBuf::from(std::ffi::OsString::from_vec(
            b"/mnt/a b\\c\n\xff\xfe/d".to_vec(),
        ));
        let text = escaped_path::escape(&weird);
        assert!(text.is_ascii());
        assert_eq!(escaped_path::unescape(&text).unwrap(), weird);
        assert_eq!(escaped_path::escape(Path::new("/data")), "/data");
        assert!(escaped_path::unescape("/x\\9").is_err());
    }

    #[test]
    fn messages_are_one_json_line() {
        let ev = Event::ThawComplete {
            reason: ThawReason::Deadline,
            unix_ms: 1,
            frozen_us: Some(5),
            pending: vec![1],
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""event":"thaw_complete""#));
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), ev);
        let ev = Event::SetupFailed {
            problem: SetupProblem::Open {
                path: PathBuf::from("/a b"),
                errno: 2,
            },
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(
            line.contains(r#""kind":"open","path":"/a\\040b","errno":2"#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), ev);
        let line = r#"{"event":"freeze_started","mount":0,"unix_ms":5,"deadline_unix_ms":10005}"#;
        assert_eq!(
            serde_json::from_str::<Event>(line).unwrap(),
            Event::FreezeStarted {
                mount: 0,
                unix_ms: 5,
                deadline_unix_ms: 10_005
            }
        );
        let cmd: Command = serde_json::from_str(r#"{"cmd":"thaw","reason":"host"}"#).unwrap();
        assert_eq!(
            cmd,
            Command::Thaw {
                reason: ThawReason::Host
            }
        );
    }
}
