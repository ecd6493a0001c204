//! The command line (contract: Command line). The man page and completions are generated from
//! these definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_PATH;

/// Application-consistent VM snapshots: hooks, filesystem freeze with a watchdog, HTTP API.
#[derive(Debug, Parser)]
#[command(name = "quiesce", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The service: the HTTP API on `listen`. Logs to journald when present, else stderr;
    /// SIGHUP reloads the configuration, SIGTERM thaws, runs the due post hooks and exits 0.
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
    Snapshot(crate::commands::snapshot::SnapshotArgs),
    /// An agent's health and its last snapshots, as JSON.
    Status(crate::commands::status::StatusArgs),
    /// Internal: the watchdog process that holds a freeze (started by quiesce itself).
    #[command(hide = true)]
    Watchdog,
    /// Internal: runs one hook command and stops its whole process tree (started by quiesce).
    #[command(hide = true)]
    HookExec(crate::hooks::exec::HookExecArgs),
}

/// `--config PATH`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The main configuration file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
}

/// Arguments of `quiesce freeze`.
#[derive(Debug, Args)]
pub struct FreezeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Restrict the freeze to this mount point (repeatable); each must be a candidate.
    #[arg(long = "mount", value_name = "PATH")]
    pub mounts: Vec<PathBuf>,
    /// Hard deadline after the first FIFREEZE (default: freeze.timeout; at most max_timeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Run CMD with `sh -c` while frozen, then thaw (CMD's output goes to stderr).
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Skip the parallel syncfs pre-flush (for benchmarks: writers then stall longer).
    #[arg(long)]
    pub no_flush: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s)
}
