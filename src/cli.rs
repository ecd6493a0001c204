//! The command line (contract: Command line). The man page and completions are generated from
//! these definitions.

use clap::{Parser, Subcommand};

use crate::commands::args::{ConfigArg, FreezeArgs, SnapshotArgs, StatusArgs};

/// Application-consistent VM snapshots: hooks, filesystem freeze with a watchdog, HTTP API.
#[derive(Debug, Parser)]
#[command(name = "quiesce", version, about, long_about = None, after_help = CLI_AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// The end of `quiesce --help` and of quiesce(8).
const CLI_AFTER_HELP: &str = "\
The daemon exits 78 (EX_CONFIG) on a configuration error and 1 on a runtime failure \
(quiesce daemon --help); check-config exits 1 on a configuration error.";

/// The daemon's exit codes (the unit's `RestartPreventExitStatus=78` keeps a bad configuration
/// from restarting it in a loop).
pub const DAEMON_EXIT_STATUS: &str = "\
Exit status:
  0   stopped by SIGTERM or SIGINT (after the thaw and the due post hooks)
  1   a runtime failure (e.g. the listener cannot be bound, state_dir is locked by another agent)
  78  a configuration error (EX_CONFIG): the configuration or its key file is invalid; \
the unit does not restart on it";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The service: the HTTP API on `listen`. Logs to journald when present, else stderr;
    /// SIGHUP reloads the configuration, SIGTERM thaws, runs the due post hooks and exits 0.
    #[command(after_help = DAEMON_EXIT_STATUS)]
    Daemon(ConfigArg),
    /// Parse and validate the configuration; print the effective hooks and the mounts that
    /// would be frozen (exit 1 with each error as file:line:column: message).
    CheckConfig(ConfigArg),
    /// Thaw every mount that quiesce recorded as frozen in its state_dir, and nothing else.
    /// Safe at any time and idempotent; exit 0 when nothing of ours is left frozen.
    ThawAll(ConfigArg),
    /// Freeze the selected mounts locally, without the daemon, under the same watchdog and
    /// deadline; thaw when CMD exits (--exec), when stdin gets a line or reaches its end, on
    /// SIGINT/SIGTERM, or at the deadline. Prints JSON lines: one when frozen, one at the end.
    Freeze(FreezeArgs),
    /// The reference host orchestrator: freeze every --agent (a consistency group), run CMD
    /// once while all are frozen, thaw, and print the final report as JSON.
    Snapshot(SnapshotArgs),
    /// An agent's health, whether anything is frozen, and its last snapshots: a table for
    /// people (colour on a terminal, unless NO_COLOR is set), JSON with --json.
    Status(StatusArgs),
    /// Internal: the watchdog process that holds a freeze (started by quiesce itself).
    #[command(hide = true)]
    Watchdog,
    /// Internal: runs one hook command and stops its whole process tree (started by quiesce).
    #[command(hide = true)]
    HookExec(crate::commands::args::HookExecArgs),
}
