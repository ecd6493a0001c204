//! The agent's callbacks to the host (contract: HTTP API, `callback_url`): the Snapshot is POSTed
//! there when it becomes `frozen` and when it ends, signed like a request when a key is set.
//!
//! [`notify`] never blocks and never fails: it puts the Snapshot on a queue and returns. The
//! snapshot driver calls it on the freeze/thaw path, so a slow or dead receiver must not delay a
//! thaw or a deadline; delivery problems end as a `warn` in the log.
//!
//! Design:
//! - One queue per snapshot (keyed by the Snapshot's `id` and the URL), drained by one tokio
//!   task, so the callbacks of a snapshot arrive in the order they were notified (`frozen`
//!   before the end). The task ends when its queue is empty; the next notification starts a
//!   new one. A queue holds at most [`QUEUE_DEPTH`] callbacks; more are dropped with a warning.
//! - Each callback gets up to [`ATTEMPTS`] attempts of at most [`ATTEMPT_TIMEOUT`] each
//!   (connection and answer), [`BACKOFF`] apart. Only failures where trying again may help are
//!   retried: no connection, a connection that broke off, a 5xx answer. A 2xx is delivered;
//!   3xx and 4xx are final (a redirect is not followed: the signature covers one path); so is a
//!   receiver that accepted the request and did not answer in time (it may have acted on it, and
//!   waiting again would only hold up the next callback). The worst case per callback is about
//!   3 × 2 s + 1.2 s.
//! - A callback is not retried once a newer state of the same snapshot is waiting in its queue:
//!   the newer one supersedes it (a `frozen` retried after the end would be misleading). Every
//!   queued callback still gets its first attempt, in order.
//! - Each attempt is signed anew (new nonce, current time): the agent's verifier on the host side
//!   refuses a replayed nonce. The signature covers `POST`, the callback URL's path and query as
//!   sent, and the JSON body bytes.
//! - No proxy from the environment, no redirects, HTTP/1.1; https with the system's CA store.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use reqwest::Url;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::auth::Key;
use crate::outbound::{describe_error, signed_headers};

/// Longest one attempt may take, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pauses before the second and the third attempt.
pub const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];
/// Attempts per callback at most.
pub const ATTEMPTS: usize = BACKOFF.len() + 1;
/// Callbacks waiting per snapshot at most (a snapshot sends two).
pub const QUEUE_DEPTH: usize = 8;

/// Timing of the deliveries (shorter in the unit tests).
#[derive(Debug)]
struct Policy {
    attempt_timeout: Duration,
    backoff: &'static [Duration],
}

const POLICY: Policy = Policy {
    attempt_timeout: ATTEMPT_TIMEOUT,
    backoff: &BACKOFF,
};

/// Queues a POST of `snapshot` (the contract's Snapshot object) to `url`, signed with `key` when
/// given, and returns at once. Must be called within a tokio runtime (else the callback is
/// dropped with a warning). Callbacks for one snapshot `id` are delivered in call order.
pub fn notify(url: String, key: Option<Key>, snapshot: Value) {
    notify_with(&POLICY, url, key, snapshot)
}

/// Checks a `callback_url` against the contract's rules: an absolute `http` or `https` URL
/// without `user:pass@`, whose host is the requesting peer's own IP address (`peer`, none on
/// vsock and unix sockets), or which starts with one of `allow` (the config's
/// `callbacks.allow`, compared after both are normalised by the URL parser). The error is the
/// message of a 400.
pub fn check_url(
    url: &str,
    peer: Option<std::net::IpAddr>,
    allow: &[String],
) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("callback_url is longer than 2048 characters".into());
    }
    let parsed = Url::parse(url)
        .map_err(|e| format!("callback_url must be an absolute http:// or https:// URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("callback_url must be an http:// or https:// URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "callback_url may not carry a user name or password (user:pass@): the agent signs \
             its callbacks with the shared key"
                .into(),
        );
    }
    let host_ip = parsed.host_str().and_then(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|a| a.to_canonical())
    });
    if let (Some(h), Some(p)) = (host_ip, peer) {
        if h == p.to_canonical() {
            return Ok(());
        }
    }
    let normal = parsed.as_str();
    let allowed = allow
        .iter()
        .any(|prefix| Url::parse(prefix).is_ok_and(|p| normal.starts_with(p.as_str())));
    if allowed {
        return Ok(());
    }
    Err(format!(
        "callback_url must point at the requesting host's own address ({}) or start with one of \
         the config's callbacks.allow prefixes",
        peer.map_or_else(|| "none on this listener".to_string(), |p| p.to_string())
    ))
}

/// A `callbacks.allow` entry: an absolute http(s) URL without user name or password whose path
/// ends with `/`, so that a prefix cannot match another host (`http://a.example` would match
/// `http://a.example.evil.net/`).
pub fn check_allow_prefix(prefix: &str) -> Result<(), String> {
    let parsed =
        Url::parse(prefix).map_err(|e| format!("not an absolute http:// or https:// URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("not an http:// or https:// URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a user name or password (user:pass@) is not allowed".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !prefix.ends_with('/') || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(
            "must end with / (e.g. https://backup.example:8443/quiesce/), with no query".into(),
        );
    }
    Ok(())
}

struct Job {
    url: Url,
    key: Option<Key>,
    body: Vec<u8>,
    id: String,
    state: String,
}

type Queues = BTreeMap<String, mpsc::Sender<Job>>;

/// The live queues, by snapshot id and URL. Only held for a map operation, never across IO.
static QUEUES: Mutex<Queues> = Mutex::new(BTreeMap::new());

fn queues() -> MutexGuard<'static, Queues> {
    QUEUES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn notify_with(policy: &'static Policy, url: String, key: Option<Key>, snapshot: Value) {
    let text = |field: &str| {
        snapshot
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (id, state) = (text("id"), text("state"));
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(snapshot = %id, state = %state, "callback not sent: no async runtime");
        return;
    };
    let parsed = match Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        _ => {
            tracing::warn!(snapshot = %id, state = %state,
                "callback not sent: callback_url is not an http(s) URL");
            return;
        }
    };
    let job = Job {
        url: parsed,
        key,
        body: serde_json::to_vec(&snapshot).expect("a JSON value serializes"),
        id,
        state,
    };
    let queue_key = format!("{}\n{url}", job.id);
    let mut map = queues();
    let sent = match map.get(&queue_key) {
        Some(tx) => tx.try_send(job),
        None => Err(mpsc::error::TrySendError::Closed(job)),
    };
    let job = match sent {
        Ok(()) => return,
        Err(mpsc::error::TrySendError::Full(job)) => {
            tracing::warn!(snapshot = %job.id, state = %job.state, url = %redacted(&job.url),
                "callback dropped: {QUEUE_DEPTH} callbacks of this snapshot are already waiting");
            return;
        }
        // No queue, or its task is gone without removing its entry (it panicked, or the
        // runtime stopped): start a new queue in its place.
        Err(mpsc::error::TrySendError::Closed(job)) => job,
    };
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    if tx.try_send(job).is_err() {
        unreachable!("a new queue has room and a receiver");
    }
    map.insert(queue_key.clone(), tx);
    drop(map);
    runtime.spawn(drain(queue_key, rx, policy));
}

/// Delivers the queue's callbacks one after the other, and ends once it is empty.
async fn drain(queue_key: String, mut rx: mpsc::Receiver<Job>, policy: &'static Policy) {
    loop {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(_) => {
                // Under the lock, `notify` cannot be between finding this queue and sending.
                let mut map = queues();
                match rx.try_recv() {
                    Ok(job) => job,
                    Err(_) => {
                        map.remove(&queue_key);
                        return;
                    }
                }
            }
        };
        deliver(&job, &rx, policy).await;
    }
}

/// Why one attempt failed, and whether another may help.
struct Failure {
    what: String,
    retry: bool,
}

async fn deliver(job: &Job, queue: &mpsc::Receiver<Job>, policy: &Policy) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(snapshot = %job.id, state = %job.state, "callback not sent: {e}");
            return;
        }
    };
    let attempts = policy.backoff.len() + 1;
    for attempt in 1..=attempts {
        let failure = match post_once(client, job, policy.attempt_timeout).await {
            Ok(()) => {
                tracing::debug!(snapshot = %job.id, state = %job.state, attempt, "callback delivered");
                return;
            }
            Err(f) => f,
        };
        let give_up = if !failure.retry {
            Some("not retried")
        } else if attempt == attempts {
            Some("giving up")
        } else if !queue.is_empty() {
            Some("not retried: a newer state of this snapshot is waiting")
        } else {
            None
        };
        if let Some(why) = give_up {
            tracing::warn!(snapshot = %job.id, state = %job.state, url = %redacted(&job.url),
                attempt, "callback failed: {}; {why}", failure.what);
            return;
        }
        tokio::time::sleep(policy.backoff[attempt - 1]).await;
    }
}

async fn post_once(client: &reqwest::Client, job: &Job, timeout: Duration) -> Result<(), Failure> {
    let mut request = client
        .post(job.url.clone())
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(key) = &job.key {
        let headers = signed_headers(key, "POST", &job.url, &job.body).map_err(|e| Failure {
            what: format!("cannot make a nonce to sign it: {e}"),
            retry: false,
        })?;
        for (name, value) in headers.pairs() {
            request = request.header(name, value);
        }
    }
    match request.body(job.body.clone()).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(Failure {
            what: format!("answered HTTP {}", response.status()),
            retry: response.status().is_server_error(),
        }),
        Err(e) => Err(Failure {
            what: describe_error(&e, timeout),
            // An answer that did not come in time may still have been acted on.
            retry: e.is_connect() || !e.is_timeout(),
        }),
    }
}

/// The one HTTP client of the callbacks, built on first use (its connection pool is shared).
fn client() -> Result<&'static reqwest::Client, &'static str> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(ATTEMPT_TIMEOUT)
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("quiesce/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot set up the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(String::as_str)
}

/// The URL for the log: no credentials, no query (either may carry a secret).
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Verifier, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
    use serde_json::json;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::time::Instant;

    const FAST: Policy = Policy {
        attempt_timeout: Duration::from_millis(400),
        backoff: &[Duration::from_millis(20), Duration::from_millis(50)],
    };

    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        headers: HashMap<String, String>,
        body: Value,
    }

    /// A loopback HTTP receiver: `answer(n)` gives the status line for the n-th request (from
    /// 0), or `None` to keep the connection open without answering.
    struct Receiver {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Receiver {
        fn start(answer: fn(usize) -> Option<&'static str>) -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!(
                "http://{}/hook/cb?token=s3cret",
                listener.local_addr().unwrap()
            );
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = seen.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for (n, stream) in listener.incoming().enumerate() {
                    let Ok(mut stream) = stream else { return };
                    let Some(request) = read_request(&mut stream) else {
                        continue;
                    };
                    log.lock().unwrap().push(request);
                    match answer(n) {
                        Some(status) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            );
                        }
                        None => held.push(stream),
                    }
                }
            });
            Receiver { url, seen }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        async fn wait_for(&self, count: usize, within: Duration) -> Vec<Seen> {
            let start = Instant::now();
            while self.seen().len() < count && start.elapsed() < within {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.seen()
        }
    }

    fn read_request(stream: &mut TcpStream) -> Option<Seen> {
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let path = line.split(' ').nth(1)?.to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let len: usize = headers.get("content-length")?.parse().ok()?;
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        Some(Seen {
            path,
            headers,
            body: serde_json::from_slice(&body).ok()?,
        })
    }

    fn snap(id: &str, state: &str) -> Value {
        json!({"id": id, "state": state, "mounts": []})
    }

    #[tokio::test]
    async fn callbacks_of_a_snapshot_arrive_in_order_and_signed() {
        let r = Receiver::start(|_| Some("200 OK"));
        let key = Key::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        let start = Instant::now();
        for state in ["frozen", "thawing", "succeeded"] {
            notify_with(&FAST, r.url.clone(), Some(key.clone()), snap("ord", state));
        }
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "notify returned at once"
        );
        let seen = r.wait_for(3, Duration::from_secs(5)).await;
        let states: Vec<_> = seen.iter().map(|s| s.body["state"].clone()).collect();
        assert_eq!(states, ["frozen", "thawing", "succeeded"]);
        let mut verifier = Verifier::new(key);
        for s in &seen {
            assert_eq!(s.path, "/hook/cb?token=s3cret");
            assert_eq!(s.headers["content-type"], "application/json");
            let ts = &s.headers[&HEADER_TIMESTAMP.to_ascii_lowercase()];
            let body = serde_json::to_vec(&s.body).unwrap();
            verifier
                .verify(
                    "POST",
                    &s.path,
                    Some(ts),
                    s.headers
                        .get(&HEADER_NONCE.to_ascii_lowercase())
                        .map(|x| x.as_str()),
                    s.headers
                        .get(&HEADER_SIGNATURE.to_ascii_lowercase())
                        .map(|x| x.as_str()),
                    &body,
                    ts.parse().unwrap(),
                )
                .unwrap();
        }
    }

    #[tokio::test]
    async fn unsigned_without_a_key() {
        let r = Receiver::start(|_| Some("204 No Content"));
        notify_with(&FAST, r.url.clone(), None, snap("nokey", "frozen"));
        let seen = r.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(seen.len(), 1);
        assert!(!seen[0]
            .headers
            .contains_key(&HEADER_SIGNATURE.to_ascii_lowercase()));
    }

    #[tokio::test]
    async fn server_errors_are_retried_client_errors_are_not() {
        let r = Receiver::start(|n| Some(if n < 2 { "503 Busy" } else { "200 OK" }));
        notify_with(&FAST, r.url.clone(), None, snap("retry", "frozen"));
        let seen = r.wait_for(3, Duration::from_secs(5)).await;
        assert_eq!(seen.len(), 3, "two 503s, then delivered");
        // Each attempt is signed anew: fresh nonces would differ (no key here: same body).
        assert!(seen.iter().all(|s| s.body == snap("retry", "frozen")));

        let r = Receiver::start(|_| Some("401 Unauthorized"));
        notify_with(&FAST, r.url.clone(), None, snap("refused", "frozen"));
        r.wait_for(1, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(r.seen().len(), 1, "a 4xx is final");
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let r = Receiver::start(|_| Some("500 Internal Server Error"));
        notify_with(&FAST, r.url.clone(), None, snap("bounded", "frozen"));
        r.wait_for(3, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(r.seen().len(), ATTEMPTS);
    }

    #[tokio::test]
    async fn a_newer_state_supersedes_the_retries_of_an_older_one() {
        let r = Receiver::start(|_| Some("503 Busy"));
        notify_with(&FAST, r.url.clone(), None, snap("super", "frozen"));
        notify_with(&FAST, r.url.clone(), None, snap("super", "succeeded"));
        r.wait_for(4, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let states: Vec<_> = r.seen().iter().map(|s| s.body["state"].clone()).collect();
        assert_eq!(states, ["frozen", "succeeded", "succeeded", "succeeded"]);
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_blocks_nobody() {
        let r = Receiver::start(|_| None);
        let start = Instant::now();
        notify_with(&FAST, r.url.clone(), None, snap("hang", "frozen"));
        notify_with(&FAST, r.url.clone(), None, snap("hang", "failed"));
        assert!(start.elapsed() < Duration::from_millis(50));
        // The first times out (not retried: it may have been acted on), then the second goes.
        let seen = r.wait_for(2, Duration::from_secs(5)).await;
        let states: Vec<_> = seen.iter().map(|s| s.body["state"].clone()).collect();
        assert_eq!(states, ["frozen", "failed"]);
        assert!(start.elapsed() >= FAST.attempt_timeout);
    }

    #[tokio::test]
    async fn an_unreachable_receiver_gives_up_and_the_queue_ends() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/cb");
        notify_with(&FAST, url.clone(), None, snap("dead", "frozen"));
        let key = format!("dead\n{url}");
        let start = Instant::now();
        while queues().contains_key(&key) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the queue task ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn without_a_runtime_or_with_a_bad_url_nothing_happens() {
        notify("http://127.0.0.1:9/".into(), None, snap("nort", "frozen"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            notify("ftp://x/".into(), None, snap("badurl", "frozen"));
            notify("not a url".into(), None, snap("badurl", "frozen"));
        });
        assert!(!queues()
            .keys()
            .any(|k| k.starts_with("nort\n") || k.starts_with("badurl\n")));
    }

    #[test]
    fn callback_urls_follow_the_rules() {
        let peer: Option<std::net::IpAddr> = Some("10.0.0.7".parse().unwrap());
        let allow = vec!["https://backup.example/hooks/".to_string()];
        for ok in [
            "http://10.0.0.7:8080/cb",
            "https://10.0.0.7/x?y=1",
            "https://backup.example/hooks/a",
            "HTTPS://BACKUP.example:443/hooks/b",
        ] {
            assert_eq!(check_url(ok, peer, &allow), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://10.0.0.7/",
            "/relative",
            "http://10.0.0.8/",
            "http://user:pw@10.0.0.7/",
            "http://user@10.0.0.7/",
            "https://backup.example/other",
            "https://backup.example.evil.net/hooks/",
            "https://backup.example@evil.net/hooks/",
            "http://localhost/",
        ] {
            assert!(check_url(bad, peer, &allow).is_err(), "{bad}");
        }
        // No peer address (vsock, unix): only the allowed prefixes.
        assert!(check_url("http://10.0.0.7/", None, &allow).is_err());
        assert!(check_url("https://backup.example/hooks/c", None, &allow).is_ok());
        let v6: Option<std::net::IpAddr> = Some("::ffff:10.0.0.7".parse().unwrap());
        assert!(check_url("http://10.0.0.7/", v6.map(|a| a.to_canonical()), &[]).is_ok());
    }

    #[test]
    fn allow_prefixes_are_checked() {
        assert!(check_allow_prefix("https://backup.example/").is_ok());
        assert!(check_allow_prefix("http://10.0.0.1:8080/cb/").is_ok());
        for bad in [
            "https://backup.example",
            "backup.example/",
            "ftp://x/",
            "https://u:p@x/",
            "https://x/?a=/",
        ] {
            assert!(check_allow_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_urls_carry_no_secrets() {
        let u = Url::parse("https://user:pw@host:1/cb?token=x").unwrap();
        assert_eq!(redacted(&u), "https://host:1/cb");
    }
}
