//! The HTTP API (contract: HTTP API). Handlers only translate requests into calls on the
//! [`Agent`]; authentication runs first, on the buffered body, for every request but health
//! and metrics.

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
pub mod vsock;

/// Largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest `?wait=` long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Checks a request's signature: `Err` is the message of a 401.
pub trait Authenticate: Send + Sync {
    fn check(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), String>;
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

/// Buffers the body (413 past the limit) and checks the signature (401), except for health
/// and metrics, which reveal nothing about snapshots.
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {BODY_LIMIT} bytes"),
            )
        }
    };
    let open = parts.method == Method::GET && matches!(parts.uri.path(), "/v1/health" | "/metrics");
    if let (Some(auth), false) = (state.auth.get(), open) {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Err(msg) = auth.check(parts.method.as_str(), pq, &parts.headers, &bytes) {
            tracing::warn!(method = %parts.method, path = %parts.uri.path(), "refused: {msg}");
            return error(StatusCode::UNAUTHORIZED, msg);
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
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

async fn create(State(st): State<AppState>, body: Bytes) -> Response {
    let parsed = match decode::create_body(&body) {
        Ok(b) => b,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    // Preparing reads /proc/self/mountinfo and stats the target mount points: well under a
    // millisecond, and never while a snapshot is frozen (a create is refused as busy before
    // it touches anything), so it runs right here rather than on a new blocking thread.
    match st.agent.create(parsed) {
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
}

/// What an accepted connection is to hyper, whatever its transport.
pub trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Connection for T {}

impl Listener {
    /// Accepts one connection; returns it with its peer (`10.0.0.1:51234`, `vsock:2:1025`).
    pub async fn accept(&self) -> io::Result<(Box<dyn Connection>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((Box::new(stream), peer.to_string()))
            }
            Listener::Vsock(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((
                    Box::new(stream),
                    format!("vsock:{}:{}", peer.cid(), peer.port()),
                ))
            }
        }
    }

    /// Where it listens, written as in the config: `127.0.0.1:7380` or `vsock:7380`.
    pub fn local(&self) -> io::Result<String> {
        Ok(match self {
            Listener::Tcp(l) => l.local_addr()?.to_string(),
            Listener::Vsock(l) => format!("vsock:{}", l.local_addr()?.port()),
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
pub async fn serve(
    listener: impl Into<Listener>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let listener = listener.into();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore open"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                // One request per connection: no idle keep-alive connection can linger (the
                // idle timeout is zero); clients on loopback or vsock pay a connect, ~0.1 ms.
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection: {e}");
            }
            drop(permit);
        });
    }
}
