//! `quiesce freeze`: a local freeze under the watchdog, without the daemon.
//!
//! Output, on stdout, one JSON object per line: `{"event":"frozen",...}` once every mount has an
//! outcome, then `{"event":"done",...}` after the thaw. Exit 0 only when every target froze and
//! was thawed before the deadline.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{signal, SignalKind};

use super::args::FreezeArgs;
use crate::freezer::protocol::{escaped_path, ThawReason};
use crate::freezer::records::{self, AgentLock, Recovery};
use crate::freezer::select::SkipReason;
use crate::freezer::session::{rfc3339, FreezeSession, MountStatus, Outcome};
use crate::freezer::{self, FreezeOptions};

/// A mount that is not frozen, and why.
#[derive(Debug, Serialize)]
struct Skipped {
    #[serde(with = "escaped_path")]
    path: PathBuf,
    fstype: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    event: &'a str,
    thaw_reason: Option<&'static str>,
    freeze_started_at: Option<String>,
    frozen_at: Option<String>,
    thawed_at: Option<String>,
    /// From the first FIFREEZE call to the end of the last thaw.
    frozen_ms: Option<f64>,
    mounts: &'a [MountStatus],
    skipped: &'a [Skipped],
    exec_exit_code: Option<i32>,
    recovered: &'a [Recovery],
    warnings: &'a [String],
}

fn print_report(
    event: &str,
    s: &FreezeSession,
    skipped: &[Skipped],
    exec_exit_code: Option<i32>,
    recovered: &[Recovery],
) {
    let report = Report {
        event,
        thaw_reason: s.thaw_reason.map(|r| r.as_str()),
        freeze_started_at: s.times.freeze_started_ms.map(rfc3339),
        frozen_at: s.times.settled_ms.map(rfc3339),
        thawed_at: s.times.thawed_ms.map(rfc3339),
        frozen_ms: s.times.frozen_us.map(|us| us as f64 / 1000.0),
        mounts: &s.mounts,
        skipped,
        exec_exit_code,
        recovered,
        warnings: &s.warnings,
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
}

/// Runs the command; returns the exit code.
pub async fn run(args: FreezeArgs) -> anyhow::Result<i32> {
    let config = super::load_config(&args.config.config)?;
    if !config.freeze.enabled {
        bail!("freezing is disabled in the configuration (freeze.enabled: false)");
    }
    let timeout = args.timeout.unwrap_or(config.freeze.timeout);
    if timeout > config.freeze.max_timeout || timeout.is_zero() {
        bail!(
            "--timeout {} must be above 0 and at most freeze.max_timeout ({})",
            crate::duration::format(timeout),
            crate::duration::format(config.freeze.max_timeout)
        );
    }
    let state_dir = config.state_dir.clone();
    let _lock = AgentLock::acquire(&state_dir)
        .with_context(|| format!("locking state_dir {}", state_dir.display()))?;
    // Whatever a killed predecessor left frozen is thawed first (same filesystems only).
    let dir = state_dir.clone();
    let recovered = tokio::task::spawn_blocking(move || records::thaw_recorded(&dir))
        .await?
        .context("recovering records in state_dir")?;

    let requested = (!args.mounts.is_empty()).then_some(args.mounts.as_slice());
    let discovery = freezer::discover(&config.rules(), requested)?;
    // The report lists the mounts the operator may have expected frozen; those left out by the
    // include list or the --mount list, or hidden, are noise there (check-config shows them).
    let skipped: Vec<Skipped> = discovery
        .skipped
        .iter()
        .filter(|(_, why)| {
            !matches!(
                why,
                SkipReason::NotIncluded | SkipReason::NotRequested | SkipReason::Shadowed
            )
        })
        .map(|(m, why)| Skipped {
            path: m.mount_point.clone(),
            fstype: m.fstype.clone(),
            reason: why.to_string(),
        })
        .collect();
    if discovery.targets.is_empty() {
        bail!("no mount to freeze: every mount is skipped (`quiesce check-config` shows why)");
    }
    let plan = freezer::plan(
        &discovery,
        &FreezeOptions {
            timeout,
            preflush: !args.no_flush,
            flush_budget: timeout,
            state_dir,
        },
    )?;

    // Signals are watched before the freeze, so that none can kill us half-way.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let mut session = FreezeSession::start(&plan, Path::new("/proc/self/exe")).await?;
    session.freeze().await;
    print_report("frozen", &session, &skipped, None, &recovered);

    let mut exec_child = match &args.exec {
        Some(cmd) => {
            let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
            Some(
                tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(stderr))
                    .spawn()
                    .with_context(|| format!("running --exec {cmd:?}"))?,
            )
        }
        None => None,
    };
    let mut exec_exit_code = None;
    let reason = if session.thaw_reason.is_some() {
        None
    } else {
        let told = async {
            match exec_child.as_mut() {
                Some(child) => {
                    let status = child.wait().await;
                    status.ok().map(|s| s.code().unwrap_or(-1))
                }
                None => {
                    let mut line = String::new();
                    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
                    let _ = stdin.read_line(&mut line).await;
                    None
                }
            }
        };
        tokio::select! {
            _ = session.wait_thawed() => None,
            code = told => { exec_exit_code = code; Some(ThawReason::Host) }
            _ = sigterm.recv() => Some(ThawReason::Shutdown),
            _ = sigint.recv() => Some(ThawReason::Shutdown),
        }
    };
    if let Some(reason) = reason {
        session.thaw(reason).await;
    }
    if let (Some(child), None) = (exec_child.as_mut(), exec_exit_code) {
        // The deadline or a signal came first: the command still decides nothing, but its
        // exit code belongs in the report.
        if reason != Some(ThawReason::Shutdown) {
            exec_exit_code = child.wait().await.ok().map(|s| s.code().unwrap_or(-1));
        }
    }
    print_report("done", &session, &skipped, exec_exit_code, &recovered);
    let all_froze = session
        .mounts
        .iter()
        .all(|m| matches!(m.outcome, Outcome::Thawed) || matches!(m.outcome, Outcome::Unsupported));
    let ok = all_froze
        && session.thaw_reason == Some(ThawReason::Host)
        && exec_exit_code.unwrap_or(0) == 0;
    session.finish().await;
    Ok(if ok { 0 } else { 1 })
}
