//! HMAC authentication of requests (contract: Authentication), on top of [`crate::auth`].

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::http::HeaderMap;

use crate::auth::{self, AuthError, Key, Verifier};
use crate::config::{AuthMode, Config};

use super::Authenticate;

/// Verifies signatures and remembers nonces (one lock: requests are few, checks are µs).
pub struct Hmac {
    verifier: Mutex<Verifier>,
}

impl Hmac {
    /// An authenticator for `key` that refuses timestamps before `start_unix` (the agent's
    /// start; 0 for none).
    pub fn new(key: Key, start_unix: u64) -> Hmac {
        Hmac {
            verifier: Mutex::new(Verifier::new(key).not_before(start_unix)),
        }
    }

    fn verifier(&self) -> std::sync::MutexGuard<'_, Verifier> {
        // A panic while holding the lock cannot leave the verifier half-changed in a way that
        // matters (the nonce cache's two indexes are updated together): keep serving.
        self.verifier.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The agent's clock in Unix seconds.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Authenticate for Hmac {
    fn check_headers(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        self.verifier().check_headers(
            header(headers, auth::HEADER_TIMESTAMP),
            header(headers, auth::HEADER_NONCE),
            header(headers, auth::HEADER_SIGNATURE),
            now_unix(),
        )
    }

    fn check(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), AuthError> {
        self.verifier().verify(
            method,
            path_and_query,
            header(headers, auth::HEADER_TIMESTAMP),
            header(headers, auth::HEADER_NONCE),
            header(headers, auth::HEADER_SIGNATURE),
            body,
            now_unix(),
        )
    }
}

/// Reads the key of the config (its path already passed the config's key-file rules, the
/// directory walk included).
pub fn read_key(config: &Config) -> anyhow::Result<Key> {
    let path = &config.auth.key_file;
    let bytes = read_key_file(path).with_context(|| format!("key file {}", path.display()))?;
    Key::from_file_contents(bytes).with_context(|| format!("key file {}", path.display()))
}

/// Largest key file read (a key is a few dozen bytes).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Opens the key once without following a final symlink, checks what was opened (a regular
/// file owned by root, no permission for group or others, at least [`auth::MIN_KEY_LEN`]
/// bytes) and reads that same open file: a rename between a check by path and a read by path
/// cannot swap another file in.
pub fn read_key_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!("is a symlink: name the key file itself"),
            _ => anyhow::Error::new(e).context("opening it"),
        })?;
    let md = file.metadata().context("fstat")?;
    if !md.file_type().is_file() {
        anyhow::bail!("is not a regular file");
    }
    if md.uid() != 0 {
        anyhow::bail!("is owned by uid {}, not root", md.uid());
    }
    if md.mode() & 0o077 != 0 {
        anyhow::bail!(
            "gives permissions to group or others (mode {:04o})",
            md.mode() & 0o7777
        );
    }
    if md.len() < auth::MIN_KEY_LEN as u64 || md.len() > MAX_KEY_FILE {
        anyhow::bail!(
            "holds {} bytes: a key has at least {} (and a key file at most {MAX_KEY_FILE})",
            md.len(),
            auth::MIN_KEY_LEN
        );
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(MAX_KEY_FILE)
        .read_to_end(&mut bytes)
        .context("reading it")?;
    Ok(bytes)
}

/// The authenticator the config asks for: `None` for `auth.mode: none`.
pub fn from_config(config: &Config) -> anyhow::Result<Option<Arc<dyn Authenticate>>> {
    match config.auth.mode {
        AuthMode::None => Ok(None),
        AuthMode::Hmac => Ok(Some(Arc::new(Hmac::new(read_key(config)?, 0)))),
    }
}
