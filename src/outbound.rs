//! Outgoing HTTP requests of the contract, shared by the agent's callbacks to the host and the
//! host side's client of the agents: the signed headers, and errors in words an operator can
//! act on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;

use crate::auth::{self, Key};

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The origin form of `url` as sent on the request line: the path, and `?query` if any.
pub fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// The contract's three headers for a request to `url` with `body`, signed now with a new nonce.
pub fn signed_headers(
    key: &Key,
    method: &str,
    url: &Url,
    body: &[u8],
) -> std::io::Result<auth::SignedHeaders> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(auth::sign_request(
        key,
        method,
        &path_and_query(url),
        body,
        now,
        auth::new_nonce()?,
    ))
}

/// What failed, in words an operator can act on, with the underlying causes.
pub fn describe_error(e: &reqwest::Error, limit: Duration) -> String {
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        return format!(
            "no answer within {} ({})",
            crate::duration::format(limit),
            error_chain(e)
        );
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    format!("{what}: {}", error_chain(e))
}

/// The error and its sources, deduplicated (reqwest repeats the URL in its own message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}
