//! The QEMU guest agent protocol (contract: `qga`): the front door of libvirt, Nova, KubeVirt
//! and Proxmox. [`protocol`] is the pure core (framing, decoding, replies); this module is the
//! thin shell around it: the virtio-serial port or a unix socket, the [`Agent`] calls of the
//! freeze commands, and the relay of every other command to a qemu-ga (`qga.forward`).
//!
//! A qga freeze is a snapshot like an HTTP one: created through [`Agent::create_on`] with
//! channel `qga`, so one snapshot at a time holds across both front doors.

pub mod protocol;

use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::{UnixListener, UnixStream};

use crate::agent::{Agent, CreateBody, CreateError, Created, RequestedWire};
use crate::config::{QgaConsistency, QgaPath};
use crate::snapshot::lifecycle::State;
use crate::snapshot::model::{Channel, Snapshot};
use crate::snapshot::Control;
use protocol::{Command, Error, Frame, Framer, Reply, Request};

/// How long to wait before opening the port again after it could not be opened or failed.
const PORT_RETRY: Duration = Duration::from_secs(1);
/// With no host on the other end the port reads EOF (HUP) at once: the port is kept open and
/// read again this much later, as qemu-ga does (its main loop sleeps 100 ms). Closing and
/// reopening it instead is an event for the hypervisor side: libvirt drops its agent
/// connection on it, and the two can chase each other.
const PORT_IDLE: Duration = Duration::from_millis(100);
/// The longest a relayed command may take (qemu-ga's own commands are quick or asynchronous).
const RELAY_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest reply of the relayed qemu-ga kept (guest-file-read answers in base64).
const RELAY_REPLY_LIMIT: u64 = 64 * 1024 * 1024;

/// A bound endpoint, ready to serve.
pub enum Endpoint {
    Unix {
        listener: UnixListener,
        path: SocketFile,
    },
    Port(PathBuf),
}

/// The unix socket's file, removed when the endpoint goes.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Endpoint {
    /// Binds `unix:PATH` (mode 0600, a stale socket replaced); the port is opened by `serve`.
    pub fn bind(path: &QgaPath) -> anyhow::Result<Endpoint> {
        match path {
            QgaPath::Unix(p) => {
                if let Ok(meta) = std::fs::symlink_metadata(p) {
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(p);
                    }
                }
                let listener = UnixListener::bind(p)
                    .with_context(|| format!("qga.path: cannot listen on unix:{}", p.display()))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("qga.path: chmod 0600 {}", p.display()))?;
                Ok(Endpoint::Unix {
                    listener,
                    path: SocketFile(p.clone()),
                })
            }
            // Not opened here: the port may appear later (hotplug) or be held by a qemu-ga that
            // is being stopped; `serve` opens it and keeps trying.
            QgaPath::Port(p) => Ok(Endpoint::Port(p.clone())),
        }
    }

    /// Where it serves, for the log.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Unix { path, .. } => format!("unix:{}", path.0.display()),
            Endpoint::Port(p) => p.display().to_string(),
        }
    }

    /// Serves until the daemon stops.
    pub async fn serve(self, agent: Arc<Agent>) {
        match self {
            Endpoint::Unix {
                listener,
                path: _file,
            } => loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        // Root's alone: mode 0600, and the peer checked too (as the HTTP
                        // API's unix socket does).
                        match stream.peer_cred() {
                            Ok(c) if c.uid() == 0 => {}
                            Ok(c) => {
                                tracing::warn!("qga: refused a connection from uid {}", c.uid());
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "qga: refused a connection: no peer credentials: {e}"
                                );
                                continue;
                            }
                        }
                        let agent = agent.clone();
                        tokio::spawn(async move {
                            if let Err(e) = session(&agent, stream, false).await {
                                tracing::debug!("qga: connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("qga: accept: {e}");
                        tokio::time::sleep(PORT_RETRY).await;
                    }
                }
            },
            Endpoint::Port(path) => {
                // Said once until the port opens again, not every second.
                let mut warned = false;
                loop {
                    // EOF or HUP: no host on the other end. Not an error: keep the port, wait.
                    match open_port(&path) {
                        Ok(port) => {
                            warned = false;
                            // Returns only on an error: EOF/HUP keeps the port (see PORT_IDLE).
                            if let Err(e) = session(&agent, port, true).await {
                                tracing::warn!("qga: {}: {e}", path.display());
                            }
                        }
                        Err(e) if !warned => {
                            warned = true;
                            tracing::warn!(
                                "qga: cannot open {} ({e}); trying again every {}: does the VM \
                                 have the org.qemu.guest_agent.0 channel, and is qemu-ga off \
                                 the port (docs/qga.md)?",
                                path.display(),
                                crate::duration::format(PORT_RETRY)
                            );
                        }
                        Err(_) => {}
                    }
                    tokio::time::sleep(PORT_RETRY).await;
                }
            }
        }
    }
}

/// The virtio-serial port, non-blocking on the runtime: tokio's pipe halves accept any
/// pollable file when unchecked (one open file, registered twice, for reading and writing).
type Port = tokio::io::Join<pipe::Receiver, pipe::Sender>;

fn open_port(path: &Path) -> io::Result<Port> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let writer = pipe::Sender::from_file_unchecked(file.try_clone()?)?;
    let reader = pipe::Receiver::from_file_unchecked(file)?;
    Ok(tokio::io::join(reader, writer))
}

/// One byte stream: requests in, replies out, one at a time, until EOF (a socket) or an
/// error. On the port (`port`), EOF means no host is connected: the port is kept open, a
/// partial request is dropped (the next host starts afresh) and it is read again later.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    agent: &Agent,
    mut io: S,
    port: bool,
) -> io::Result<()> {
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut connected = true;
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            if !port {
                return Ok(());
            }
            if connected {
                tracing::debug!("qga: no host connected to the port");
                connected = false;
                framer = Framer::new();
            }
            tokio::time::sleep(PORT_IDLE).await;
            continue;
        }
        connected = true;
        for frame in framer.push(&buf[..n]) {
            let reply = handle(agent, &frame).await;
            io.write_all(&reply).await?;
        }
    }
}

/// True while quiesce holds any mount frozen, whichever channel ordered it.
fn holds_frozen(agent: &Agent) -> bool {
    agent
        .active()
        .is_some_and(|s| s.mounts.iter().any(|m| m.frozen))
}

fn frozen_count(s: &Snapshot) -> usize {
    s.mounts.iter().filter(|m| m.frozen).count()
}

/// The reply line to one frame.
async fn handle(agent: &Agent, frame: &Frame) -> Vec<u8> {
    let (req, cmd) = match protocol::answer_locally(frame, holds_frozen(agent)) {
        Ok(reply) => return reply.encode(),
        Err(pair) => pair,
    };
    let forward = agent.context().config.qga.forward.clone();
    let forward = forward.strip_prefix("unix:").map(PathBuf::from);
    let body = match cmd {
        None => match &forward {
            Some(path) => return relay(path, &req).await,
            None => Err(Error::not_found(&req.execute)),
        },
        Some(Command::Info) => {
            let relayed = match &forward {
                Some(path) => relayed_commands(path).await,
                None => Vec::new(),
            };
            Ok(protocol::info(env!("CARGO_PKG_VERSION"), &relayed))
        }
        Some(Command::FreezeStatus) => Ok(Value::from(if holds_frozen(agent) {
            "frozen"
        } else {
            "thawed"
        })),
        Some(Command::Freeze { mountpoints }) => freeze(agent, mountpoints).await,
        Some(Command::Thaw) => thaw(agent).await,
        // Answered by the core.
        Some(Command::Sync { .. } | Command::Ping) => Err(Error::generic("internal error")),
    };
    Reply {
        body,
        id: req.id.clone(),
        delimited: false,
    }
    .encode()
}

/// `guest-fsfreeze-freeze(-list)`: a snapshot with channel `qga`, answered once every target
/// has an outcome.
async fn freeze(agent: &Agent, mountpoints: Option<Vec<String>>) -> Result<Value, Error> {
    let config = agent.context().config;
    let q = &config.qga;
    let body = CreateBody {
        consistency: Some(match q.consistency {
            QgaConsistency::Application => RequestedWire::Application,
            QgaConsistency::FileSystem => RequestedWire::FileSystem,
        }),
        freeze_timeout_ms: Some(config.qga_freeze_timeout().as_millis() as u64),
        mounts: mountpoints.map(|m| m.into_iter().map(PathBuf::from).collect()),
        ..Default::default()
    };
    let id = match agent.create_on(Channel::Qga, body, None) {
        Ok(Created::New(s) | Created::Existing(s)) => s.id,
        Err(CreateError::Busy { active }) => {
            return Err(Error::generic(format!(
                "another snapshot is in progress (id {active}): nothing was frozen"
            )))
        }
        Err(e) => return Err(Error::generic(format!("{e}: nothing was frozen"))),
    };
    let Some(mut rx) = agent.watch(&id) else {
        return Err(Error::generic("the snapshot is gone"));
    };
    let reached = rx
        .wait_for(|s| !matches!(s.state, State::PreHooks | State::Freezing))
        .await
        .map(|s| s.clone())
        .ok();
    let snap = reached.unwrap_or_else(|| rx.borrow().clone());
    if snap.state != State::Frozen {
        let why = if snap.errors.is_empty() {
            format!(
                "it is {}",
                serde_json::to_string(&snap.state).unwrap_or_default()
            )
        } else {
            serde_json::to_string(&snap.errors).unwrap_or_default()
        };
        tracing::warn!(snapshot_id = %id, "qga: the freeze failed: {why}");
        return Err(Error::generic(format!(
            "the freeze failed (snapshot {id}): {why}; nothing is frozen"
        )));
    }
    let n = frozen_count(&snap);
    if n == 0 {
        // The caller sends no thaw after 0 (libvirt): the snapshot ends now, post hooks
        // included.
        let _ = agent.control(&id, Control::HostThaw { taken: true }).await;
    }
    Ok(Value::from(n))
}

/// `guest-fsfreeze-thaw`: the host's thaw (`taken`) of the qga snapshot, answered once thawed.
async fn thaw(agent: &Agent) -> Result<Value, Error> {
    let Some(active) = agent.active() else {
        return Ok(Value::from(0));
    };
    let n = frozen_count(&active);
    if active.channel != Channel::Qga {
        if n == 0 {
            return Ok(Value::from(0));
        }
        return Err(Error::generic(format!(
            "the mounts are frozen by snapshot {} ordered over {}: its host thaws it",
            active.id,
            serde_json::to_string(&active.channel).unwrap_or_default()
        )));
    }
    if active.state != State::Frozen {
        return Ok(Value::from(0));
    }
    match agent
        .control(&active.id, Control::HostThaw { taken: true })
        .await
    {
        Ok(_) => Ok(Value::from(n)),
        // The deadline (or a stop) came first: nothing is frozen.
        Err(_) => Ok(Value::from(0)),
    }
}

/// Relays one request to the qemu-ga at `path`; its reply, re-encoded as one compact line.
async fn relay(path: &Path, req: &Request) -> Vec<u8> {
    let mut msg = serde_json::Map::new();
    msg.insert("execute".into(), Value::String(req.execute.clone()));
    if !req.arguments.is_empty() {
        msg.insert("arguments".into(), Value::Object(req.arguments.clone()));
    }
    if let Some(id) = &req.id {
        msg.insert("id".into(), id.clone());
    }
    let exchange = async {
        let mut s = UnixStream::connect(path).await?;
        let mut line = serde_json::to_vec(&Value::Object(msg))?;
        line.push(b'\n');
        s.write_all(&line).await?;
        let mut reader = tokio::io::BufReader::new(s).take(RELAY_REPLY_LIMIT);
        let mut reply = Vec::new();
        reader.read_until(b'\n', &mut reply).await?;
        let v: Value = serde_json::from_slice(&reply)?;
        io::Result::Ok(v)
    };
    match tokio::time::timeout(RELAY_TIMEOUT, exchange).await {
        Ok(Ok(Value::Object(mut reply))) => {
            // Re-encoded so that the host sees one compact line like every other reply.
            if let (Some(id), false) = (&req.id, reply.contains_key("id")) {
                reply.insert("id".into(), id.clone());
            }
            let mut out = serde_json::to_vec(&Value::Object(reply)).unwrap_or_default();
            out.push(b'\n');
            out
        }
        Ok(Ok(_)) => Reply::err(
            req,
            Error::generic("the relayed qemu-ga answered no object"),
        )
        .encode(),
        Ok(Err(e)) => {
            tracing::warn!("qga: relaying {} to {}: {e}", req.execute, path.display());
            Reply::err(
                req,
                Error::generic(format!(
                    "cannot relay {} to the qemu-ga at unix:{}: {e}",
                    req.execute,
                    path.display()
                )),
            )
            .encode()
        }
        Err(_) => Reply::err(
            req,
            Error::generic(format!(
                "the qemu-ga at unix:{} did not answer {} within {}",
                path.display(),
                req.execute,
                crate::duration::format(RELAY_TIMEOUT)
            )),
        )
        .encode(),
    }
}

/// The commands of the relayed qemu-ga (for `guest-info`); none when it does not answer.
async fn relayed_commands(path: &Path) -> Vec<Value> {
    let req = Request {
        execute: "guest-info".into(),
        arguments: serde_json::Map::new(),
        id: None,
    };
    let line = tokio::time::timeout(Duration::from_secs(5), relay(path, &req))
        .await
        .unwrap_or_default();
    serde_json::from_slice::<Value>(&line)
        .ok()
        .and_then(|v| v["return"]["supported_commands"].as_array().cloned())
        .unwrap_or_default()
}

/// The shell in-process: a session over an in-memory stream, the Agent on the fakes of the
/// freezer and the hook runner (no root, no mounts).
#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    use super::*;
    use crate::snapshot::fakes::{FakeFreezers, FakeHooks};

    struct Scene {
        agent: Arc<Agent>,
        freezers: Arc<FakeFreezers>,
        hooks: Arc<FakeHooks>,
        host: BufReader<DuplexStream>,
    }

    fn scene(extra_yaml: &str) -> Scene {
        let (agent, hooks, freezers) = crate::agent::on_fakes(&format!(
            "qga: {{enabled: true, path: unix:/run/q.sock}}\n{extra_yaml}"
        ));
        let (host, guest) = tokio::io::duplex(1 << 20);
        let a = agent.clone();
        tokio::spawn(async move { session(&a, guest, false).await });
        Scene {
            agent,
            freezers,
            hooks,
            host: BufReader::new(host),
        }
    }

    impl Scene {
        async fn call(&mut self, req: &str) -> Value {
            self.host.get_mut().write_all(req.as_bytes()).await.unwrap();
            let mut line = String::new();
            self.host.read_line(&mut line).await.unwrap();
            serde_json::from_str(&line).unwrap()
        }
    }

    #[tokio::test]
    async fn freeze_and_thaw_are_a_qga_snapshot() {
        let mut s = scene("");
        assert_eq!(
            s.call(r#"{"execute":"guest-fsfreeze-freeze"}"#).await,
            json!({"return": 2})
        );
        let snap = s.agent.active().unwrap();
        assert_eq!((snap.channel, snap.state), (Channel::Qga, State::Frozen));
        assert_eq!(
            s.call(r#"{"execute":"guest-fsfreeze-status"}"#).await,
            json!({"return": "frozen"})
        );
        assert_eq!(
            s.call(r#"{"execute":"guest-fsfreeze-thaw","id":1}"#).await,
            json!({"return": 2, "id": 1})
        );
        let rx = s.agent.watch(&snap.id).unwrap();
        let end = crate::agent::wait_until(rx, Duration::from_secs(10), |s| s.state.is_end()).await;
        assert_eq!(end.state, State::Succeeded);
        assert_eq!(
            s.call(r#"{"execute":"guest-fsfreeze-thaw"}"#).await,
            json!({"return": 0})
        );
    }

    #[tokio::test]
    async fn a_pre_hook_that_aborts_is_an_error_and_nothing_is_frozen() {
        let mut s =
            scene("hooks: [{name: db, pre: [/bin/db], post: [/bin/db], on_failure: abort}]\n");
        s.hooks
            .set("db", crate::hooks::Phase::Pre, 1, Duration::ZERO);
        let r = s.call(r#"{"execute":"guest-fsfreeze-freeze"}"#).await;
        assert_eq!(r["error"]["class"], "GenericError", "{r}");
        assert!(s.freezers.records().is_empty());
        assert_eq!(
            s.call(r#"{"execute":"guest-fsfreeze-status"}"#).await,
            json!({"return": "thawed"})
        );
    }

    #[tokio::test]
    async fn an_http_snapshot_is_its_own_host_s_to_thaw() {
        let mut s = scene("");
        let created = s.agent.create(CreateBody::default(), None).unwrap();
        let Created::New(snap) = created else {
            panic!("new")
        };
        let rx = s.agent.watch(&snap.id).unwrap();
        crate::agent::wait_until(rx, Duration::from_secs(10), crate::agent::reached_frozen).await;
        let r = s.call(r#"{"execute":"guest-fsfreeze-thaw"}"#).await;
        assert_eq!(r["error"]["class"], "GenericError", "{r}");
        assert_eq!(s.agent.active().unwrap().state, State::Frozen);
        // A freeze is refused by the frozen mode; relayed commands too.
        let r = s.call(r#"{"execute":"guest-fsfreeze-freeze"}"#).await;
        assert_eq!(r["error"]["class"], "CommandNotFound", "{r}");
        s.agent.shutdown().await;
    }

    #[tokio::test]
    async fn freeze_list_of_a_non_candidate_changes_nothing() {
        let mut s = scene("");
        let r = s
            .call(r#"{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["/data","/nope"]}}"#)
            .await;
        assert_eq!(r["error"]["class"], "GenericError", "{r}");
        assert!(s.agent.list().is_empty());
        assert_eq!(
            s.call(
                r#"{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["/logs"]}}"#
            )
            .await,
            json!({"return": 1})
        );
    }

    #[tokio::test]
    async fn an_unreachable_forward_is_a_generic_error_and_info_still_answers() {
        let mut s = scene("");
        let mut ctx = s.agent.context();
        let mut config = (*ctx.config).clone();
        config.qga.forward = "unix:/nonexistent/qemu-ga.sock".into();
        ctx.config = Arc::new(config);
        s.agent.set_context(ctx);
        let r = s.call(r#"{"execute":"guest-get-osinfo","id":"x"}"#).await;
        assert_eq!(
            (r["error"]["class"].as_str(), r["id"].as_str()),
            (Some("GenericError"), Some("x")),
            "{r}"
        );
        assert!(
            r["error"]["desc"]
                .as_str()
                .unwrap()
                .contains("cannot relay"),
            "{r}"
        );
        let info = s.call(r#"{"execute":"guest-info"}"#).await;
        assert_eq!(
            info["return"]["supported_commands"]
                .as_array()
                .unwrap()
                .len(),
            protocol::SERVED.len()
        );
    }
}
