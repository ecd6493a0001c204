//! A logind inhibitor lock (`shutdown:sleep`, mode `block`) held for the whole of a snapshot,
//! so that a reboot or a suspend cannot cut it in half (pre hooks run, mounts frozen, post hooks
//! not run).
//!
//! logind hands out the lock as a file descriptor and releases it when every copy of that
//! descriptor is closed: the [`Inhibitor`] owns the only copy in this process, marked
//! close-on-exec so that no hook (nor a process a hook leaves running) inherits it and keeps the
//! lock after the snapshot.

use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use zbus::zvariant;

use super::{call, CallError, Service};

/// What the lock blocks (logind's `what`).
pub const WHAT: &str = "shutdown:sleep";
/// The lock's owner as `systemd-inhibit --list` shows it (logind's `who`).
pub const WHO: &str = "quiesce";

/// A held inhibitor lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Inhibitor {
    fd: OwnedFd,
    snapshot_id: String,
}

impl AsFd for Inhibitor {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Inhibitor {
    fn drop(&mut self) {
        // The descriptor itself closes right after this: that is the release.
        tracing::debug!(snapshot = %self.snapshot_id, "releasing the logind inhibitor lock");
    }
}

/// The lock's reason (logind's `why`), shown by `systemd-inhibit --list` and by the refusal
/// message of a blocked `systemctl reboot`.
pub fn why(snapshot_id: &str) -> String {
    format!("application-consistent snapshot {snapshot_id} in progress")
}

/// Takes the inhibitor lock for one snapshot; `None` when there is no bus or no logind (logged
/// once), or logind refused (logged). Call it once per snapshot, before its first pre hook, and
/// keep the value until its last post hook has ended. It also makes the bus and services that
/// were found missing earlier worth asking again ([`super::retry_now`]): dbus may have started
/// since. Takes at most [`super::CALL_TIMEOUT`] twice (connect and call).
pub async fn inhibit(snapshot_id: &str) -> Option<Inhibitor> {
    super::retry_now();
    let why = why(snapshot_id);
    let reply: Result<zvariant::OwnedFd, _> = call(
        Service::Logind,
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
        "Inhibit",
        &(WHAT, WHO, why.as_str(), "block"),
    )
    .await;
    let fd: OwnedFd = match reply {
        Ok(fd) => fd.into(),
        Err(CallError::Unavailable) => return None,
        Err(e) => {
            tracing::info!(
                snapshot = %snapshot_id,
                "logind refused the inhibitor lock ({e}): shutdown and sleep are not blocked"
            );
            return None;
        }
    };
    // A lock inherited by a hook (spawned through the helper) would be held by any process the
    // hook leaves running. zvariant hands out an F_DUPFD_CLOEXEC copy today (the socket's own
    // copy is received without MSG_CMSG_CLOEXEC and closed with the message); set it here so
    // that this stays a guarantee, not a detail of the dependency.
    if let Err(e) = fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
        tracing::info!(snapshot = %snapshot_id, "inhibitor lock not taken: cannot set close-on-exec: {e}");
        return None;
    }
    tracing::debug!(snapshot = %snapshot_id, "took the logind inhibitor lock ({WHAT}, block)");
    Some(Inhibitor {
        fd,
        snapshot_id: snapshot_id.to_owned(),
    })
}
