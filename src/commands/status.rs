//! `quiesce status`: one agent's health and its last snapshots, as JSON on stdout.
//!
//! Prints `{"agent": URL, "health": {...}, "snapshots": [...]}` (the snapshots of
//! `GET /v1/snapshots`, newest first). Exit 0 when both answered; 1 when the agent cannot be
//! reached, or when it answers but refuses the list (e.g. 401 without the right `--key-file`):
//! then what was learnt is still printed, with `"snapshots": null` and an `"error"`.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use crate::client::AgentClient;

/// Arguments of `quiesce status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's URL, e.g. http://192.0.2.10:7380.
    #[arg(long, value_name = "URL")]
    pub agent: String,
    /// The shared HMAC key (the agent's auth.key_file); without it requests are not signed.
    #[arg(long, value_name = "F")]
    pub key_file: Option<PathBuf>,
}

/// Runs the command; returns the exit code.
pub async fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let key = super::snapshot::read_key(args.key_file.as_deref())?;
    let keyed = key.is_some();
    let client = AgentClient::new(&args.agent, key)?;
    let health = client.health().await?;
    if !health.is_success() {
        anyhow::bail!(
            "{}: the health check failed: {}",
            args.agent,
            health.describe()
        );
    }
    let mut out = json!({ "agent": args.agent, "health": health.body, "snapshots": null });
    let list = client.list().await?;
    let code = match list.body.get("snapshots") {
        Some(snapshots) if list.status == 200 => {
            out["snapshots"] = snapshots.clone();
            0
        }
        _ => {
            let why = format!(
                "{}: the list of snapshots was refused: {}{}",
                args.agent,
                list.describe(),
                super::snapshot::hint(list.status, &list.body, keyed)
            );
            eprintln!("quiesce status: {why}");
            out["error"] = Value::String(why);
            1
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("the status serializes")
    );
    Ok(code)
}
