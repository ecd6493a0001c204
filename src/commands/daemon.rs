//! `quiesce daemon`: the service.
//!
//! Start-up: signals first (so that none is lost or kills the daemon half-started), then the
//! configuration, the state_dir lock, the recovery of mounts a killed run left frozen, the
//! listener, and READY=1. SIGTERM/SIGINT stop it (thaw, due post hooks, exit 0); SIGHUP reloads
//! the configuration and keeps the running one when the new one is bad.

use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_core::Stream;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::watch;

use crate::agent::Agent;
use crate::config::{AuthMode, Config, Listen};
use crate::freezer::recovery::{self, AgentLock};
use crate::http::{self, AuthSlot};
use crate::logging::ids;
use crate::snapshot::Context;
use crate::systemd::notify;

/// A bad configuration: the daemon refuses to start. `main` finds it in the error's chain and
/// exits [`EX_CONFIG`] (a runtime failure exits 1), so that the unit does not restart on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigRefused(pub String);

/// The exit code of a configuration error (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

/// Logs a configuration error line by line (journald gets each at error priority) and makes it
/// the daemon's error: `main` exits [`EX_CONFIG`] without printing it again.
fn refused(e: ConfigRefused) -> anyhow::Error {
    for line in e.0.lines() {
        tracing::error!("{line}");
    }
    tracing::error!("refusing to start with an invalid configuration");
    e.into()
}

/// Loads and fully validates the configuration, key file included.
pub fn load(path: &Path) -> Result<Config, ConfigRefused> {
    super::load_config_and_key(path).map_err(|e| ConfigRefused(e.to_string()))
}

/// On top of the post hooks' own timeouts, the time a stop may take (thaw, reports, exit).
const STOP_SLACK: Duration = Duration::from_secs(15);

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code. A configuration error is a
/// [`ConfigRefused`] in the error's chain (already logged).
pub async fn run(config_path: PathBuf) -> anyhow::Result<i32> {
    // Before anything else: from here on SIGTERM, SIGINT and SIGHUP are queued, never fatal.
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing the signal handlers")?;
    started_unix();
    let config = load(&config_path).map_err(refused)?;
    let _lock = AgentLock::acquire(&config.state_dir)
        .with_context(|| format!("locking state_dir {}", config.state_dir.display()))?;
    // A previous run that was killed may have left mounts frozen: thaw them first.
    // Before anything is served, on this thread: a blocking-pool thread would linger 10 s.
    for outcome in recovery::thaw_recorded(&config.state_dir)? {
        tracing::warn!(?outcome, "recovered a mount recorded by a previous run");
    }
    let listen = config
        .listen_address()
        .map_err(|e| refused(ConfigRefused(format!("listen: {e}"))))?;
    let listener: http::Listener = match listen {
        Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen: cannot bind {addr}"))?
            .into(),
        // The error says what to change (no vsock, port in use, permission): no context added.
        Listen::Vsock { port } => http::vsock::bind(port)?.into(),
        Listen::Unix(path) => http::unix::bind(&path)?,
    };
    let local = listener.local()?;
    // Bound before READY=1, like the listener: a socket that cannot be made stops the start.
    let qga = if config.qga.enabled {
        let path = crate::config::QgaPath::parse(&config.qga.path).map_err(anyhow::Error::msg)?;
        Some(crate::qga::Endpoint::bind(&path)?)
    } else {
        None
    };
    // The key file passed the config's checks a moment ago; one that changed since is still
    // the operator's configuration to fix.
    let (auth, callback_key) =
        credentials(&config).map_err(|e| refused(ConfigRefused(format!("{e:#}"))))?;
    let auth = AuthSlot::new(auth);
    let agent = Agent::new(Context {
        config: Arc::new(config),
        exe: PathBuf::from("/proc/self/exe"),
        callback_key,
    });
    let router = http::router(agent.clone(), auth.clone()).layer(
        axum::middleware::from_fn_with_state(agent.clone(), count_refusals),
    );
    let qga_task = qga.map(|endpoint| {
        tracing::info!(
            "qga: serving the QEMU guest agent protocol on {}",
            endpoint.describe()
        );
        tokio::spawn(endpoint.serve(agent.clone()))
    });
    tracing::info!("listening on {local}");
    notify::ready(&status_now(&agent, &local));
    // After READY=1: the spare watchdog's start is not part of the start-up time.
    agent.prepare_freezer();

    tokio::spawn(follow_status(agent.clone()));
    if let Some(every) = notify::watchdog_interval() {
        tokio::spawn(watchdog_pings(agent.clone(), every));
    }
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let service = Service {
        path: config_path,
        agent: agent.clone(),
        auth,
        local,
    };
    tokio::spawn(async move {
        let mut stopping = false;
        while let Some(sig) = poll_fn(|cx| Pin::new(&mut signals).poll_next(cx)).await {
            match sig {
                SIGHUP if stopping => {
                    tracing::warn!("SIGHUP while stopping: the configuration is not reloaded")
                }
                SIGHUP => service.reload(),
                _ if stopping => tracing::warn!(
                    "{} while stopping: already thawing and running the due post hooks \
                     (SIGKILL would skip the post hooks; the watchdog would still thaw)",
                    signal_name(sig)
                ),
                _ => {
                    stopping = true;
                    tracing::info!("{}: stopping", signal_name(sig));
                    let _ = stop_tx.send(true);
                }
            }
        }
    });
    http::serve(listener, router, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    })
    .await;
    let busy = agent.busy();
    notify::stopping(if busy {
        "stopping: thawing and running the due post hooks"
    } else {
        "stopping"
    });
    if busy {
        let ctx = agent.context();
        let hooks: Duration = ctx
            .config
            .hooks
            .iter()
            .filter(|h| h.post.is_some())
            .map(|h| h.timeout.saturating_add(crate::hooks::DEFAULT_KILL_GRACE))
            .sum();
        notify::extend_stop_timeout(hooks.saturating_add(STOP_SLACK));
        tracing::info!("stopping: thawing and running the due post hooks first");
    }
    agent.shutdown().await;
    if let Some(task) = qga_task {
        // Dropping the endpoint removes its unix socket.
        task.abort();
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(0)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// Counts the API's 401 answers into the metrics (`quiesce_auth_failures_total`), around the
/// router: whichever check refused the request, the answer is what a host saw.
async fn count_refusals(
    axum::extract::State(agent): axum::extract::State<Arc<Agent>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(req).await;
    if response.status() == axum::http::StatusCode::UNAUTHORIZED {
        agent.metrics().auth_refused();
    }
    response
}

/// The request authenticator (`None`: requests are not authenticated) and the callback
/// signing key of a configuration.
type Credentials = (
    Option<Arc<dyn http::Authenticate>>,
    Option<crate::auth::Key>,
);

/// The Unix time this process started: signed requests made before it are refused (a
/// restart must not reopen the replay window of requests captured before it).
fn started_unix() -> u64 {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(http::hmac::now_unix)
}

fn credentials(config: &Config) -> anyhow::Result<Credentials> {
    match config.auth.mode {
        AuthMode::Hmac => {
            let key = http::hmac::read_key(config)?;
            Ok((
                Some(Arc::new(http::hmac::Hmac::new(key.clone(), started_unix()))),
                Some(key),
            ))
        }
        AuthMode::None => Ok((None, None)),
    }
}

/// What a reload works on.
struct Service {
    path: PathBuf,
    agent: Arc<Agent>,
    auth: Arc<AuthSlot>,
    local: String,
}

impl Service {
    /// SIGHUP: loads and validates the configuration again; puts it in force for the next
    /// snapshot and request, or keeps the running one and logs every error. A snapshot that is
    /// running finishes with the configuration it started with.
    fn reload(&self) {
        notify::reloading();
        let running = self.agent.context();
        let outcome = self.try_reload(&running);
        match &outcome {
            Ok(changes) => tracing::info!(
                message_id = ids::CONFIG_RELOADED,
                "configuration reloaded from {}: {}",
                self.path.display(),
                changes
            ),
            Err(errors) => {
                for line in errors.lines() {
                    tracing::error!("reload: {line}");
                }
                tracing::error!(
                    message_id = ids::CONFIG_RELOAD_REFUSED,
                    "configuration reload refused: the running configuration stays in force"
                );
            }
        }
        notify::reloaded(&status_now(&self.agent, &self.local));
    }

    /// Applies the new configuration; `Err` carries the errors, one per line.
    fn try_reload(&self, running: &Context) -> Result<String, String> {
        let mut new = load(&self.path).map_err(|e| e.0)?;
        let old = &running.config;
        let mut notes = Vec::new();
        // The listener and the state_dir lock live as long as the process.
        if new.listen != old.listen {
            notes.push(format!(
                "listen stays {} until a restart (the new file says {})",
                old.listen, new.listen
            ));
            new.listen = old.listen.clone();
        }
        if new.state_dir != old.state_dir {
            notes.push(format!(
                "state_dir stays {} until a restart (the new file says {})",
                old.state_dir.display(),
                new.state_dir.display()
            ));
            new.state_dir = old.state_dir.clone();
        }
        if new.qga.enabled != old.qga.enabled || new.qga.path != old.qga.path {
            notes.push(format!(
                "qga.enabled and qga.path stay {} and {} until a restart",
                old.qga.enabled, old.qga.path
            ));
            new.qga.enabled = old.qga.enabled;
            new.qga.path = old.qga.path.clone();
        }
        for note in &notes {
            tracing::warn!("reload: {note}");
        }
        let (auth, callback_key) = credentials(&new).map_err(|e| format!("{e:#}"))?;
        let key_changed = new.auth.mode != old.auth.mode || callback_key != running.callback_key;
        // An unchanged key keeps its authenticator, and with it the nonces already seen.
        if key_changed {
            self.auth.set(auth);
        }
        let summary = format!(
            "{} hooks, freeze {}, auth {}{}",
            new.hooks.len(),
            if new.freezes() { "enabled" } else { "disabled" },
            match new.auth.mode {
                AuthMode::Hmac => "hmac",
                AuthMode::None => "none",
            },
            if key_changed { " (new key)" } else { "" }
        );
        self.agent.set_context(Context {
            config: Arc::new(new),
            exe: running.exe.clone(),
            callback_key,
        });
        Ok(summary)
    }
}

/// The status line as it stands: the newest snapshot's, or where the daemon listens.
fn status_now(agent: &Agent, local: &str) -> String {
    match agent.latest().borrow().as_ref() {
        Some(s) => s.status_line(),
        None => format!("listening on {local}, no snapshot yet"),
    }
}

/// Keeps `STATUS=` on the newest snapshot: its progress, then its result.
async fn follow_status(agent: Arc<Agent>) {
    let mut latest = agent.latest();
    let mut last = String::new();
    while latest.changed().await.is_ok() {
        let line = match latest.borrow_and_update().as_ref() {
            Some(s) => s.status_line(),
            None => continue,
        };
        if line != last {
            notify::status(&line);
            last = line;
        }
    }
}

/// WATCHDOG=1 from the daemon's only runtime thread: a stuck runtime stops the pings and
/// systemd restarts the service (the freezer's watchdog process thaws on its own when the
/// daemon dies).
async fn watchdog_pings(agent: Arc<Agent>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Takes the agent's lock: a deadlocked agent stops the pings too.
        let _ = agent.busy();
        notify::ping();
    }
}
