//! Request signing and verification (contract, "Authentication"): HMAC-SHA256 with the shared
//! key, a timestamp within [`MAX_SKEW_SECS`] of the agent's clock and a nonce never accepted twice
//! within that window.
//!
//! Pure: no clock reads, no IO (except [`new_nonce`], which reads `/dev/urandom`), no async. The
//! caller passes the current Unix time, so the rules are tested exactly at their limits. Every
//! [`AuthError`] is answered `401 Unauthorized` by the server, with no effect on any snapshot.
//!
//! The string that is signed is
//! `METHOD "\n" PATH_AND_QUERY "\n" TIMESTAMP "\n" NONCE "\n" hex(SHA256(body))`, where the method
//! is the request line's (e.g. `POST`), the path and query are the request line's origin form
//! exactly as sent (no decoding or normalisation: `/v1/snapshots/abc?wait=frozen&timeout_ms=5000`),
//! the timestamp and the nonce are the header values exactly as sent, and both hex strings are
//! lowercase. The body is the raw bytes on the wire (empty for a request without one).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Largest accepted difference, either way, between a request's timestamp and the agent's clock.
pub const MAX_SKEW_SECS: u64 = 300;
/// Header carrying the request's Unix time in seconds.
pub const HEADER_TIMESTAMP: &str = "X-Quiesce-Timestamp";
/// Header carrying the request's nonce.
pub const HEADER_NONCE: &str = "X-Quiesce-Nonce";
/// Header carrying the lowercase hex HMAC-SHA256 of the string to sign.
pub const HEADER_SIGNATURE: &str = "X-Quiesce-Signature";
/// Fewest bytes a key may have (after [`Key::from_file_contents`] strips a line ending).
pub const MIN_KEY_LEN: usize = 32;
/// Shortest nonce accepted.
pub const MIN_NONCE_LEN: usize = 16;
/// Longest nonce accepted.
pub const MAX_NONCE_LEN: usize = 64;
/// Nonces remembered at most by [`Verifier::new`]; see [`NonceCache`] for the memory this takes.
pub const DEFAULT_NONCE_CAPACITY: usize = 100_000;

type HmacSha256 = Hmac<Sha256>;

/// The shared HMAC key. Its `Debug` shows the length only, never the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Fewer than [`MIN_KEY_LEN`] bytes.
    #[error(
        "the HMAC key has {len} bytes, at least {min} are required (a key file's trailing line \
         ending does not count); create one with `openssl rand -hex 32 > host.key`"
    )]
    TooShort { len: usize, min: usize },
}

impl Key {
    /// Uses `bytes` as the key exactly as given; at least [`MIN_KEY_LEN`] bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Key, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                len: bytes.len(),
                min: MIN_KEY_LEN,
            });
        }
        Ok(Key(bytes))
    }

    /// Makes the key from the content of a key file such as `/etc/quiesce/host.key`.
    ///
    /// The key is the file's bytes exactly as stored, with no decoding (a hex or base64 text is
    /// used as that text, not as the bytes it encodes), except that ONE trailing line ending,
    /// `"\n"` or `"\r\n"`, is removed if present, because keys are usually made with a command
    /// that ends its output with one: `openssl rand -hex 32 > host.key` (64 bytes used) or
    /// `head -c 32 /dev/urandom | base64 > host.key` (44 bytes used). Nothing else is trimmed:
    /// no second newline, no spaces. At least [`MIN_KEY_LEN`] bytes must remain. A host signing
    /// requests with the same file must apply the same rule. A raw binary key whose last byte
    /// happens to be `0x0a` loses that byte too (both sides do the same, so it still works, and
    /// a 32-byte one is then refused as too short): prefer a text key, or raw keys longer than
    /// 32 bytes.
    pub fn from_file_contents(mut bytes: Vec<u8>) -> Result<Key, KeyError> {
        if bytes.ends_with(b"\r\n") {
            bytes.truncate(bytes.len() - 2);
        } else if bytes.ends_with(b"\n") {
            bytes.truncate(bytes.len() - 1);
        }
        Key::from_bytes(bytes)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; the error type exists for other MACs.
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes, redacted>)", self.0.len())
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Best effort without unsafe code: the optimiser may still keep copies elsewhere.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// Why a request was refused. Every variant is answered 401 by the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// One of the three headers is absent.
    #[error(
        "missing header {header}: every request except GET /v1/health and GET /metrics must be \
         signed"
    )]
    MissingHeader { header: &'static str },
    /// The timestamp is not a plain decimal number of seconds.
    #[error("{HEADER_TIMESTAMP} must be Unix time in seconds, in ASCII digits only")]
    BadTimestamp,
    /// The timestamp is further than [`MAX_SKEW_SECS`] from the agent's clock.
    #[error(
        "{HEADER_TIMESTAMP} {timestamp} is {skew} s from the agent's clock ({now}), at most \
         {MAX_SKEW_SECS} s are allowed: check the clocks of host and guest"
    )]
    StaleTimestamp { timestamp: u64, now: u64, skew: u64 },
    /// The nonce has the wrong length or characters.
    #[error(
        "{HEADER_NONCE} must be {MIN_NONCE_LEN} to {MAX_NONCE_LEN} characters of [A-Za-z0-9_-]"
    )]
    BadNonce,
    /// The signature is malformed or does not match the request.
    #[error("bad {HEADER_SIGNATURE}: {detail}")]
    BadSignature { detail: &'static str },
    /// The timestamp is earlier than the agent's start: a request captured before a restart
    /// (whose nonce the new process cannot remember) must not be accepted again.
    #[error(
        "{HEADER_TIMESTAMP} {timestamp} is earlier than the agent's start ({start}): sign \
         requests with the current time"
    )]
    BeforeStart { timestamp: u64, start: u64 },
    /// The nonce was already used within the window: a replayed request.
    #[error(
        "{HEADER_NONCE} was already used within the last {MAX_SKEW_SECS} s (replayed request); \
         use a new nonce for every request"
    )]
    ReplayedNonce,
    /// Too many signed requests in the window to remember all their nonces.
    #[error(
        "too many signed requests: the agent remembers at most {capacity} nonces for {} s; \
         retry later",
        MAX_SKEW_SECS + 1
    )]
    NonceCacheFull { capacity: usize },
}

impl AuthError {
    /// A stable code for logs, metrics and the error body.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingHeader { .. } => "missing_header",
            AuthError::BadTimestamp => "bad_timestamp",
            AuthError::StaleTimestamp { .. } => "stale_timestamp",
            AuthError::BadNonce => "bad_nonce",
            AuthError::BadSignature { .. } => "bad_signature",
            AuthError::BeforeStart { .. } => "before_start",
            AuthError::ReplayedNonce => "replayed_nonce",
            AuthError::NonceCacheFull { .. } => "nonce_cache_full",
        }
    }
}

/// The contract's string to sign: method, path and query, timestamp, nonce, hex SHA-256 of body.
pub fn string_to_sign(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    let body_hash = hex_lower(&Sha256::digest(body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body_hash}")
}

/// Lowercase hex HMAC-SHA256 of the string to sign: the value of `X-Quiesce-Signature`.
pub fn sign(
    key: &Key,
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    let mut mac = key.mac();
    mac.update(string_to_sign(method, path_and_query, timestamp, nonce, body).as_bytes());
    hex_lower(&mac.finalize().into_bytes())
}

/// The three header values of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
}

impl SignedHeaders {
    /// The (name, value) pairs to add to the request.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_NONCE, &self.nonce),
            (HEADER_SIGNATURE, &self.signature),
        ]
    }
}

/// Signs a request on the client side (the CLI, the agent's callbacks to the host).
///
/// `nonce` should come from [`new_nonce`]; `now_unix` is the sender's clock.
pub fn sign_request(
    key: &Key,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now_unix: u64,
    nonce: String,
) -> SignedHeaders {
    let timestamp = now_unix.to_string();
    let signature = sign(key, method, path_and_query, &timestamp, &nonce, body);
    SignedHeaders {
        timestamp,
        nonce,
        signature,
    }
}

/// A fresh nonce: 32 characters of [A-Za-z0-9_-] carrying 192 random bits from `/dev/urandom`.
///
/// `/dev/urandom` (read with std, no extra crate) never blocks and is the kernel's CSPRNG; it
/// fails only where `/dev` is missing, and then the caller cannot sign rather than sign with
/// weak nonces.
pub fn new_nonce() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(nonce_from_bytes(&bytes))
}

const NONCE_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding: 3 bytes to 4 characters.
fn nonce_from_bytes(bytes: &[u8; 24]) -> String {
    let mut out = String::with_capacity(32);
    for chunk in bytes.chunks_exact(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(char::from(NONCE_ALPHABET[((n >> shift) & 0x3f) as usize]));
        }
    }
    out
}

/// Checks signed requests on the agent side and remembers their nonces.
#[derive(Debug)]
pub struct Verifier {
    key: Key,
    nonces: NonceCache,
    /// Timestamps below this are refused ([`AuthError::BeforeStart`]); 0: no such rule.
    not_before: u64,
}

/// What [`Verifier::check_headers`] parsed from headers that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    timestamp: u64,
    signature: [u8; 32],
}

impl Verifier {
    /// A verifier remembering up to [`DEFAULT_NONCE_CAPACITY`] nonces.
    pub fn new(key: Key) -> Verifier {
        Verifier::with_capacity(key, DEFAULT_NONCE_CAPACITY)
    }

    /// A verifier remembering up to `capacity` nonces (0 refuses every request).
    pub fn with_capacity(key: Key, capacity: usize) -> Verifier {
        Verifier {
            key,
            nonces: NonceCache::new(capacity),
            not_before: 0,
        }
    }

    /// Refuses timestamps earlier than `start_unix` (the agent's start: a restart must not
    /// reopen the replay window of requests captured before it).
    pub fn not_before(mut self, start_unix: u64) -> Verifier {
        self.not_before = start_unix;
        self
    }

    /// Every check that needs no body, without spending the nonce: headers present, timestamp
    /// well-formed, within the window and not before the start, nonce well-formed and not
    /// already used, signature well-formed. The server runs it before it reads any body, so
    /// that a request that fails here costs no body read.
    pub fn check_headers(
        &mut self,
        timestamp: Option<&str>,
        nonce: Option<&str>,
        signature: Option<&str>,
        now_unix: u64,
    ) -> Result<(), AuthError> {
        self.parse_headers(timestamp, nonce, signature, now_unix)?;
        self.nonces.prune(now_unix);
        if self.nonces.contains(nonce.unwrap_or_default()) {
            return Err(AuthError::ReplayedNonce);
        }
        Ok(())
    }

    fn parse_headers(
        &self,
        timestamp: Option<&str>,
        nonce: Option<&str>,
        signature: Option<&str>,
        now_unix: u64,
    ) -> Result<Parsed, AuthError> {
        let missing = |header| AuthError::MissingHeader { header };
        let timestamp_text = timestamp.ok_or(missing(HEADER_TIMESTAMP))?;
        let nonce = nonce.ok_or(missing(HEADER_NONCE))?;
        let signature = signature.ok_or(missing(HEADER_SIGNATURE))?;

        let timestamp = parse_timestamp(timestamp_text)?;
        let skew = timestamp.abs_diff(now_unix);
        if skew > MAX_SKEW_SECS {
            return Err(AuthError::StaleTimestamp {
                timestamp,
                now: now_unix,
                skew,
            });
        }
        if timestamp < self.not_before {
            return Err(AuthError::BeforeStart {
                timestamp,
                start: self.not_before,
            });
        }
        if !is_valid_nonce(nonce) {
            return Err(AuthError::BadNonce);
        }
        let signature = decode_hex32(signature).ok_or(AuthError::BadSignature {
            detail: "not 64 lowercase hex characters",
        })?;
        Ok(Parsed {
            timestamp,
            signature,
        })
    }

    /// Checks one request; `Ok` means it is authentic, fresh and not a replay, and its nonce is
    /// now spent.
    ///
    /// The header values are passed as received (`None` when absent), `now_unix` is the agent's
    /// clock. Checks run in this order: headers present, timestamp well-formed and within
    /// [`MAX_SKEW_SECS`] and not before the start ([`Verifier::not_before`]), nonce well-formed, signature well-formed (64 lowercase hex characters)
    /// and matching in constant time; only then is the nonce looked up (a replay is refused) and
    /// recorded. A request with a bad signature therefore never spends or records a nonce.
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &mut self,
        method: &str,
        path_and_query: &str,
        timestamp: Option<&str>,
        nonce: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_unix: u64,
    ) -> Result<(), AuthError> {
        let parsed = self.parse_headers(timestamp, nonce, signature, now_unix)?;
        let (timestamp_text, nonce) = (timestamp.unwrap_or_default(), nonce.unwrap_or_default());
        let mut mac = self.key.mac();
        mac.update(string_to_sign(method, path_and_query, timestamp_text, nonce, body).as_bytes());
        mac.verify_slice(&parsed.signature)
            .map_err(|_| AuthError::BadSignature {
                detail: "does not match the request (wrong key, or the request was changed)",
            })?;
        let timestamp = parsed.timestamp;
        self.nonces.check_and_record(nonce, timestamp, now_unix)
    }

    /// Nonces currently remembered (for metrics).
    pub fn nonces_remembered(&self) -> usize {
        self.nonces.len()
    }
}

/// Nonces of accepted requests, each kept until its timestamp can no longer pass the skew check.
///
/// A nonce seen with timestamp `ts` is remembered until the clock reaches
/// `ts + MAX_SKEW_SECS + 1`: from then on any request carrying that timestamp is refused as stale,
/// so forgetting the nonce cannot let its request through again. Pruning walks an index ordered by
/// expiry, O(log n) per entry; lookups are a hash map. Memory is bounded by the capacity: each
/// entry holds the nonce once (at most [`MAX_NONCE_LEN`] bytes, shared by both indexes) plus about
/// 100 bytes of bookkeeping: measured at 162 bytes per entry with 64-character nonces, so at most
/// about 16 MB for [`DEFAULT_NONCE_CAPACITY`] (11 MB with 16-character nonces). When every slot holds an unexpired nonce, new requests are refused
/// ([`AuthError::NonceCacheFull`]) rather than forgetting one early: only a key holder can fill
/// it, and failing closed keeps replays impossible.
///
/// The window is judged by the caller's clock: if the clock is stepped forward by more than the
/// window and then back, nonces forgotten meanwhile can be accepted again.
#[derive(Debug)]
pub struct NonceCache {
    capacity: usize,
    expiry_of: HashMap<Arc<str>, u64>,
    by_expiry: BTreeSet<(u64, Arc<str>)>,
}

impl NonceCache {
    /// An empty cache holding at most `capacity` nonces.
    pub fn new(capacity: usize) -> NonceCache {
        NonceCache {
            capacity,
            expiry_of: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// Refuses a nonce already remembered, else remembers it with its request's timestamp.
    ///
    /// The caller has already checked the signature, and that `timestamp` is within the window
    /// of `now_unix`. A replay extends how long the nonce is remembered to cover the replayed
    /// request's own timestamp, so a refused request cannot be accepted later either.
    pub fn check_and_record(
        &mut self,
        nonce: &str,
        timestamp: u64,
        now_unix: u64,
    ) -> Result<(), AuthError> {
        self.prune(now_unix);
        let expiry = timestamp.saturating_add(MAX_SKEW_SECS + 1);
        if let Some(known) = self.expiry_of.get_mut(nonce) {
            if expiry > *known {
                let key = self
                    .by_expiry
                    .take(&(*known, Arc::from(nonce)))
                    .map(|(_, key)| key)
                    .unwrap_or_else(|| Arc::from(nonce));
                *known = expiry;
                self.by_expiry.insert((expiry, key));
            }
            return Err(AuthError::ReplayedNonce);
        }
        if self.expiry_of.len() >= self.capacity {
            return Err(AuthError::NonceCacheFull {
                capacity: self.capacity,
            });
        }
        let key: Arc<str> = Arc::from(nonce);
        self.expiry_of.insert(Arc::clone(&key), expiry);
        self.by_expiry.insert((expiry, key));
        Ok(())
    }

    /// Whether `nonce` is remembered (the caller prunes first).
    fn contains(&self, nonce: &str) -> bool {
        self.expiry_of.contains_key(nonce)
    }

    /// Nonces currently remembered.
    pub fn len(&self) -> usize {
        self.expiry_of.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.expiry_of.is_empty()
    }

    /// Forgets every nonce whose expiry has come.
    fn prune(&mut self, now_unix: u64) {
        while let Some((expiry, _)) = self.by_expiry.first() {
            if *expiry > now_unix {
                break;
            }
            if let Some((_, nonce)) = self.by_expiry.pop_first() {
                self.expiry_of.remove(&nonce);
            }
        }
    }
}

/// ASCII digits only (no sign, no spaces), fitting in a u64.
fn parse_timestamp(text: &str) -> Result<u64, AuthError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::BadTimestamp);
    }
    text.parse().map_err(|_| AuthError::BadTimestamp)
}

fn is_valid_nonce(nonce: &str) -> bool {
    (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Exactly 64 lowercase hex digits (the contract says lowercase; uppercase is refused).
fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const NONCE: &str = "n0nce-for_test-0001";

    fn key() -> Key {
        Key::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(key())
    }

    /// Signs and verifies one request with the given timestamp and nonce at `now`.
    fn send(v: &mut Verifier, timestamp: u64, nonce: &str, now: u64) -> Result<(), AuthError> {
        let ts = timestamp.to_string();
        let sig = sign(&key(), "POST", "/v1/snapshots", &ts, nonce, b"{}");
        v.verify(
            "POST",
            "/v1/snapshots",
            Some(&ts),
            Some(nonce),
            Some(&sig),
            b"{}",
            now,
        )
    }

    /// A distinct valid nonce per index.
    fn nonce(i: usize) -> String {
        format!("nonce-{i:010}")
    }

    #[test]
    fn known_answer() {
        // python3 -c 'import hmac,hashlib; b=b"{\"request_id\":\"r1\"}";
        //   s="POST\n/v1/snapshots?wait=frozen\n1700000000\nn0nce-for_test-0001\n"
        //     +hashlib.sha256(b).hexdigest();
        //   print(hmac.new(b"0123456789abcdef0123456789abcdef", s.encode(),
        //     hashlib.sha256).hexdigest())'
        let body = br#"{"request_id":"r1"}"#;
        assert_eq!(
            string_to_sign(
                "POST",
                "/v1/snapshots?wait=frozen",
                "1700000000",
                NONCE,
                body
            ),
            "POST\n/v1/snapshots?wait=frozen\n1700000000\nn0nce-for_test-0001\n\
             324d441c37e0ad3a896107ea67cc36144fc9e607f09c14d2cb2df67b3b825b63"
        );
        let expected = "8c21042c8182dc53321a491473826935cce610a042a46abc60bf741ddaebfe83";
        assert_eq!(
            sign(
                &key(),
                "POST",
                "/v1/snapshots?wait=frozen",
                "1700000000",
                NONCE,
                body
            ),
            expected
        );
        // The key file variant: one trailing newline is not part of the key.
        let from_file =
            Key::from_file_contents(b"0123456789abcdef0123456789abcdef\n".to_vec()).unwrap();
        assert_eq!(
            sign(
                &from_file,
                "POST",
                "/v1/snapshots?wait=frozen",
                "1700000000",
                NONCE,
                body
            ),
            expected
        );
        let mut v = verifier();
        v.verify(
            "POST",
            "/v1/snapshots?wait=frozen",
            Some("1700000000"),
            Some(NONCE),
            Some(expected),
            body,
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn known_answer_empty_body_binary_key() {
        // python3 -c 'import hmac,hashlib; s="GET\n/v1/snapshots\n1700000000\nAAAAAAAAAAAAAAAA\n"
        //   +hashlib.sha256(b"").hexdigest();
        //   print(hmac.new(bytes(range(32)), s.encode(), hashlib.sha256).hexdigest())'
        let key = Key::from_bytes((0u8..32).collect()).unwrap();
        assert_eq!(
            sign(
                &key,
                "GET",
                "/v1/snapshots",
                "1700000000",
                "AAAAAAAAAAAAAAAA",
                b""
            ),
            "572af4df3bfad58ad031170c831b28fbfd78a729c48b714248448371bcbb83b7"
        );
    }

    #[test]
    fn round_trip_with_sign_request() {
        let mut v = verifier();
        let nonce = new_nonce().unwrap();
        let h = sign_request(
            &key(),
            "DELETE",
            "/v1/snapshots/abc",
            b"",
            NOW,
            nonce.clone(),
        );
        assert_eq!(h.timestamp, NOW.to_string());
        assert_eq!(h.nonce, nonce);
        let pairs = h.pairs();
        assert_eq!(pairs[0], (HEADER_TIMESTAMP, h.timestamp.as_str()));
        assert_eq!(pairs[1], (HEADER_NONCE, h.nonce.as_str()));
        assert_eq!(pairs[2], (HEADER_SIGNATURE, h.signature.as_str()));
        v.verify(
            "DELETE",
            "/v1/snapshots/abc",
            Some(&h.timestamp),
            Some(&h.nonce),
            Some(&h.signature),
            b"",
            NOW,
        )
        .unwrap();
        assert_eq!(v.nonces_remembered(), 1);
    }

    #[test]
    fn key_length_and_file_contents() {
        assert_eq!(
            Key::from_bytes(vec![7; 31]).unwrap_err(),
            KeyError::TooShort { len: 31, min: 32 }
        );
        assert!(Key::from_bytes(vec![7; 32]).is_ok());
        // The length check applies after stripping one line ending.
        let mut text = vec![b'a'; 32];
        text.push(b'\n');
        assert!(Key::from_file_contents(text.clone()).is_ok());
        text.truncate(31);
        text.push(b'\n');
        assert_eq!(
            Key::from_file_contents(text).unwrap_err(),
            KeyError::TooShort { len: 31, min: 32 }
        );
        // "\r\n" counts as one line ending; only one is stripped; spaces are kept.
        let same = |a: &[u8], b: &[u8]| {
            let ka = Key::from_file_contents(a.to_vec()).unwrap();
            let kb = Key::from_bytes(b.to_vec()).unwrap();
            sign(&ka, "GET", "/", "1", NONCE, b"") == sign(&kb, "GET", "/", "1", NONCE, b"")
        };
        let k = b"0123456789abcdef0123456789abcdef";
        assert!(same(&[&k[..], b"\r\n"].concat(), k));
        assert!(same(&[&k[..], b"\n\n"].concat(), &[&k[..], b"\n"].concat()));
        assert!(same(&[&k[..], b" "].concat(), &[&k[..], b" "].concat()));
        assert!(!same(&[&k[..], b" "].concat(), k));
        assert!(same(k, k));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = Key::from_bytes(b"SECRETSECRETSECRETSECRETSECRET!!".to_vec()).unwrap();
        let shown = format!("{key:?} {:?}", Verifier::new(key.clone()));
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("83"), "{shown}"); // 'S' as a byte
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn nonces_are_fresh_and_well_formed() {
        let a = new_nonce().unwrap();
        let b = new_nonce().unwrap();
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert_eq!(n.len(), 32);
            assert!(is_valid_nonce(n), "{n}");
        }
        assert_eq!(nonce_from_bytes(&[0; 24]), "A".repeat(32));
        assert_eq!(nonce_from_bytes(&[0xff; 24]), "_".repeat(32));
        let mut bytes = [0u8; 24];
        bytes[..3].copy_from_slice(&[0xfb, 0xef, 0xbe]); // 111110 111110 111110 111110
        assert!(nonce_from_bytes(&bytes).starts_with("----"));
    }

    #[test]
    fn missing_headers_are_named() {
        let mut v = verifier();
        let ts = NOW.to_string();
        let sig = sign(&key(), "GET", "/v1/snapshots", &ts, NONCE, b"");
        let cases = [
            (None, Some(NONCE), Some(sig.as_str()), HEADER_TIMESTAMP),
            (Some(ts.as_str()), None, Some(sig.as_str()), HEADER_NONCE),
            (Some(ts.as_str()), Some(NONCE), None, HEADER_SIGNATURE),
            (None, None, None, HEADER_TIMESTAMP),
        ];
        for (t, n, s, header) in cases {
            let err = v
                .verify("GET", "/v1/snapshots", t, n, s, b"", NOW)
                .unwrap_err();
            assert_eq!(err, AuthError::MissingHeader { header });
            assert_eq!(err.reason(), "missing_header");
            assert!(err.to_string().contains(header));
        }
        assert_eq!(v.nonces_remembered(), 0);
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        let mut v = verifier();
        for bad in [
            "",
            " 1700000000",
            "1700000000 ",
            "+1700000000",
            "-1700000000",
            "1700000000.0",
            "1e9",
            "0x6553f100",
            "１７００００００００", // fullwidth digits are not ASCII
            "18446744073709551616", // u64::MAX + 1
        ] {
            let sig = sign(&key(), "GET", "/", bad, NONCE, b"");
            let err = v
                .verify("GET", "/", Some(bad), Some(NONCE), Some(&sig), b"", NOW)
                .unwrap_err();
            assert_eq!(err, AuthError::BadTimestamp, "{bad:?}");
            assert_eq!(err.reason(), "bad_timestamp");
        }
        // Leading zeros are digits: the signature covers the text as sent.
        let ts = format!("000{NOW}");
        let sig = sign(&key(), "GET", "/", &ts, NONCE, b"");
        v.verify("GET", "/", Some(&ts), Some(NONCE), Some(&sig), b"", NOW)
            .unwrap();
    }

    #[test]
    fn skew_limits_are_exact() {
        let mut v = verifier();
        send(&mut v, NOW - 300, &nonce(1), NOW).unwrap();
        send(&mut v, NOW + 300, &nonce(2), NOW).unwrap();
        for ts in [NOW - 301, NOW + 301, 0, u64::MAX] {
            let err = send(&mut v, ts, &nonce(3), NOW).unwrap_err();
            assert_eq!(err.reason(), "stale_timestamp", "{ts}");
            assert!(
                matches!(err, AuthError::StaleTimestamp { timestamp, now: NOW, .. } if timestamp == ts)
            );
        }
        let err = send(&mut v, NOW - 301, &nonce(3), NOW).unwrap_err();
        assert!(err.to_string().contains("301 s"), "{err}");
        // A stale request does not spend its nonce.
        send(&mut v, NOW, &nonce(3), NOW).unwrap();
        // Clocks near the ends of the range do not overflow.
        send(&mut v, 0, &nonce(4), 300).unwrap();
        send(&mut v, u64::MAX, &nonce(5), u64::MAX - 300).unwrap();
    }

    #[test]
    fn malformed_nonces_are_refused() {
        let mut v = verifier();
        let too_long = "a".repeat(65);
        for bad in [
            "",
            "abcdefghijklmno", // 15
            too_long.as_str(),
            "abcdefghijklmnop=",
            "abcdefghijklmnop ",
            "abcdefghijklmnop/",
            "abcdefghijklmnop.",
            "abcdefghijklmnöp",
        ] {
            let err = send(&mut v, NOW, bad, NOW).unwrap_err();
            assert_eq!(err, AuthError::BadNonce, "{bad:?}");
            assert_eq!(err.reason(), "bad_nonce");
        }
        send(&mut v, NOW, "abcdefghijklmnop", NOW).unwrap();
        send(&mut v, NOW, &"Az09_-".repeat(11)[..64], NOW).unwrap();
    }

    #[test]
    fn signatures_must_be_lowercase_hex_and_match() {
        let mut v = verifier();
        let ts = NOW.to_string();
        let good = sign(&key(), "GET", "/v1/snapshots", &ts, NONCE, b"");
        let check = |v: &mut Verifier, sig: &str| {
            v.verify(
                "GET",
                "/v1/snapshots",
                Some(&ts),
                Some(NONCE),
                Some(sig),
                b"",
                NOW,
            )
        };
        let mut flipped = good.clone().into_bytes();
        flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let wrong_key = sign(
            &Key::from_bytes(vec![1; 32]).unwrap(),
            "GET",
            "/v1/snapshots",
            &ts,
            NONCE,
            b"",
        );
        let malformed = [
            String::new(),
            good.to_uppercase(),
            good[..62].to_string(),
            format!("{good}00"),
            format!(" {}", &good[1..]),
            format!("{}g", &good[..63]),
        ];
        for sig in &malformed {
            let err = check(&mut v, sig).unwrap_err();
            assert_eq!(
                err,
                AuthError::BadSignature {
                    detail: "not 64 lowercase hex characters"
                },
                "{sig:?}"
            );
            assert_eq!(err.reason(), "bad_signature");
        }
        for sig in [&flipped, &wrong_key] {
            let err = check(&mut v, sig).unwrap_err();
            assert_eq!(err.reason(), "bad_signature");
            assert!(err.to_string().contains("does not match"), "{err}");
        }
        // None of these spent the nonce.
        assert_eq!(v.nonces_remembered(), 0);
        check(&mut v, &good).unwrap();
    }

    #[test]
    fn every_signed_part_matters() {
        let ts = NOW.to_string();
        let sig = sign(
            &key(),
            "POST",
            "/v1/snapshots/abc/thaw?x=1",
            &ts,
            NONCE,
            b"taken",
        );
        let changed: [(&str, &str, &str, &[u8]); 6] = [
            ("PUT", "/v1/snapshots/abc/thaw?x=1", &ts, b"taken"),
            ("post", "/v1/snapshots/abc/thaw?x=1", &ts, b"taken"),
            ("POST", "/v1/snapshots/abc/thaw", &ts, b"taken"), // query dropped
            ("POST", "/v1/snapshots/abc/thaw?x=2", &ts, b"taken"), // query changed
            ("POST", "/v1/snapshots/abc/thaw?x=1", &ts, b"failed"), // body changed
            // The same time written differently.
            (
                "POST",
                "/v1/snapshots/abc/thaw?x=1",
                "01700000000",
                b"taken",
            ),
        ];
        for (method, path, t, body) in changed {
            let mut v = verifier();
            let err = v
                .verify(method, path, Some(t), Some(NONCE), Some(&sig), body, NOW)
                .unwrap_err();
            assert_eq!(err.reason(), "bad_signature", "{method} {path} {t}");
        }
        // Another nonce with the same signature.
        let mut v = verifier();
        let err = v
            .verify(
                "POST",
                "/v1/snapshots/abc/thaw?x=1",
                Some(&ts),
                Some("another-nonce-0001"),
                Some(&sig),
                b"taken",
                NOW,
            )
            .unwrap_err();
        assert_eq!(err.reason(), "bad_signature");
        v.verify(
            "POST",
            "/v1/snapshots/abc/thaw?x=1",
            Some(&ts),
            Some(NONCE),
            Some(&sig),
            b"taken",
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn replays_are_refused_within_the_window() {
        let mut v = verifier();
        send(&mut v, NOW, NONCE, NOW).unwrap();
        for now in [NOW, NOW + 1, NOW + 300] {
            let err = send(&mut v, NOW, NONCE, now).unwrap_err();
            assert_eq!(err, AuthError::ReplayedNonce);
            assert_eq!(err.reason(), "replayed_nonce");
        }
        // The same nonce with another (validly signed) timestamp is a replay too.
        let err = send(&mut v, NOW + 100, NONCE, NOW + 100).unwrap_err();
        assert_eq!(err.reason(), "replayed_nonce");
        assert_eq!(v.nonces_remembered(), 1);
    }

    #[test]
    fn a_nonce_is_accepted_again_once_it_expired() {
        let mut v = verifier();
        send(&mut v, NOW, NONCE, NOW).unwrap();
        // At NOW + 301 the first request is stale, so its nonce is forgotten.
        assert_eq!(
            send(&mut v, NOW, NONCE, NOW + 301).unwrap_err().reason(),
            "stale_timestamp"
        );
        send(&mut v, NOW + 301, NONCE, NOW + 301).unwrap();
        assert_eq!(v.nonces_remembered(), 1);
    }

    #[test]
    fn a_refused_replay_cannot_be_accepted_later() {
        let mut v = verifier();
        send(&mut v, NOW, NONCE, NOW).unwrap();
        // The key holder reuses the nonce 200 s later: refused, and remembered for that
        // timestamp's own window, so a captured copy cannot pass after the first one expires.
        assert_eq!(
            send(&mut v, NOW + 200, NONCE, NOW + 200)
                .unwrap_err()
                .reason(),
            "replayed_nonce"
        );
        assert_eq!(
            send(&mut v, NOW + 200, NONCE, NOW + 400)
                .unwrap_err()
                .reason(),
            "replayed_nonce"
        );
        assert_eq!(
            send(&mut v, NOW + 200, NONCE, NOW + 500)
                .unwrap_err()
                .reason(),
            "replayed_nonce"
        );
        send(&mut v, NOW + 501, NONCE, NOW + 501).unwrap();
        assert_eq!(v.nonces_remembered(), 1);
    }

    #[test]
    fn capacity_fails_closed_then_recovers() {
        let mut v = Verifier::with_capacity(key(), 3);
        send(&mut v, NOW, &nonce(1), NOW).unwrap();
        send(&mut v, NOW + 10, &nonce(2), NOW + 10).unwrap();
        send(&mut v, NOW + 20, &nonce(3), NOW + 20).unwrap();
        let err = send(&mut v, NOW + 20, &nonce(4), NOW + 20).unwrap_err();
        assert_eq!(err, AuthError::NonceCacheFull { capacity: 3 });
        assert_eq!(err.reason(), "nonce_cache_full");
        // A refusal for capacity does not record the nonce; replays are still told apart.
        assert_eq!(v.nonces_remembered(), 3);
        assert_eq!(
            send(&mut v, NOW, &nonce(1), NOW + 20).unwrap_err().reason(),
            "replayed_nonce"
        );
        // Still full one second before the oldest expires.
        assert_eq!(
            send(&mut v, NOW + 300, &nonce(4), NOW + 300)
                .unwrap_err()
                .reason(),
            "nonce_cache_full"
        );
        // The oldest expires at NOW + 301: one slot frees.
        send(&mut v, NOW + 301, &nonce(4), NOW + 301).unwrap();
        assert_eq!(
            send(&mut v, NOW + 301, &nonce(5), NOW + 301)
                .unwrap_err()
                .reason(),
            "nonce_cache_full"
        );
        // Much later everything old is gone in one prune.
        send(&mut v, NOW + 10_000, &nonce(5), NOW + 10_000).unwrap();
        assert_eq!(v.nonces_remembered(), 1);
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let mut v = Verifier::with_capacity(key(), 0);
        assert_eq!(
            send(&mut v, NOW, NONCE, NOW).unwrap_err().reason(),
            "nonce_cache_full"
        );
    }

    #[test]
    fn the_cache_indexes_stay_in_step() {
        let mut cache = NonceCache::new(1_000);
        assert!(cache.is_empty());
        for i in 0..500u64 {
            let now = NOW + i;
            // A few replays with later timestamps move entries within the expiry index.
            cache
                .check_and_record(&nonce(i as usize), now, now)
                .unwrap();
            if i % 7 == 0 && i > 0 {
                let again = cache.check_and_record(&nonce(i as usize - 1), now + 5, now);
                assert_eq!(again, Err(AuthError::ReplayedNonce));
            }
            assert_eq!(cache.expiry_of.len(), cache.by_expiry.len());
        }
        assert!(cache.len() <= 302, "{}", cache.len());
        for (expiry, nonce) in &cache.by_expiry {
            assert_eq!(cache.expiry_of.get(nonce), Some(expiry));
        }
        cache.prune(u64::MAX);
        assert!(cache.is_empty() && cache.by_expiry.is_empty());
    }

    #[test]
    fn timestamps_before_the_start_are_refused() {
        let mut v = Verifier::new(key()).not_before(NOW);
        let err = send(&mut v, NOW - 1, &nonce(1), NOW + 10).unwrap_err();
        assert_eq!(
            err,
            AuthError::BeforeStart {
                timestamp: NOW - 1,
                start: NOW
            }
        );
        assert_eq!(err.reason(), "before_start");
        send(&mut v, NOW, &nonce(1), NOW + 10).unwrap();
    }

    #[test]
    fn header_checks_need_no_body_and_spend_nothing() {
        let mut v = verifier();
        let ts = NOW.to_string();
        let sig = sign(&key(), "POST", "/v1/snapshots", &ts, NONCE, b"{}");
        let headers = |v: &mut Verifier, ts: &str, n: &str, s: &str| {
            v.check_headers(Some(ts), Some(n), Some(s), NOW)
        };
        headers(&mut v, &ts, NONCE, &sig).unwrap();
        // Any well-formed signature passes here: only the body check can tell.
        headers(&mut v, &ts, NONCE, &"0".repeat(64)).unwrap();
        assert_eq!(v.nonces_remembered(), 0);
        let stale = (NOW - 301).to_string();
        assert_eq!(
            headers(&mut v, &stale, NONCE, &sig).unwrap_err().reason(),
            "stale_timestamp"
        );
        assert_eq!(
            v.check_headers(Some(&ts), None, Some(&sig), NOW)
                .unwrap_err()
                .reason(),
            "missing_header"
        );
        send(&mut v, NOW, NONCE, NOW).unwrap();
        // A spent nonce is refused from the headers alone.
        assert_eq!(
            headers(&mut v, &ts, NONCE, &sig).unwrap_err(),
            AuthError::ReplayedNonce
        );
    }

    #[test]
    fn messages_are_clear() {
        let all = [
            AuthError::MissingHeader {
                header: HEADER_NONCE,
            },
            AuthError::BadTimestamp,
            AuthError::StaleTimestamp {
                timestamp: 1,
                now: 400,
                skew: 399,
            },
            AuthError::BadNonce,
            AuthError::BadSignature { detail: "x" },
            AuthError::ReplayedNonce,
            AuthError::NonceCacheFull { capacity: 3 },
        ];
        let reasons: Vec<_> = all.iter().map(AuthError::reason).collect();
        assert_eq!(
            reasons,
            [
                "missing_header",
                "bad_timestamp",
                "stale_timestamp",
                "bad_nonce",
                "bad_signature",
                "replayed_nonce",
                "nonce_cache_full"
            ]
        );
        assert_eq!(
            all[2].to_string(),
            "X-Quiesce-Timestamp 1 is 399 s from the agent's clock (400), at most 300 s are \
             allowed: check the clocks of host and guest"
        );
        assert_eq!(
            all[3].to_string(),
            "X-Quiesce-Nonce must be 16 to 64 characters of [A-Za-z0-9_-]"
        );
        assert!(all[6].to_string().contains("301 s"));
    }
}
