//! quiesce: a guest agent for application-consistent VM snapshots.
//!
//! The tree follows the job split of the design: `freezer` discovers mounts, orders them along
//! the storage stack and freezes them through a watchdog process that never leaves one frozen;
//! `config` reads the operator's YAML; `commands` holds the command-line entry points.

// Unsafe code lives in `freezer::ioctl` and `heap` only, where every block carries a SAFETY
// comment.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod auth;
pub mod callbacks;
pub mod cli;
pub mod client;
pub mod client_unix;
pub mod commands;
pub mod config;
pub mod dbus;
pub mod duration;
pub mod freezer;
pub mod heap;
pub mod hooks;
pub mod http;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod snapshot;
