//! `quiesce daemon`: the service.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::agent::Agent;
use crate::config::{Config, Listen};
use crate::freezer::records::{self, AgentLock};
use crate::http;
use crate::snapshot::Context;

/// A bad configuration: the daemon refuses to start (exit 1), like `check-config`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigRefused(pub String);

/// Loads and fully validates the configuration, key file included.
pub fn load(path: &Path) -> Result<Config, ConfigRefused> {
    super::load_config_and_key(path).map_err(|e| ConfigRefused(e.to_string()))
}

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code.
pub async fn run(config_path: PathBuf) -> anyhow::Result<i32> {
    let config = match load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("quiesce daemon: refusing to start with an invalid configuration");
            return Ok(1);
        }
    };
    let auth = super::super::http::hmac::from_config(&config)?;
    let _lock = AgentLock::acquire(&config.state_dir)
        .with_context(|| format!("locking state_dir {}", config.state_dir.display()))?;
    // A previous run that was killed may have left mounts frozen: thaw them first.
    // Before anything is served, on this thread: a blocking-pool thread would linger 10 s.
    for outcome in records::thaw_recorded(&config.state_dir)? {
        tracing::warn!(?outcome, "recovered a mount recorded by a previous run");
    }
    let listener: http::Listener = match config.listen_address().map_err(anyhow::Error::msg)? {
        Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen: cannot bind {addr}"))?
            .into(),
        // The error says what to change (no vsock, port in use, permission): no context added.
        Listen::Vsock { port } => http::vsock::bind(port)?.into(),
    };
    let local = listener.local()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // SIGHUP's default action would kill the daemon mid-snapshot; reloading the configuration
    // comes with the systemd work, until then it is logged and ignored.
    let mut sighup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            tracing::warn!("SIGHUP: configuration reload is not supported yet; restart to reload");
        }
    });
    let callback_key = match config.auth.mode {
        crate::config::AuthMode::Hmac => Some(http::hmac::read_key(&config)?),
        crate::config::AuthMode::None => None,
    };
    let agent = Agent::new(Context {
        config: Arc::new(config),
        exe: PathBuf::from("/proc/self/exe"),
        callback_key,
    });
    let router = http::router(agent.clone(), auth);
    tracing::info!("listening on {local}");
    http::serve(listener, router, async {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    })
    .await;
    tracing::info!("stopping: thawing and running the due post hooks first");
    agent.shutdown().await;
    tracing::info!("stopped");
    Ok(0)
}
