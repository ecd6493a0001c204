//! The `quiesce` binary: dispatches the subcommands of the contract.

#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use quiesce::cli::{Cli, Cmd};
use quiesce::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The watchdog runs before anything else exists: no runtime, no logger, no threads but its own.
    if let Cmd::Watchdog = cli.command {
        return ExitCode::from(quiesce::freezer::watchdog::main() as u8);
    }
    // The hook helper too: single-threaded, so its signal mask and waitpid(-1) cover everything.
    if let Cmd::HookExec(args) = cli.command {
        return ExitCode::from(quiesce::hooks::exec::main(&args.into()) as u8);
    }
    if let Cmd::Daemon(_) = cli.command {
        // Before the first thread: one malloc arena for all of them.
        quiesce::sys::heap::one_arena();
    }
    // journald or stderr, from a thread of its own; dropped last, it flushes what is pending.
    let _log = quiesce::logging::init();
    let code = match cli.command {
        Cmd::Watchdog | Cmd::HookExec(_) => unreachable!(),
        Cmd::CheckConfig(a) => commands::check_config::run(&a.config),
        Cmd::ThawAll(a) => commands::thaw_all::run(&a.config),
        Cmd::Daemon(a) => {
            // One thread does all the daemon's work: it is asynchronous and small (the freeze
            // itself runs in the watchdog process).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build the tokio runtime");
            let result = rt.block_on(commands::daemon::run(a.config));
            rt.shutdown_background();
            match result {
                Ok(code) => code,
                Err(e) => daemon_error(&e),
            }
        }
        Cmd::Snapshot(args) => client_command("snapshot", quiesce::host::orchestrator::run(args)),
        Cmd::Status(args) => client_command("status", quiesce::host::status::run(args)),
        Cmd::Freeze(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build the tokio runtime");
            let result = rt.block_on(commands::freeze::run(args));
            // A blocking read of stdin may still be pending: do not wait for it.
            rt.shutdown_background();
            match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("quiesce freeze: {e:#}");
                    2
                }
            }
        }
    };
    ExitCode::from(code as u8)
}

/// The daemon's exit code for an error, from its kind: a configuration error (already logged
/// line by line) exits 78, anything else is a runtime failure, printed, exit 1.
fn daemon_error(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| c.is::<commands::daemon::ConfigRefused>()) {
        return commands::daemon::EX_CONFIG;
    }
    eprintln!("quiesce daemon: {e:#}");
    1
}

/// Runs a host-side command (an HTTP client of the agents) on a single-threaded runtime; its
/// errors are reported on stderr with exit code 1.
fn client_command(name: &str, run: impl std::future::Future<Output = anyhow::Result<i32>>) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let result = rt.block_on(run);
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quiesce {name}: {e:#}");
            1
        }
    }
}
