//! A systemd transient scope unit per hook run, so that a timeout or a cancellation reaches
//! every process the hook started through its cgroup, even one that escaped the helper's view
//! (the helper killed, a process reparented out of its tree).
//!
//! The scope is created with `StartTransientUnit` around the hook helper's pid before the helper
//! starts the hook (a process moved into a cgroup does not take its existing children along):
//! the runner starts the helper with `--wait-go`, calls [`start`], then sends the go byte.
//! systemd moves the pid when the start job runs, which may be just after the call returns, so
//! [`start`] waits (bounded) until `/proc/PID/cgroup` shows the scope.
//!
//! Properties: `PIDs` (the helper), `Description`, `CollectMode=inactive-or-failed` (a scope
//! that ends "failed" after a kill does not linger) and `Slice=` the slice quiesce itself runs
//! in (normally `system.slice`), so the hooks share its resource limits. No `PartOf=` or
//! `BindsTo=` quiesce.service, on purpose: stopping the service makes quiesce run the due post
//! hooks before it exits (contract), and systemd stopping their scopes at the same moment would
//! kill them half-way. If quiesce dies, each helper sees its stdin close and stops its hook's
//! tree, and the emptied scope is collected.

use std::path::Path;
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, Value};

use super::{call, known_missing, CallError, Service, CALL_TIMEOUT};

const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// The longest escaped snapshot id or hook name put in a unit name (units have at most 255).
const PART_MAX: usize = 64;
/// How often `/proc/PID/cgroup` is read while waiting for the move, and the scope for its end.
const POLL: Duration = Duration::from_millis(2);

/// The unit name of one hook run: `quiesce-hook-<snapshot>-<hook>-<pre|post>.scope`, with the
/// snapshot id and the hook name escaped as `systemd-escape` does (`-` becomes `\x2d`, so the
/// dashes of the name stay separators) and each cut to 64 characters.
pub fn unit_name(snapshot_id: &str, hook: &str, phase: &str) -> String {
    format!("{}.scope", unit_stem(snapshot_id, hook, phase))
}

/// The same name as [`unit_name`], for the run's transient service: `….service`.
pub fn service_name(snapshot_id: &str, hook: &str, phase: &str) -> String {
    format!("{}.service", unit_stem(snapshot_id, hook, phase))
}

fn unit_stem(snapshot_id: &str, hook: &str, phase: &str) -> String {
    format!(
        "quiesce-hook-{}-{}-{}",
        escape(snapshot_id),
        escape(hook),
        phase
    )
}

/// systemd's unit name escaping: `[A-Za-z0-9_.:]` kept (a leading `.` escaped), every other
/// byte as `\xNN`; cut to [`PART_MAX`] characters without splitting an escape.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b':' || (b == b'.' && i > 0);
        let piece = if keep {
            (b as char).to_string()
        } else {
            format!("\\x{b:02x}")
        };
        if out.len() + piece.len() > PART_MAX {
            break;
        }
        out.push_str(&piece);
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// A hook run's unit: its scope, created by [`start`], or its transient service
/// ([`super::service::start`]).
#[derive(Debug)]
pub struct Scope {
    name: String,
}

impl Scope {
    /// The unit called `name`.
    pub(crate) fn named(name: &str) -> Scope {
        Scope {
            name: name.to_owned(),
        }
    }

    /// The unit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `signal` to the unit's main process (`KillUnit(main)`): the hook helper of a
    /// service, which stops its hook's tree on SIGTERM. Never fails, only logs.
    pub async fn signal_main(&self, signal: i32) {
        let name = self.name.as_str();
        let sent: Result<(), _> = call(
            Service::Systemd,
            PATH,
            MANAGER,
            "KillUnit",
            &(name, "main", signal),
        )
        .await;
        if let Err(e) = sent {
            tracing::debug!(unit = %name, "KillUnit(main, {signal}): {e}");
        }
    }

    /// SIGKILLs every process left in the scope (`KillUnit(all)`), stops the unit and waits
    /// (at most [`CALL_TIMEOUT`]) until systemd has dropped it. For runs whose tree had to be
    /// stopped (timeout, cancellation, helper lost); never fails, only logs.
    pub async fn kill(&self) {
        let name = self.name.as_str();
        let killed: Result<(), _> = call(
            Service::Systemd,
            PATH,
            MANAGER,
            "KillUnit",
            &(name, "all", libc::SIGKILL),
        )
        .await;
        match killed {
            Ok(()) => {}
            Err(e) if e.name() == Some(NO_SUCH_UNIT) => return,
            Err(e) => tracing::debug!(unit = %name, "KillUnit: {e}"),
        }
        // For what SIGKILL did not end yet (uninterruptible sleep): systemd keeps at it.
        let stopped: Result<OwnedObjectPath, _> = call(
            Service::Systemd,
            PATH,
            MANAGER,
            "StopUnit",
            &(name, "replace"),
        )
        .await;
        match stopped {
            Ok(_) => {}
            Err(e) if e.name() == Some(NO_SUCH_UNIT) => return,
            Err(e) => tracing::debug!(unit = %name, "StopUnit: {e}"),
        }
        if !self.wait_gone().await {
            tracing::debug!(unit = %name, "the hook's scope is still there after its kill");
        }
    }

    /// Waits (at most [`CALL_TIMEOUT`]) until `GetUnit` says the unit no longer exists (it
    /// ended and was collected); false if it still does.
    pub async fn wait_gone(&self) -> bool {
        let end = Instant::now() + CALL_TIMEOUT;
        loop {
            let unit: Result<OwnedObjectPath, _> = call(
                Service::Systemd,
                PATH,
                MANAGER,
                "GetUnit",
                &(self.name.as_str(),),
            )
            .await;
            match unit {
                Err(e) if e.name() == Some(NO_SUCH_UNIT) => return true,
                Err(_) => return false,
                Ok(_) if Instant::now() >= end => return false,
                Ok(_) => tokio::time::sleep(POLL * 5).await,
            }
        }
    }
}

const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// Creates the scope `name` around `pid` and waits until the pid is in it; `None` when there is
/// no systemd on the bus (logged once) or it refused (logged): the caller goes on without.
pub async fn start(name: &str, pid: u32, description: &str) -> Option<Scope> {
    if known_missing(Service::Systemd) {
        return None;
    }
    let props: Vec<(&str, Value<'_>)> = vec![
        ("Description", Value::from(description)),
        ("PIDs", Value::from(vec![pid])),
    ];
    let job = start_transient(name, props).await;
    match job {
        Ok(_) => {}
        Err(CallError::Unavailable) => return None,
        Err(e) => {
            tracing::info!(unit = %name, "cannot create the hook's scope ({e}): the hook runs without");
            return None;
        }
    }
    let scope = Scope {
        name: name.to_owned(),
    };
    if !wait_moved(pid, name).await {
        // The hook still runs, under the helper's own process-tree kill; whatever does land in
        // the scope is killed with it.
        tracing::debug!(unit = %name, "pid {pid} did not show up in its scope in time");
    }
    Some(scope)
}

/// Waits until `/proc/PID/cgroup` names the unit (on any hierarchy), at most [`CALL_TIMEOUT`].
async fn wait_moved(pid: u32, unit: &str) -> bool {
    let file = format!("/proc/{pid}/cgroup");
    let end = Instant::now() + CALL_TIMEOUT;
    loop {
        let Ok(text) = std::fs::read_to_string(&file) else {
            return false;
        };
        if text.lines().any(|l| l.rsplit('/').next() == Some(unit)) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The slice this process runs in, from its cgroup path (`/system.slice/quiesce.service` gives
/// `system.slice`); `None` outside a slice (a container, a test).
pub(crate) fn own_slice() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    slice_of(&text)
}

fn slice_of(proc_cgroup: &str) -> Option<String> {
    // The unified line first, then the named systemd hierarchy of a hybrid layout.
    let path = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            proc_cgroup
                .lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
        })?;
    let parent = Path::new(path).parent()?.file_name()?.to_str()?;
    parent.ends_with(".slice").then(|| parent.to_owned())
}

/// `StartTransientUnit` of a hook's unit (scope or service) with `props`, collected once it
/// ended (even failed) and in the daemon's own slice.
pub(super) async fn start_transient(
    name: &str,
    mut props: Vec<(&str, Value<'_>)>,
) -> Result<OwnedObjectPath, CallError> {
    props.push(("CollectMode", Value::from("inactive-or-failed")));
    let slice = own_slice();
    if let Some(slice) = &slice {
        props.push(("Slice", Value::from(slice.as_str())));
    }
    let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
    call(
        Service::Systemd,
        PATH,
        MANAGER,
        "StartTransientUnit",
        &(name, "fail", props, aux),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_escaped_and_bounded() {
        assert_eq!(
            unit_name("0123abcd", "postgres", "pre"),
            "quiesce-hook-0123abcd-postgres-pre.scope"
        );
        assert_eq!(
            unit_name("s", "my-db/main x", "post"),
            r"quiesce-hook-s-my\x2ddb\x2fmain\x20x-post.scope"
        );
        assert_eq!(escape(".hidden"), r"\x2ehidden");
        assert_eq!(escape(""), "_");
        assert_eq!(escape("é"), r"\xc3\xa9");
        let long = unit_name(&"x".repeat(300), &"-".repeat(300), "post");
        assert!(long.len() <= 255, "{}", long.len());
        // Cut between escapes, never inside one.
        assert!(
            long.contains(&format!("-{}-post", r"\x2d".repeat(16))),
            "{long}"
        );
    }

    #[test]
    fn finds_the_slice_of_a_service() {
        let hybrid =
            "1:name=systemd:/system.slice/quiesce.service\n0::/system.slice/quiesce.service\n";
        assert_eq!(slice_of(hybrid).as_deref(), Some("system.slice"));
        let v1 = "4:memory:/x\n1:name=systemd:/app.slice/q.service\n";
        assert_eq!(slice_of(v1).as_deref(), Some("app.slice"));
        assert_eq!(slice_of("0::/\n"), None);
        assert_eq!(slice_of("0::/docker/abc\n"), None);
    }
}
