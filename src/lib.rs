//! quiesce: a guest agent for application-consistent VM snapshots.
//!
//! `ARCHITECTURE.md` at the root has the map. In short: `snapshot` is one snapshot (the pure
//! `lifecycle` state machine and the `driver` that wires it to hooks and the freezer), `agent`
//! keeps them one at a time, `http` is the API in front of it and `qga` the QEMU guest agent
//! protocol (a second front door to the same agent); `freezer` discovers mounts and
//! freezes them through a watchdog process (its decisions in the pure `freezer::core`);
//! `hooks` runs the operator's commands; `host` is the host side (the agents' client, the
//! orchestrator of `quiesce snapshot`, `quiesce status`);
//! `systemd` and `logging` talk to the service manager and the journal; `sys` holds the only
//! unsafe code.

// Unsafe code lives in `sys` only, where every block carries a SAFETY comment.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod auth;
pub mod callbacks;
pub mod cli;
pub mod commands;
pub mod config;
pub mod duration;
pub mod freezer;
pub mod hooks;
pub mod host;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod qga;
pub mod snapshot;
pub mod sys;
pub mod systemd;
