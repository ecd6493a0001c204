//! The systemd integrations: the service manager's notify protocol ([`notify`]: READY, STATUS,
//! the watchdog) and its D-Bus APIs ([`dbus`]: logind's inhibitor lock, transient units for
//! hooks). The journald output lives with the rest of the logging, in `crate::logging::journal`.

pub mod dbus;
pub mod notify;
