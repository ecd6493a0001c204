//! A systemd transient *service* per hook run: the hook helper (`quiesce hook-exec`) started by
//! systemd itself, so the hook runs outside the daemon's sandbox, with the freedom the operator
//! has in a unit of their own (capabilities, set-uid tools, /home, namespaces...).
//!
//! `StartTransientUnit(name, "fail", properties, [])` with:
//! - `ExecStart`: the helper, with the same arguments as in the direct path (`--wait-go`,
//!   `--cancel-on-eof`, the timeout, the grace, `--`, the hook's command);
//! - `StandardInputFileDescriptor`, `StandardOutputFileDescriptor`,
//!   `StandardErrorFileDescriptor`: the ends of three pipes whose other ends the runner keeps,
//!   as `systemd-run --pipe` does. stdin carries the go byte and, by its end-of-file, the
//!   runner's death or cancellation; stdout the helper's two result lines; stderr the hook's
//!   output. So everything the runner knows in the direct path, it knows here;
//! - `Environment`: the hook's `env` and the `QUIESCE_*` variables (never a command line);
//! - `KillMode=process`: when the helper ends by itself, processes the hook left running are
//!   left alone, as in the direct path; at a timeout, a cancellation or a lost helper the
//!   runner kills the whole cgroup with `KillUnit(all, SIGKILL)` (see [`super::scope::Scope`]);
//! - `CollectMode=inactive-or-failed`, `Slice=` the daemon's own slice, `Description`.
//!
//! No `PartOf=`/`BindsTo=` quiesce.service, for the same reason as the scopes: a stop of the
//! service runs the due post hooks, which systemd must not kill half-way.

use std::os::fd::{AsFd, BorrowedFd};

use zbus::zvariant::{Fd, Value};

use super::scope::Scope;
use super::{known_missing, CallError, Service};

/// What the hook's service is made of.
pub struct HookService<'a> {
    /// The unit's name (`quiesce-hook-…​.service`).
    pub name: &'a str,
    pub description: &'a str,
    /// The program (an absolute path) and its whole argv (argv[0] included).
    pub program: &'a str,
    pub argv: &'a [String],
    /// `KEY=value` entries.
    pub environment: &'a [String],
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// Why no service was started.
#[derive(Debug)]
pub enum NotStarted {
    /// No bus or no systemd (logged once): the caller runs the hook directly.
    Unavailable,
    /// systemd refused (an old systemd without the fd properties, a policy): logged; the caller
    /// runs the hook directly.
    Refused(String),
}

/// Starts the hook's transient service; once this returns `Ok`, systemd has the three fds and
/// the helper is starting (it waits for the go byte on its stdin).
pub async fn start(svc: &HookService<'_>) -> Result<Scope, NotStarted> {
    if known_missing(Service::Systemd) {
        return Err(NotStarted::Unavailable);
    }
    let exec: Vec<(&str, Vec<&str>, bool)> = vec![(
        svc.program,
        svc.argv.iter().map(String::as_str).collect(),
        false,
    )];
    let env: Vec<&str> = svc.environment.iter().map(String::as_str).collect();
    let props: Vec<(&str, Value<'_>)> = vec![
        ("Description", Value::from(svc.description)),
        ("ExecStart", Value::from(exec)),
        ("Environment", Value::from(env)),
        (
            "StandardInputFileDescriptor",
            Value::from(Fd::from(svc.stdin.as_fd())),
        ),
        (
            "StandardOutputFileDescriptor",
            Value::from(Fd::from(svc.stdout.as_fd())),
        ),
        (
            "StandardErrorFileDescriptor",
            Value::from(Fd::from(svc.stderr.as_fd())),
        ),
        ("KillMode", Value::from("process")),
    ];
    let job = super::scope::start_transient(svc.name, props).await;
    match job {
        Ok(_) => Ok(Scope::named(svc.name)),
        Err(CallError::Unavailable) => Err(NotStarted::Unavailable),
        Err(e) => {
            tracing::info!(unit = %svc.name, "cannot start the hook's service ({e}): the hook runs directly");
            Err(NotStarted::Refused(e.to_string()))
        }
    }
}
