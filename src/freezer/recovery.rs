//! Records in `state_dir` of the mounts we are freezing, so that a thaw is possible after the
//! agent and its watchdog were killed: `quiesce thaw-all` and the daemon's start read them.
//!
//! A record is written before each FIFREEZE and removed after our thaw, or at once when the
//! FIFREEZE failed (so a mount frozen by someone else is never recorded as ours). `state_dir` is a
//! tmpfs, so none of this touches a filesystem that may be frozen.
//!
//! A record makes root thaw a mount, so only our own records count: `state_dir` and `frozen/`
//! must be real directories (not symlinks) owned by the effective uid (root, for the daemon)
//! and not writable by group or others; files are created relative to the opened `frozen/`
//! directory with `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted symlink cannot make root write
//! elsewhere) and read with `O_NOFOLLOW|O_NONBLOCK`, only when they are small regular files
//! with one link, owned by the effective uid and private (a FIFO cannot hang a read, a file
//! someone else planted is not a record). The identity check on the mount point comes on top.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
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

/// Largest record file read (a record is a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The record, in `frozen/`, that the watchdog set `/sys/kernel/rcu_expedited` to 1 (no `.json`
/// extension: it is not a mount's record).
const RCU_RECORD: &str = "rcu_expedited";

/// Checks that `dir` is a directory (not a symlink) of the effective uid, not writable by group
/// or others.
fn check_trusted_dir(dir: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} {why}: refusing to trust the records in it",
                dir.display()
            ),
        ))
    };
    if md.file_type().is_symlink() {
        return refuse("is a symlink".into());
    }
    if !md.is_dir() {
        return refuse("is not a directory".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return refuse(format!("is owned by uid {}, not {me}", md.uid()));
    }
    if md.mode() & 0o022 != 0 {
        return refuse(format!(
            "is writable by group or others (mode {:04o})",
            md.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Opens a trusted directory without following a symlink at its last name.
fn open_dir(dir: &Path) -> io::Result<File> {
    check_trusted_dir(dir)?;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
}

/// `openat(dir, name, flags, mode)`.
fn open_at(dir: &File, name: &str, flags: nix::fcntl::OFlag, mode: u32) -> io::Result<File> {
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        name,
        flags | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::from_bits_truncate(mode),
    )
    .map_err(io::Error::from)?;
    Ok(File::from(fd))
}

/// Reads a record file opened relative to `dir`, if it is one of ours: a small regular file
/// with one link, owned by the effective uid, private.
fn read_record_at(dir: &File, name: &str) -> Result<String, String> {
    use nix::fcntl::OFlag;
    let file = open_at(dir, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)
        .map_err(|e| format!("opening it: {e}"))?;
    let md = file.metadata().map_err(|e| e.to_string())?;
    let me = nix::unistd::geteuid().as_raw();
    if !md.file_type().is_file() {
        return Err("not a regular file: not a record of ours".into());
    }
    if md.uid() != me || md.mode() & 0o077 != 0 || md.nlink() != 1 {
        return Err(format!(
            "owned by uid {} with mode {:04o} and {} links: not a record of ours",
            md.uid(),
            md.mode() & 0o7777,
            md.nlink()
        ));
    }
    if md.len() > MAX_RECORD_BYTES {
        return Err(format!("{} bytes: not a record of ours", md.len()));
    }
    let mut text = String::new();
    file.take(MAX_RECORD_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

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

    /// Creates state_dir and its `frozen/` folder (0700) if missing; both must then be
    /// trustworthy (see the module's doc).
    pub fn ensure_dir(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        if let Some(state_dir) = self.dir.parent() {
            check_trusted_dir(state_dir)?;
        }
        check_trusted_dir(&self.dir)
    }

    fn name_for(dev: DevNum) -> String {
        format!("{}-{}.json", dev.major, dev.minor)
    }

    /// The `frozen/` folder, opened after the checks (its parent, state_dir, too).
    fn open(&self) -> io::Result<File> {
        if let Some(state_dir) = self.dir.parent() {
            check_trusted_dir(state_dir)?;
        }
        open_dir(&self.dir)
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
        self.write_file(
            &Self::name_for(mount.dev),
            serde_json::to_string(&record)?.as_bytes(),
        )
    }

    /// Writes `bytes` to `frozen/NAME` atomically: `NAME.tmp`, then a rename.
    fn write_file(&self, target: &str, bytes: &[u8]) -> io::Result<()> {
        use nix::fcntl::OFlag;
        let dir = self.open()?;
        let tmp = format!("{target}.tmp");
        let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        // A leftover (a crash between create and rename) or anything planted there is
        // unlinked, never opened: O_EXCL|O_NOFOLLOW do not follow a symlink.
        let mut f = match open_at(&dir, &tmp, create, 0o600) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                nix::unistd::unlinkat(&dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .map_err(io::Error::from)?;
                open_at(&dir, &tmp, create, 0o600)?
            }
            other => other?,
        };
        f.write_all(bytes)?;
        drop(f);
        nix::fcntl::renameat(&dir, tmp.as_str(), &dir, target).map_err(io::Error::from)
    }

    /// Removes `frozen/NAME`; a missing one is not an error.
    fn remove_file(&self, name: &str) -> io::Result<()> {
        let dir = match self.open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Err(nix::errno::Errno::ENOENT) | Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Records, before the watchdog sets `/sys/kernel/rcu_expedited` to 1, that it did (the
    /// record is what puts it back to 0 after a SIGKILL of the watchdog).
    pub fn write_rcu(&self, pid: u32, unix_ms: u64) -> io::Result<()> {
        let text = serde_json::json!({ "pid": pid, "unix_ms": unix_ms }).to_string();
        self.write_file(RCU_RECORD, text.as_bytes())
    }

    /// Removes the RCU record, once the knob is back to 0.
    pub fn remove_rcu(&self) -> io::Result<()> {
        self.remove_file(RCU_RECORD)
    }

    /// Whether an RCU record of ours is there (a file that is not ours does not count).
    pub fn rcu_recorded(&self) -> io::Result<bool> {
        let dir = match self.open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            other => other?,
        };
        match read_record_at(&dir, RCU_RECORD) {
            Ok(_) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    /// Removes a mount's record; a missing one is not an error.
    pub fn remove(&self, dev: DevNum) -> io::Result<()> {
        self.remove_file(&Self::name_for(dev))
    }

    /// Every record file, parsed (or the reason it could not be).
    pub fn list(&self) -> io::Result<Vec<(PathBuf, Result<Record, String>)>> {
        let dir = match self.open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let parsed = read_record_at(&dir, &name)
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
    /// A watchdog that died had set `/sys/kernel/rcu_expedited` to 1: it is 0 again
    /// (`was_on`: it still read 1).
    RcuRelaxed { was_on: bool },
    /// ... and it could not be put back to 0; the record is kept for a later try.
    RcuFailed { error: String },
}

impl Recovery {
    /// True when something of ours is left as it should not be: a mount that may still be
    /// frozen by us, or RCU grace periods still expedited by us.
    pub fn left_frozen(&self) -> bool {
        matches!(self, Recovery::Failed { .. } | Recovery::RcuFailed { .. })
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
/// those; removes each record it settled; puts RCU grace periods back to normal if a watchdog
/// that died had expedited them. Idempotent.
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
    // After the mounts: a FIFREEZE is never slower than with RCU expedited.
    if records.rcu_recorded()? {
        out.push(match super::rcu::restore(&super::rcu::Knobs::system()) {
            Ok(was_on) => match records.remove_rcu() {
                Ok(()) => Recovery::RcuRelaxed { was_on },
                Err(e) => Recovery::RcuFailed {
                    error: format!("removing its record: {e}"),
                },
            },
            Err(error) => Recovery::RcuFailed { error },
        });
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
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)?;
        if !file.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", path.display()),
            ));
        }
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
    fn the_rcu_record_is_ours_only_when_we_wrote_it_and_is_no_mount_record() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        records.ensure_dir().unwrap();
        assert!(!records.rcu_recorded().unwrap());
        records.write_rcu(7, 1).unwrap();
        assert!(records.rcu_recorded().unwrap());
        assert!(records.list().unwrap().is_empty(), "not a mount's record");
        records.remove_rcu().unwrap();
        assert!(!records.rcu_recorded().unwrap());
        records.remove_rcu().unwrap();
        // A file someone else planted there (group-readable) is not a record of ours: recovery
        // never touches the knob for it.
        let planted = dir.path().join("frozen").join(RCU_RECORD);
        std::fs::write(&planted, "{}").unwrap();
        std::fs::set_permissions(
            &planted,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        assert!(!records.rcu_recorded().unwrap());
        assert!(thaw_recorded(dir.path()).unwrap().is_empty());
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
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        records.ensure_dir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, records.dir.join("7-3.tmp")).unwrap();
        records.write(&mount("/a", 3), 1, 1).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(records.list().unwrap().len(), 1);
        // A symlink as a record is not read through either.
        std::os::unix::fs::symlink(&victim, records.dir.join("7-9.json")).unwrap();
        let list = records.list().unwrap();
        assert!(
            list[1].1.as_ref().unwrap_err().contains("opening it"),
            "{list:?}"
        );
    }

    #[test]
    fn a_fifo_or_a_foreign_file_is_not_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        records.ensure_dir().unwrap();
        nix::unistd::mkfifo(
            &records.dir.join("7-1.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let shared = records.dir.join("7-2.json");
        fs::write(&shared, "{}").unwrap();
        fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let t = std::time::Instant::now();
        let list = records.list().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a FIFO blocked the read"
        );
        assert!(list[0]
            .1
            .as_ref()
            .unwrap_err()
            .contains("not a regular file"));
        assert!(list[1]
            .1
            .as_ref()
            .unwrap_err()
            .contains("not a record of ours"));
        // thaw-all settles them without hanging.
        let out = thaw_recorded(dir.path()).unwrap();
        assert!(out.iter().all(|r| matches!(r, Recovery::BadRecord { .. })));
    }

    #[test]
    fn an_untrusted_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let e = thaw_recorded(&open).unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        assert!(AgentLock::acquire(&open).is_err());
        let link = dir.path().join("link");
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = thaw_recorded(&link).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
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
