//! The arguments of every subcommand (clap types), in one place. `crate::cli` assembles them
//! into the command line and each `commands::*::run` takes its own; nothing here depends on
//! either, so the imports point one way: cli → commands::args ← commands.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::DEFAULT_PATH;

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
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub timeout: Option<Duration>,
    /// Run CMD with `sh -c` while frozen, then thaw (CMD's output goes to stderr).
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Skip the parallel syncfs pre-flush (for benchmarks: writers then stall longer).
    #[arg(long)]
    pub no_flush: bool,
}

/// Arguments of `quiesce snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The agent's URL, e.g. http://192.0.2.10:7380; several form a consistency group.
    #[arg(long = "agent", value_name = "URL", required = true)]
    pub agents: Vec<String>,
    /// The shared HMAC key (the agents' auth.key_file); without it requests are not signed.
    #[arg(long, value_name = "F")]
    pub key_file: Option<PathBuf>,
    /// The storage-level snapshot: run once with `sh -c` while every agent is frozen (its
    /// output goes to stderr); thaw `taken` if it exits 0, else `failed`. Without it, the
    /// agents are thawed `taken` as soon as all are frozen.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// The consistency to ask for (the agent's default: application).
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub consistency: Option<ConsistencyArg>,
    /// The agents' hard deadline after freezing (e.g. 10s; default: their freeze.timeout).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub freeze_timeout: Option<Duration>,
    /// Freeze only this mount point (repeatable; on every agent, each must be a candidate).
    #[arg(long = "mount", value_name = "PATH")]
    pub mounts: Vec<PathBuf>,
}

/// `--consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    Application,
    #[value(name = "file_system")]
    FileSystem,
}

impl ConsistencyArg {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyArg::Application => "application",
            ConsistencyArg::FileSystem => "file_system",
        }
    }
}

/// Arguments of `quiesce status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's URL, e.g. http://192.0.2.10:7380.
    #[arg(long, value_name = "URL")]
    pub agent: String,
    /// The shared HMAC key (the agent's auth.key_file); without it requests are not signed.
    #[arg(long, value_name = "F")]
    pub key_file: Option<PathBuf>,
    /// Print the JSON document for scripts (`{"agent", "health", "snapshots"}`) instead of the
    /// human view.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Redraw the human view every --interval until interrupted (like `watch`).
    #[arg(long)]
    pub watch: bool,
    /// How often --watch redraws (e.g. 500ms, 2s, 1m).
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "2s",
          requires = "watch")]
    pub interval: Duration,
}

/// A `--interval`: a contract duration of at least 100 ms (a redraw loop, not a busy loop).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("interval {s:?} is too short (at least 100ms)"));
    }
    Ok(d)
}

/// Arguments of the hidden `quiesce hook-exec` subcommand (started by the hook runner).
#[derive(Debug, Args)]
pub struct HookExecArgs {
    /// Stop the hook's process tree this many milliseconds after it started.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: u64,
    /// Time between SIGTERM and SIGKILL when the tree is stopped.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub grace_ms: u64,
    /// Treat end-of-file on stdin as a cancellation (the runner holds the pipe's other end).
    #[arg(long)]
    pub cancel_on_eof: bool,
    /// Start the hook only once a `g` byte arrives on stdin (the runner first moves this process
    /// into the hook's scope unit); end-of-file or a cancelling signal before it means the hook
    /// never starts.
    #[arg(long)]
    pub wait_go: bool,
    /// The hook's executable and its arguments.
    #[arg(last = true, required = true, value_name = "ARGV")]
    pub argv: Vec<OsString>,
}

impl From<HookExecArgs> for crate::hooks::exec::ExecOptions {
    fn from(a: HookExecArgs) -> Self {
        crate::hooks::exec::ExecOptions {
            timeout_ms: a.timeout_ms,
            grace_ms: a.grace_ms,
            cancel_on_eof: a.cancel_on_eof,
            wait_go: a.wait_go,
            argv: a.argv,
        }
    }
}
