//! HMAC authentication of requests (contract: Authentication), on top of [`crate::auth`].

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::http::HeaderMap;

use crate::auth::{self, Key, Verifier};
use crate::config::Config;

use super::Authenticate;

/// Verifies signatures and remembers nonces (one lock: requests are few, checks are µs).
pub struct Hmac {
    verifier: Mutex<Verifier>,
}

impl Hmac {
    /// An authenticator for `key`.
    pub fn new(key: Key) -> Hmac {
        Hmac {
            verifier: Mutex::new(Verifier::new(key)),
        }
    }
}

impl Authenticate for Hmac {
    fn check(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), String> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verifier
            .lock()
            .map_err(|_| "internal error".to_string())?
            .verify(
                method,
                path_and_query,
                header(auth::HEADER_TIMESTAMP),
                header(auth::HEADER_NONCE),
                header(auth::HEADER_SIGNATURE),
                body,
                now,
            )
            .map_err(|e| format!("{} ({})", e, e.reason()))
    }
}

/// Reads the key of the config (already checked by the config's key-file rules).
pub fn read_key(config: &Config) -> anyhow::Result<Key> {
    let path = &config.auth.key_file;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Key::from_file_contents(bytes).with_context(|| format!("key file {}", path.display()))
}
