//! The host side of the HTTP API (contract: HTTP API, Authentication): one [`AgentClient`] per
//! agent URL, used by `quiesce snapshot` and `quiesce status`.
//!
//! Every request but `GET /v1/health` is signed when a key is given: the signature covers the
//! exact path and query and the exact body bytes that go on the wire, with a new nonce and the
//! current time for each request (a retry is a new request). Answers come back as a [`Reply`]
//! whatever their status; only transport failures are errors, and they name the method, the URL
//! and what failed.

use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::{json, Value};

use crate::auth::{self, Key};
use crate::outbound::{
    describe_error, error_chain, path_and_query, signed_headers, CONNECT_TIMEOUT,
};
use crate::snapshot::model::Received;

/// Whole-request limit of the short requests (thaw and abort answer once everything is thawed).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Added to a long poll's `timeout_ms` for the client's own limit, so that the agent's answer
/// (the current Snapshot when the wait times out) arrives before the client gives up.
pub const LONG_POLL_SLACK: Duration = Duration::from_secs(10);
/// Largest answer read (the list of the last 100 snapshots with their hook output fits).
const MAX_REPLY_BYTES: usize = 16 << 20;

/// A request that got no HTTP answer, or an agent URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The `--agent` URL is unusable.
    #[error("invalid agent URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The HTTP client could not be set up (TLS roots).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// No random nonce for the signature (`/dev/urandom` unreadable).
    #[error("{method} {url}: cannot make a nonce to sign the request: {source}")]
    Nonce {
        method: Method,
        url: String,
        source: std::io::Error,
    },
    /// The request was not answered: no connection, a reset, a timeout, a body that broke off.
    #[error("{method} {url}: {what}")]
    Transport {
        method: Method,
        url: String,
        what: String,
        /// The connection was never established, so the agent did not see the request.
        connect: bool,
    },
}

impl ClientError {
    /// The agent certainly did not see the request (no connection was made).
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Transport { connect: true, .. })
    }
}

/// An HTTP answer: its status and its JSON body (a body that is not JSON comes as a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as a Snapshot (the answer of the snapshot endpoints; a 409 carries one too).
    pub fn snapshot(&self) -> Result<Received, String> {
        Received::from_value(&self.body)
    }

    /// The Snapshots of a `GET /v1/snapshots` answer, newest first.
    pub fn snapshots(&self) -> Result<Vec<Received>, String> {
        match self.body.get("snapshots") {
            Some(Value::Array(list)) => list.iter().map(Received::from_value).collect(),
            _ => Err(format!("no list of snapshots in {}", self.body)),
        }
    }

    /// The agent's `error` message, else the body as text, with the status: for error messages.
    pub fn describe(&self) -> String {
        let reason = reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let detail = match &self.body {
            Value::Object(m) => match m.get("error") {
                Some(Value::String(e)) => e.clone(),
                _ => self.body.to_string(),
            },
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let mut text = format!("HTTP {} {reason}", self.status);
        if !detail.trim().is_empty() {
            text.push_str(": ");
            text.push_str(detail.trim());
        }
        text
    }
}

/// A client for one agent, cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct AgentClient {
    base: Url,
    http: reqwest::Client,
    key: Option<Key>,
    /// `--agent unix:PATH`: the agent's unix socket (`base` is then `http://localhost/`),
    /// with the argument as given.
    unix: Option<(std::path::PathBuf, String)>,
}

impl AgentClient {
    /// A client for the agent at `base_url` (`http://HOST:PORT`, optionally with a path prefix);
    /// requests are signed when `key` is given.
    pub fn new(base_url: &str, key: Option<Key>) -> Result<AgentClient, ClientError> {
        if let Some(path) = base_url.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(ClientError::BadUrl {
                    url: base_url.to_string(),
                    reason: "the socket path must be absolute: unix:/run/quiesce/api.sock".into(),
                });
            }
            return Ok(AgentClient {
                base: Url::parse("http://localhost/").expect("a valid URL"),
                http: http_client()?,
                key,
                unix: Some((path.into(), base_url.to_string())),
            });
        }
        let base = parse_base_url(base_url)?;
        Ok(AgentClient {
            base,
            http: http_client()?,
            key,
            unix: None,
        })
    }

    /// The agent's base URL as given (normalised).
    pub fn base_url(&self) -> &str {
        match &self.unix {
            Some((_, given)) => given,
            None => self.base.as_str(),
        }
    }

    /// `GET /v1/health` (never signed: the agent does not check it).
    pub async fn health(&self) -> Result<Reply, ClientError> {
        let url = self.url(&["v1", "health"]);
        self.send(Method::GET, url, None, REQUEST_TIMEOUT, false)
            .await
    }

    /// `GET /metrics` (never signed): the Prometheus text, as a string body.
    pub async fn metrics(&self) -> Result<Reply, ClientError> {
        let url = self.url(&["metrics"]);
        self.send(Method::GET, url, None, REQUEST_TIMEOUT, false)
            .await
    }

    /// `GET /v1/snapshots`: the last 100, newest first.
    pub async fn list(&self) -> Result<Reply, ClientError> {
        let url = self.url(&["v1", "snapshots"]);
        self.send(Method::GET, url, None, REQUEST_TIMEOUT, true)
            .await
    }

    /// `POST /v1/snapshots` with `body`: 202 new, 200 known `request_id`, 409 busy, 400 bad.
    pub async fn create(&self, body: &Value) -> Result<Reply, ClientError> {
        let url = self.url(&["v1", "snapshots"]);
        let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
        self.send(Method::POST, url, Some(bytes), REQUEST_TIMEOUT, true)
            .await
    }

    /// `GET /v1/snapshots/{id}`, or with `wait` (`"frozen"` or `"done"`) a long poll that the
    /// agent answers within `timeout_ms` (ignored without `wait`).
    pub async fn get(
        &self,
        id: &str,
        wait: Option<&str>,
        timeout_ms: u64,
    ) -> Result<Reply, ClientError> {
        let mut url = self.url(&["v1", "snapshots", id]);
        let mut limit = REQUEST_TIMEOUT;
        if let Some(w) = wait {
            url.query_pairs_mut()
                .append_pair("wait", w)
                .append_pair("timeout_ms", &timeout_ms.to_string());
            limit = Duration::from_millis(timeout_ms) + LONG_POLL_SLACK;
        }
        self.send(Method::GET, url, None, limit, true).await
    }

    /// `POST /v1/snapshots/{id}/thaw` with `storage_snapshot` `taken` or `failed`.
    pub async fn thaw(&self, id: &str, taken: bool) -> Result<Reply, ClientError> {
        let url = self.url(&["v1", "snapshots", id, "thaw"]);
        let outcome = if taken { "taken" } else { "failed" };
        let bytes = serde_json::to_vec(&json!({ "storage_snapshot": outcome }))
            .expect("a JSON value serializes");
        self.send(Method::POST, url, Some(bytes), REQUEST_TIMEOUT, true)
            .await
    }

    /// `DELETE /v1/snapshots/{id}`: abort, answered once nothing is frozen.
    pub async fn abort(&self, id: &str) -> Result<Reply, ClientError> {
        let url = self.url(&["v1", "snapshots", id]);
        self.send(Method::DELETE, url, None, REQUEST_TIMEOUT, true)
            .await
    }

    /// The base URL with `segments` appended (each percent-encoded as needed).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http(s) URLs have a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        limit: Duration,
        sign: bool,
    ) -> Result<Reply, ClientError> {
        let body = body.unwrap_or_default();
        let signature = match (&self.key, sign) {
            (Some(key), true) => Some(signed_headers(key, method.as_str(), &url, &body).map_err(
                |source| ClientError::Nonce {
                    method: method.clone(),
                    url: url.to_string(),
                    source,
                },
            )?),
            _ => None,
        };
        let (status, bytes) = match &self.unix {
            Some((path, _)) => {
                self.send_unix(path, &method, &url, signature, body, limit)
                    .await?
            }
            None => {
                let mut request = self
                    .http
                    .request(method.clone(), url.clone())
                    .timeout(limit);
                if let Some(headers) = &signature {
                    for (name, value) in headers.pairs() {
                        request = request.header(name, value);
                    }
                }
                if !body.is_empty() {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body);
                }
                let transport = |e: reqwest::Error| ClientError::Transport {
                    method: method.clone(),
                    url: url.to_string(),
                    connect: e.is_connect(),
                    what: describe_error(&e, limit),
                };
                let response = request.send().await.map_err(transport)?;
                let status = response.status().as_u16();
                (status, read_limited(response).await.map_err(transport)?)
            }
        };
        let body = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) if bytes.is_empty() => Value::Null,
            Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        };
        Ok(Reply { status, body })
    }
}

impl AgentClient {
    /// The same request over the agent's unix socket ([`crate::host::unix`]).
    async fn send_unix(
        &self,
        path: &std::path::Path,
        method: &Method,
        url: &Url,
        signature: Option<auth::SignedHeaders>,
        body: Vec<u8>,
        limit: Duration,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let shown = format!("unix:{}{}", path.display(), path_and_query(url));
        let mut request = hyper::Request::builder()
            .method(method.as_str())
            .uri(path_and_query(url))
            .header("host", "localhost")
            .header("user-agent", concat!("quiesce/", env!("CARGO_PKG_VERSION")));
        if let Some(headers) = &signature {
            for (name, value) in headers.pairs() {
                request = request.header(name, value);
            }
        }
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .header("content-length", body.len())
            .body(axum::body::Body::from(body))
            .map_err(|e| ClientError::BadUrl {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        crate::host::unix::send(path, request, limit, MAX_REPLY_BYTES)
            .await
            .map_err(|(what, connect)| ClientError::Transport {
                method: method.clone(),
                url: shown,
                what,
                connect,
            })
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_REPLY_BYTES.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room < chunk.len() {
            break;
        }
    }
    Ok(out)
}

/// Checks an agent URL: http or https, a host, no query or fragment.
fn parse_base_url(text: &str) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: text.to_string(),
        reason: reason.to_string(),
    };
    if text.starts_with("vsock:") {
        return Err(bad(
            "vsock is not supported by this client: reach the agent over TCP (http://HOST:PORT)",
        ));
    }
    if !text.contains("://") {
        return Err(bad(&format!("no scheme: did you mean http://{text} ?")));
    }
    let url = Url::parse(text).map_err(|e| {
        bad(&format!(
            "{e} (expected http://HOST:PORT, e.g. http://127.0.0.1:7380)"
        ))
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(bad(&format!(
                "the scheme must be http or https, not {other:?}"
            )))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment has no meaning here"));
    }
    Ok(url)
}

/// The HTTP client of the CLI: HTTP/1.1, no proxy from the environment (agents are reached
/// directly, and a proxy would see the signed requests), no redirects (a signature covers one
/// path only).
fn http_client() -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("quiesce/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Setup(error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_urls_are_checked() {
        for good in [
            "http://127.0.0.1:7380",
            "http://127.0.0.1:7380/",
            "https://agent.example:7380/prefix",
            "http://[::1]:7380",
        ] {
            AgentClient::new(good, None).unwrap();
        }
        for (bad, why) in [
            ("127.0.0.1:7380", "did you mean http://127.0.0.1:7380 ?"),
            ("localhost:7380", "no scheme"),
            ("ftp://h/", "http or https"),
            ("vsock:7380", "vsock is not supported"),
            ("ftp://h:7380", "not \"ftp\""),
            ("http://h:7380/?x=1", "query"),
            ("http://h:7380/#top", "fragment"),
            ("http://", "empty host"),
        ] {
            let err = AgentClient::new(bad, None).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn paths_are_built_under_the_base_and_signed_as_sent() {
        let c = AgentClient::new("http://h:1", None).unwrap();
        let u = c.url(&["v1", "snapshots", "abc", "thaw"]);
        assert_eq!(u.as_str(), "http://h:1/v1/snapshots/abc/thaw");
        let c = AgentClient::new("http://h:1/agents/a/", None).unwrap();
        let mut u = c.url(&["v1", "snapshots", "a b/c"]);
        assert_eq!(u.path(), "/agents/a/v1/snapshots/a%20b%2Fc");
        u.query_pairs_mut()
            .append_pair("wait", "frozen")
            .append_pair("timeout_ms", "5000");
        assert_eq!(
            path_and_query(&u),
            "/agents/a/v1/snapshots/a%20b%2Fc?wait=frozen&timeout_ms=5000"
        );
    }

    #[test]
    fn signed_headers_verify_on_the_agent_side() {
        let key = Key::from_bytes(vec![7; 32]).unwrap();
        let url = Url::parse("http://h:1/v1/snapshots/x?wait=done&timeout_ms=1").unwrap();
        let h = signed_headers(&key, "GET", &url, b"").unwrap();
        let now: u64 = h.timestamp.parse().unwrap();
        let mut v = auth::Verifier::new(key);
        v.verify(
            "GET",
            "/v1/snapshots/x?wait=done&timeout_ms=1",
            Some(&h.timestamp),
            Some(&h.nonce),
            Some(&h.signature),
            b"",
            now,
        )
        .unwrap();
    }

    #[test]
    fn replies_describe_themselves() {
        let r = Reply {
            status: 401,
            body: json!({"error": "missing header X"}),
        };
        assert_eq!(r.describe(), "HTTP 401 Unauthorized: missing header X");
        let r = Reply {
            status: 502,
            body: Value::String("<html>bad gateway</html>".into()),
        };
        assert_eq!(
            r.describe(),
            "HTTP 502 Bad Gateway: <html>bad gateway</html>"
        );
        assert!(!r.is_success());
        let r = Reply {
            status: 202,
            body: Value::Null,
        };
        assert_eq!(r.describe(), "HTTP 202 Accepted");
        assert!(r.is_success());
    }

    #[tokio::test]
    async fn an_unreachable_agent_is_a_connect_error_naming_the_url() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = AgentClient::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let err = c.health().await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "GET http://127.0.0.1:{port}/v1/health: cannot connect"
            )),
            "{text}"
        );
    }
}
