//! Records in `state_dir` of the mounts we are freezing, so that a thaw is possible after the
//! agent and its watchdog were killed: `quiesce thaw-all` and the daemon's start read them.
//!
//! A record is written before each FIFREEZE and removed after our thaw, or at once when the
//! FIFREEZE failed (so a mount frozen by someone else is never recorded as ours). `state_dir` is a
//! tmpfs, so none of this touches a filesystem that may be frozen.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::mountinfo::DevNum;
use super::protocol::{escaped_path, FsIdentity, PlanMount};
use crate::sys::ioctl;

/// How long a recovery FITHAW may take before it is reported as hung and left behind.
pub const RECOVERY_THAW_WAIT: Duration = Duration::from_secs(2);

/// One recorded mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "escaped_path")]
    pub path: PathBuf,
    pub fstype: String,
    pub dev: DevNum,
    pub identity: FsIdentity,
    /// The process that froze it (the watchdog).
    pub pid: u32,
    pub unix_ms: u64,
}

/// The `frozen/` folder of a state_dir.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records of `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Records {
            dir: state_dir.join("frozen"),
        }
    }

    /// Creates state_dir and its `frozen/` folder (0700) if missing.
    pub fn ensure_dir(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
    }

    fn file_for(&self, dev: DevNum) -> PathBuf {
        self.dir.join(format!("{}-{}.json", dev.major, dev.minor))
    }

    /// Writes (atomically, by rename) the record of a mount about to be frozen.
    pub fn write(&self, mount: &PlanMount, pid: u32, unix_ms: u64) -> io::Result<()> {
        let record = Record {
            path: mount.path.clone(),
            fstype: mount.fstype.clone(),
            dev: mount.dev,
            identity: mount.identity,
            pid,
            unix_ms,
        };
        let target = self.file_for(mount.dev);
        let tmp = target.with_extension("tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(serde_json::to_string(&record)?.as_bytes())?;
        drop(f);
        fs::rename(&tmp, &target)
    }

    /// Removes a mount's record; a missing one is not an error.
    pub fn remove(&self, dev: DevNum) -> io::Result<()> {
        match fs::remove_file(self.file_for(dev)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record file, parsed (or the reason it could not be).
    pub fn list(&self) -> io::Result<Vec<(PathBuf, Result<Record, String>)>> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
            out.push((path, parsed));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// What recovery did with one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Recovery {
    /// It was still frozen, and we thawed it.
    Thawed {
        #[serde(with = "escaped_path")]
        path: PathBuf,
    },
    /// It was not frozen any more.
    NotFrozen {
        #[serde(with = "escaped_path")]
        path: PathBuf,
    },
    /// The mount point is gone or now holds another filesystem: left alone.
    Gone {
        #[serde(with = "escaped_path")]
        path: PathBuf,
        why: String,
    },
    /// FITHAW failed or hung; the record is kept for a later try.
    Failed {
        #[serde(with = "escaped_path")]
        path: PathBuf,
        error: String,
    },
    /// The record file is unreadable; it is removed.
    BadRecord {
        #[serde(with = "escaped_path")]
        file: PathBuf,
        error: String,
    },
}

impl Recovery {
    /// True when the mount may still be frozen by us.
    pub fn left_frozen(&self) -> bool {
        matches!(self, Recovery::Failed { .. })
    }
}

/// Opens a mount point and reads its identity; reading works on a frozen filesystem.
pub fn open_identified(path: &Path) -> io::Result<(OwnedFd, FsIdentity)> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    let identity = identity_of(&dir)?;
    Ok((dir.into(), identity))
}

/// The identity of the filesystem an open file belongs to.
pub fn identity_of(file: &File) -> io::Result<FsIdentity> {
    let st_dev = file.metadata()?.dev();
    let vfs = nix::sys::statvfs::fstatvfs(file.as_fd()).map_err(io::Error::from)?;
    Ok(FsIdentity {
        st_dev,
        fsid: vfs.filesystem_id() as u64,
    })
}

/// FITHAW on a thread of its own, waiting at most `wait` (a thaw can block behind a hung
/// FIFREEZE holding the superblock lock); `None` means it has not returned yet.
pub fn thaw_with_timeout(fd: OwnedFd, wait: Duration) -> Option<Result<(), Errno>> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("thaw".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = tx.send(ioctl::thaw(fd.as_fd()));
        });
    match spawned {
        Ok(_) => rx.recv_timeout(wait).ok(),
        Err(e) => Some(Err(Errno::from_raw(
            e.raw_os_error().unwrap_or(libc::EAGAIN),
        ))),
    }
}

/// Thaws every mount recorded in `state_dir` that still holds the same filesystem, and only
/// those; removes each record it settled. Idempotent.
pub fn thaw_recorded(state_dir: &Path) -> io::Result<Vec<Recovery>> {
    let records = Records::new(state_dir);
    let mut out = Vec::new();
    for (file, parsed) in records.list()? {
        let record = match parsed {
            Ok(r) => r,
            Err(error) => {
                let _ = fs::remove_file(&file);
                out.push(Recovery::BadRecord { file, error });
                continue;
            }
        };
        let path = record.path.clone();
        let outcome = match open_identified(&path) {
            Err(e) => Recovery::Gone {
                path,
                why: e.to_string(),
            },
            Ok((_, identity)) if identity != record.identity => Recovery::Gone {
                path,
                why: "another filesystem is mounted there now".into(),
            },
            Ok((fd, _)) => match thaw_with_timeout(fd, RECOVERY_THAW_WAIT) {
                Some(Ok(())) => Recovery::Thawed { path },
                Some(Err(Errno::EINVAL)) => Recovery::NotFrozen { path },
                Some(Err(e)) => Recovery::Failed {
                    path,
                    error: format!("FITHAW: {}", e.desc()),
                },
                None => Recovery::Failed {
                    path,
                    error: format!(
                        "FITHAW did not return within {} ms (a freeze of it may still be under way)",
                        RECOVERY_THAW_WAIT.as_millis()
                    ),
                },
            },
        };
        if !outcome.left_frozen() {
            records.remove(record.dev)?;
        }
        out.push(outcome);
    }
    Ok(out)
}

/// The exclusive lock of one state_dir: held by the one process that may freeze.
#[derive(Debug)]
pub struct AgentLock {
    _lock: Flock<File>,
}

impl AgentLock {
    /// Takes the lock without waiting.
    pub fn acquire(state_dir: &Path) -> io::Result<AgentLock> {
        Records::new(state_dir).ensure_dir()?;
        let path = state_dir.join("agent.lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(AgentLock { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another quiesce process holds {} (is the daemon running?)",
                    path.display()
                ),
            )),
            Err((_, e)) => Err(io::Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(path: &str, minor: u32) -> PlanMount {
        PlanMount {
            path: PathBuf::from(path),
            fstype: "ext4".into(),
            dev: DevNum { major: 7, minor },
            identity: FsIdentity { st_dev: 1, fsid: 2 },
            beneath: vec![],
        }
    }

    #[test]
    fn records_round_trip_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        records.ensure_dir().unwrap();
        records.write(&mount("/a b", 3), 42, 7).unwrap();
        records.write(&mount("/c", 4), 42, 7).unwrap();
        let list = records.list().unwrap();
        assert_eq!(list.len(), 2);
        let first = list[0].1.as_ref().unwrap();
        assert_eq!(first.path, PathBuf::from("/a b"));
        assert_eq!(first.pid, 42);
        records.remove(DevNum { major: 7, minor: 3 }).unwrap();
        records.remove(DevNum { major: 7, minor: 3 }).unwrap();
        assert_eq!(records.list().unwrap().len(), 1);
    }

    #[test]
    fn recovery_leaves_what_is_gone_or_replaced_alone() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        records.ensure_dir().unwrap();
        // A path that does not exist, and a real directory whose identity does not match.
        records
            .write(&mount("/nonexistent/quiesce", 1), 1, 1)
            .unwrap();
        records
            .write(&mount(dir.path().to_str().unwrap(), 2), 1, 1)
            .unwrap();
        fs::write(records.dir.join("junk.json"), "{").unwrap();
        let out = thaw_recorded(dir.path()).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|r| !r.left_frozen()));
        assert!(matches!(out[0], Recovery::Gone { .. }));
        assert!(matches!(out[1], Recovery::Gone { ref why, .. } if why.contains("another")));
        assert!(matches!(out[2], Recovery::BadRecord { .. }));
        assert!(records.list().unwrap().is_empty());
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = AgentLock::acquire(dir.path()).unwrap();
        let err = AgentLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another quiesce process"));
        drop(held);
        AgentLock::acquire(dir.path()).unwrap();
    }
}
