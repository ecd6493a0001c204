//! D-Bus on the system bus: a logind inhibitor lock per snapshot ([`logind`]) and a systemd
//! transient service per hook run ([`service`]; a transient scope around a directly started
//! hook ([`scope`]) when systemd refuses the service).
//!
//! Both are extras: a machine without a bus (a container, CI), without logind or without
//! systemd runs snapshots exactly as before, with one log line saying what is missing. So every
//! step is bounded (connect and each call time out after [`CALL_TIMEOUT`]) and a failure is
//! remembered: the bus, logind and systemd are not asked again for [`RETRY_AFTER`], or until the
//! next snapshot starts ([`logind::inhibit`] calls [`retry_now`]), since dbus may start after us.
//!
//! The connection (zbus honours `DBUS_SYSTEM_BUS_ADDRESS`) is made lazily and kept per thread:
//! zbus runs its reader task on the tokio runtime it was made on, and the daemon has exactly one
//! current-thread runtime, so per thread means per runtime. A connection whose runtime is gone
//! (tests may run one runtime after another on a thread) would answer nothing: it is replaced.

pub mod logind;
pub mod scope;
pub mod service;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use zbus::zvariant::{DynamicType, Type};
use zbus::Connection;

/// Bound on connecting to the bus and on each method call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a missing bus or service is not asked again (unless a new snapshot starts).
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The bus services quiesce talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Logind,
    Systemd,
}

impl Service {
    fn index(self) -> usize {
        self as usize
    }

    fn bus_name(self) -> &'static str {
        match self {
            Service::Logind => "org.freedesktop.login1",
            Service::Systemd => "org.freedesktop.systemd1",
        }
    }

    fn degraded(self) -> &'static str {
        match self {
            Service::Logind => "no inhibitor lock against shutdown and sleep during snapshots",
            Service::Systemd => "hooks run directly, inside the daemon's sandbox, without a systemd unit (process-group fallback)",
        }
    }
}

#[derive(Default)]
struct Slot {
    conn: Option<Connection>,
    /// Closed once the runtime the connection was made on is gone (its holder task dropped).
    runtime_alive: Option<tokio::sync::oneshot::Receiver<()>>,
    /// When connecting (or the bus) last failed.
    no_bus: Option<Instant>,
    /// When each [`Service`] was last found missing (or refused us).
    missing: [Option<Instant>; 2],
    /// Whether the "missing" line was already logged at info level (later ones are debug).
    announced_bus: bool,
    announced: [bool; 2],
}

thread_local! {
    static SLOT: RefCell<Slot> = RefCell::new(Slot::default());
}

fn recent(t: Option<Instant>) -> bool {
    t.is_some_and(|t| t.elapsed() < RETRY_AFTER)
}

/// Forgets every remembered failure, so that the next use tries the bus and services again.
pub fn retry_now() {
    SLOT.with(|s| {
        let mut s = s.borrow_mut();
        s.no_bus = None;
        s.missing = [None; 2];
    });
}

/// Whether `service` is known to be missing (recently), without asking the bus.
pub(crate) fn known_missing(service: Service) -> bool {
    SLOT.with(|s| {
        let s = s.borrow();
        recent(s.no_bus) || recent(s.missing[service.index()])
    })
}

/// The system bus's socket when its address is a plain `unix:path=` that does not exist.
fn missing_bus_socket() -> Option<std::path::PathBuf> {
    let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".to_string());
    // Only the simple form: one address, no other keys; anything else is left to zbus.
    let path = address.strip_prefix("unix:path=")?;
    if path.contains([',', ';']) {
        return None;
    }
    let path = std::path::PathBuf::from(path);
    (!path.exists()).then_some(path)
}

fn mark_no_bus(why: &str) {
    let first = SLOT.with(|s| {
        let mut s = s.borrow_mut();
        s.conn = None;
        s.no_bus = Some(Instant::now());
        !std::mem::replace(&mut s.announced_bus, true)
    });
    if first {
        tracing::info!(
            "no D-Bus system bus ({why}): no inhibitor locks, hooks run directly, without systemd units"
        );
    } else {
        tracing::debug!("no D-Bus system bus ({why})");
    }
}

fn mark_missing(service: Service, why: &str) {
    let first = SLOT.with(|s| {
        let mut s = s.borrow_mut();
        s.missing[service.index()] = Some(Instant::now());
        !std::mem::replace(&mut s.announced[service.index()], true)
    });
    let name = service.bus_name();
    if first {
        tracing::info!(
            "{name} is not available on the system bus ({why}): {}",
            service.degraded()
        );
    } else {
        tracing::debug!("{name} is not available on the system bus ({why})");
    }
}

/// The system bus connection, made on first use; `None` when there is no (working) bus.
pub(crate) async fn system_bus() -> Option<Connection> {
    let cached = SLOT.with(|s| {
        let mut s = s.borrow_mut();
        let runtime_gone = s.runtime_alive.as_mut().is_some_and(|rx| {
            matches!(
                rx.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed)
            )
        });
        if runtime_gone {
            s.conn = None;
            s.runtime_alive = None;
        }
        if recent(s.no_bus) {
            Err(())
        } else {
            Ok(s.conn.clone())
        }
    });
    match cached {
        Err(()) => return None,
        Ok(Some(conn)) => return Some(conn),
        Ok(None) => {}
    }
    // zbus connects to a unix socket from tokio's blocking pool, whose thread then lingers for
    // 10 s: where the socket plainly does not exist (no bus: containers, CI), say so without it.
    if let Some(path) = missing_bus_socket() {
        mark_no_bus(&format!("{} does not exist", path.display()));
        return None;
    }
    let connect = async {
        zbus::connection::Builder::system()?
            .method_timeout(CALL_TIMEOUT)
            .build()
            .await
    };
    match tokio::time::timeout(CALL_TIMEOUT, connect).await {
        Ok(Ok(conn)) => {
            tracing::debug!("connected to the D-Bus system bus");
            let (holder, alive) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let _holder = holder;
                std::future::pending::<()>().await
            });
            SLOT.with(|s| {
                let mut s = s.borrow_mut();
                s.conn = Some(conn.clone());
                s.runtime_alive = Some(alive);
            });
            Some(conn)
        }
        Ok(Err(e)) => {
            mark_no_bus(&e.to_string());
            None
        }
        Err(_) => {
            mark_no_bus(&format!("no answer within {} ms", CALL_TIMEOUT.as_millis()));
            None
        }
    }
}

/// Why a call did not return a result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No bus, no such service, not allowed, no answer: remembered, and already logged.
    #[error("not available")]
    Unavailable,
    /// The service answered with an error (e.g. `org.freedesktop.systemd1.NoSuchUnit`).
    #[error("{name}: {message}")]
    Failed { name: String, message: String },
}

impl CallError {
    /// The D-Bus error name of a [`CallError::Failed`].
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            CallError::Failed { name, .. } => Some(name),
            CallError::Unavailable => None,
        }
    }
}

/// Error names that mean "this service is not there for us": asking again soon is pointless.
const MISSING: &[&str] = &[
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.AccessDenied",
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
];

/// Calls `method` of `service`'s manager object, bounded by [`CALL_TIMEOUT`].
pub(crate) async fn call<B, R>(
    service: Service,
    path: &str,
    interface: &str,
    method: &str,
    body: &B,
) -> Result<R, CallError>
where
    B: Serialize + DynamicType,
    R: DeserializeOwned + Type,
{
    if known_missing(service) {
        return Err(CallError::Unavailable);
    }
    let conn = system_bus().await.ok_or(CallError::Unavailable)?;
    let reply = tokio::time::timeout(
        CALL_TIMEOUT,
        conn.call_method(
            Some(service.bus_name()),
            path,
            Some(interface),
            method,
            body,
        ),
    )
    .await;
    let err = match reply {
        Ok(Ok(msg)) => {
            return msg
                .body()
                .deserialize::<R>()
                .map_err(|e| CallError::Failed {
                    name: "quiesce.BadReply".into(),
                    message: format!("{method}: {e}"),
                })
        }
        Ok(Err(e)) => e,
        Err(_) => {
            // A bus that does not answer in time is treated as no bus, for a while.
            mark_no_bus(&format!(
                "{method} got no answer within {} ms",
                CALL_TIMEOUT.as_millis()
            ));
            return Err(CallError::Unavailable);
        }
    };
    match err {
        zbus::Error::MethodError(name, message, _) => {
            let name = name.as_str().to_owned();
            let message = message.unwrap_or_default();
            if MISSING.contains(&name.as_str())
                || name.starts_with("org.freedesktop.DBus.Error.Spawn")
            {
                mark_missing(service, &format!("{name}: {message}"));
                Err(CallError::Unavailable)
            } else {
                Err(CallError::Failed { name, message })
            }
        }
        zbus::Error::InputOutput(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            mark_no_bus(&format!("{method}: {e}"));
            Err(CallError::Unavailable)
        }
        // The connection broke (the bus restarted?): a new one is made after a while.
        other => {
            mark_no_bus(&format!("{method}: {other}"));
            Err(CallError::Unavailable)
        }
    }
}
