//! The HTTP API (contract: HTTP API). Handlers only translate requests into calls on the
//! [`Agent`]; authentication runs first for every request but health and metrics: from the
//! headers alone before any body is read (a request whose headers fail costs no body read),
//! then on the body, read under the same deadline as the headers ([`REQUEST_TIMEOUT`]).
//! Connections that have not authenticated cannot take the place of those that have (see
//! [`pool`]). Refusals are logged within limits (see [`refusals`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::{self, Agent, ControlError, CreateError, Created};
use crate::snapshot::Control;

pub mod decode;
pub mod hmac;
pub mod pool;
pub mod refusals;
#[cfg(test)]
mod tests;
pub mod unix;
pub mod vsock;

pub use crate::auth::AuthError;

/// Largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest `?wait=` long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// How long a client may take to send a whole request, headers and body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers); above it the request is refused (431).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Authenticated connections served at once (see [`pool`]).
pub const MAX_CONNECTIONS: usize = pool::MAX_AUTHENTICATED;

/// Checks a request's signature; every error is a 401.
pub trait Authenticate: Send + Sync {
    /// The checks that need no body, run before it is read; spends nothing.
    fn check_headers(&self, headers: &HeaderMap) -> Result<(), AuthError>;
    /// The whole check; `Ok` spends the request's nonce.
    fn check(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), AuthError>;
}

/// What the server knows of a request's connection (absent when the router is called
/// in-process, as tests do).
pub struct ConnInfo {
    /// The peer's IP address (none on vsock and unix sockets).
    pub peer_ip: Option<std::net::IpAddr>,
    /// The peer as logged (`10.0.0.1:51234`, `vsock:2:1025`, `unix:uid=0,pid=42`).
    pub peer: String,
    /// When the whole request must have been read.
    pub deadline: tokio::time::Instant,
    /// Set once the request is read (the deadline no longer applies).
    pub read: std::sync::atomic::AtomicBool,
    slot: std::sync::Mutex<pool::Slot>,
}

impl ConnInfo {
    fn mark_read(&self) {
        self.read.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn promote(&self) -> bool {
        self.slot.lock().map(|mut s| s.promote()).unwrap_or(false)
    }
}

/// The authenticator in force; a configuration reload replaces it (a new key, a new mode).
#[derive(Default)]
pub struct AuthSlot(std::sync::RwLock<Option<Arc<dyn Authenticate>>>);

impl AuthSlot {
    /// A slot holding `auth` (`None`: requests are not authenticated).
    pub fn new(auth: Option<Arc<dyn Authenticate>>) -> Arc<AuthSlot> {
        Arc::new(AuthSlot(std::sync::RwLock::new(auth)))
    }

    /// The authenticator for the request at hand.
    pub fn get(&self) -> Option<Arc<dyn Authenticate>> {
        self.0.read().map(|a| a.clone()).unwrap_or(None)
    }

    /// Puts another authenticator in force for the requests that arrive from now on.
    pub fn set(&self, auth: Option<Arc<dyn Authenticate>>) {
        if let Ok(mut slot) = self.0.write() {
            *slot = auth;
        }
    }
}

#[derive(Clone)]
struct AppState {
    agent: Arc<Agent>,
    auth: Arc<AuthSlot>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn snapshot_with_error(
    status: StatusCode,
    snap: &crate::snapshot::model::Snapshot,
    msg: String,
) -> Response {
    let mut v = serde_json::to_value(snap).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("error".into(), Value::String(msg));
    }
    (status, Json(v)).into_response()
}

/// The API's router.
pub fn router(agent: Arc<Agent>, auth: Arc<AuthSlot>) -> Router {
    let state = AppState { agent, auth };
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/snapshots", post(create).get(list))
        .route("/v1/snapshots/{id}", get(show).delete(abort))
        .route("/v1/snapshots/{id}/thaw", post(thaw))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Authenticates (401) from the headers, then reads the body under the request's deadline
/// (408, 413 past the limit) and checks the signature over it (401); except for health and
/// metrics, which reveal nothing about snapshots and whose body is never read.
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let conn = req.extensions().get::<Arc<ConnInfo>>().cloned();
    let (parts, body) = req.into_parts();
    let open = matches!(parts.method, Method::GET | Method::HEAD)
        && matches!(parts.uri.path(), "/v1/health" | "/metrics");
    if open {
        if let Some(c) = &conn {
            c.mark_read();
        }
        return next.run(Request::from_parts(parts, Body::empty())).await;
    }
    let peer = conn.as_ref().map_or("-", |c| c.peer.as_str());
    let auth = state.auth.get();
    if let Some(auth) = &auth {
        if let Err(e) = auth.check_headers(&parts.headers) {
            return refuse(&parts, peer, e);
        }
    }
    let read = axum::body::to_bytes(body, BODY_LIMIT);
    let read = match &conn {
        Some(c) => match tokio::time::timeout_at(c.deadline, read).await {
            Ok(r) => r,
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request was not read within {} s",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                )
            }
        },
        None => read.await,
    };
    let bytes = match read {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {BODY_LIMIT} bytes"),
            )
        }
    };
    if let Some(auth) = &auth {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Err(e) = auth.check(parts.method.as_str(), pq, &parts.headers, &bytes) {
            return refuse(&parts, peer, e);
        }
    }
    if let Some(c) = &conn {
        c.mark_read();
        if !c.promote() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests at once: retry in a moment",
            );
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A 401, logged within the limits of [`refusals`].
fn refuse(parts: &axum::http::request::Parts, peer: &str, e: AuthError) -> Response {
    refusals::log(parts.method.as_str(), parts.uri.path(), peer, e.reason());
    error(StatusCode::UNAUTHORIZED, format!("{} ({})", e, e.reason()))
}

async fn health() -> Response {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        st.agent.metrics().render(),
    )
        .into_response()
}

async fn create(
    State(st): State<AppState>,
    conn: Option<axum::Extension<Arc<ConnInfo>>>,
    body: Bytes,
) -> Response {
    let peer_ip = conn.and_then(|c| c.peer_ip);
    let parsed = match decode::create_body(&body) {
        Ok(b) => b,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    // Preparing reads /proc/self/mountinfo and stats the target mount points: well under a
    // millisecond, and never while a snapshot is frozen (a create is refused as busy before
    // it touches anything), so it runs right here rather than on a new blocking thread.
    match st.agent.create(parsed, peer_ip) {
        Ok(Created::New(s)) => (StatusCode::ACCEPTED, Json(s)).into_response(),
        Ok(Created::Existing(s)) => (StatusCode::OK, Json(s)).into_response(),
        Err(CreateError::Busy { active }) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": "another snapshot is not finished", "active": active })),
        )
            .into_response(),
        Err(CreateError::BadRequest(msg)) => error(StatusCode::BAD_REQUEST, msg),
        Err(CreateError::ShuttingDown) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        ),
    }
}

async fn list(State(st): State<AppState>) -> Response {
    Json(json!({ "snapshots": st.agent.list() })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    wait: Option<String>,
    timeout_ms: Option<u64>,
}

async fn show(
    State(st): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid query: {e}")),
    };
    let Some(rx) = st.agent.watch(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no snapshot {id}"));
    };
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000)).min(MAX_WAIT);
    let snap = match q.wait.as_deref() {
        None => rx.borrow().clone(),
        Some("frozen") => agent::wait_until(rx, timeout, agent::reached_frozen).await,
        Some("done") => agent::wait_until(rx, timeout, |s| s.state.is_end()).await,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("wait must be frozen or done, not {other:?}"),
            )
        }
    };
    Json(snap).into_response()
}

async fn thaw(State(st): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    let taken = match decode::thaw_body(&body) {
        Ok(t) => t,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    control_response(
        st.agent.control(&id, Control::HostThaw { taken }).await,
        &id,
    )
}

async fn abort(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    control_response(st.agent.control(&id, Control::Abort).await, &id)
}

fn control_response(
    r: Result<crate::snapshot::model::Snapshot, ControlError>,
    id: &str,
) -> Response {
    match r {
        Ok(s) => (StatusCode::OK, Json(s)).into_response(),
        Err(ControlError::NotFound) => error(StatusCode::NOT_FOUND, format!("no snapshot {id}")),
        Err(ControlError::Conflict(s, msg)) => snapshot_with_error(StatusCode::CONFLICT, &s, msg),
    }
}

/// A bound listener that [`serve`] accepts connections on.
pub enum Listener {
    /// `listen: IP:PORT`.
    Tcp(tokio::net::TcpListener),
    /// `listen: vsock:PORT`, bound by [`vsock::bind`].
    Vsock(tokio_vsock::VsockListener),
    /// `listen: unix:PATH`, bound by [`unix::bind`]: root's peers only.
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

/// What an accepted connection is to hyper, whatever its transport.
pub trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Connection for T {}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its IP address, for TCP.
    pub ip: Option<std::net::IpAddr>,
    /// As logged: `10.0.0.1:51234`, `vsock:2:1025`, `unix:uid=0,pid=42`.
    pub text: String,
    /// What the per-peer cap counts by: the IP, the vsock CID, the unix uid.
    pub key: String,
}

impl Listener {
    /// Accepts one connection with its peer; `Ok(None)` for a connection refused at once (a
    /// unix socket peer that is not root: closed without a byte read).
    pub async fn accept(&self) -> io::Result<Option<(Box<dyn Connection>, Peer)>> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                let ip = peer.ip().to_canonical();
                Ok(Some((
                    Box::new(stream),
                    Peer {
                        ip: Some(ip),
                        text: peer.to_string(),
                        key: ip.to_string(),
                    },
                )))
            }
            Listener::Vsock(l) => {
                let (stream, peer) = l.accept().await?;
                Ok(Some((
                    Box::new(stream),
                    Peer {
                        ip: None,
                        text: format!("vsock:{}:{}", peer.cid(), peer.port()),
                        key: format!("vsock:{}", peer.cid()),
                    },
                )))
            }
            Listener::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                match unix::root_peer(&stream) {
                    Ok(text) => Ok(Some((
                        Box::new(stream),
                        Peer {
                            ip: None,
                            text,
                            key: "unix".into(),
                        },
                    ))),
                    Err(why) => {
                        tracing::debug!("unix socket: closed a connection: {why}");
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Where it listens, written as in the config: `127.0.0.1:7380`, `vsock:7380`,
    /// `unix:/run/quiesce/api.sock`.
    pub fn local(&self) -> io::Result<String> {
        Ok(match self {
            Listener::Tcp(l) => l.local_addr()?.to_string(),
            Listener::Vsock(l) => format!("vsock:{}", l.local_addr()?.port()),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        })
    }
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(l: tokio::net::TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl From<tokio_vsock::VsockListener> for Listener {
    fn from(l: tokio_vsock::VsockListener) -> Self {
        Listener::Vsock(l)
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting.
///
/// The accept loop never waits for a slot: a new connection may evict the oldest one that has
/// not authenticated yet (see [`pool`]). Each connection must deliver its whole request within
/// [`REQUEST_TIMEOUT`] of being accepted, and its head within [`MAX_HEADER_BYTES`].
pub async fn serve(
    listener: impl Into<Listener>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    let listener = listener.into();
    let pool = pool::Pool::new();
    let ticker = tokio::spawn(refusals::ticker(Duration::from_secs(2)));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(Some(x)) => x,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (slot, mut evicted) = pool.admit(&peer.key);
        let info = Arc::new(ConnInfo {
            peer_ip: peer.ip,
            peer: peer.text,
            deadline: tokio::time::Instant::now() + REQUEST_TIMEOUT,
            read: std::sync::atomic::AtomicBool::new(false),
            slot: std::sync::Mutex::new(slot),
        });
        let router = router.clone();
        let conn_info = info.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(conn_info.clone());
                router.clone().oneshot(req.map(Body::new))
            });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                // One request per connection: no idle keep-alive connection can linger (the
                // idle timeout is zero); clients on loopback or vsock pay a connect, ~0.1 ms.
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let deadline = tokio::time::sleep_until(info.deadline);
            tokio::pin!(deadline);
            let mut evictable = true;
            let mut timed = true;
            loop {
                tokio::select! {
                    r = &mut conn => {
                        if let Err(e) = r {
                            tracing::debug!(peer = %info.peer, "connection: {e}");
                        }
                        break;
                    }
                    r = &mut evicted, if evictable => match r {
                        Ok(()) => {
                            tracing::debug!(peer = %info.peer, "closed to make room for a new connection");
                            break;
                        }
                        // Authenticated: it stays.
                        Err(_) => evictable = false,
                    },
                    _ = &mut deadline, if timed => {
                        if info.read.load(std::sync::atomic::Ordering::SeqCst) {
                            // Read in time: the handler may take long (a long poll).
                            timed = false;
                            continue;
                        }
                        tracing::debug!(peer = %info.peer, "request not read within the deadline: closed");
                        break;
                    }
                }
            }
        });
        // Let the new connection read what it was sent before the next accept may evict it:
        // a signed request that arrived whole is authenticated before anyone can push it out
        // (the runtime has one thread; without this, a backlog of connections would be
        // accepted in one go, each evicting an older one that was never read).
        tokio::task::yield_now().await;
    }
    ticker.abort();
}
