//! `quiesce snapshot`: the reference host orchestrator (contract: Command line).
//!
//! One run, for one agent or a consistency group of several (every `--agent`):
//!
//! 1. Start a snapshot on every agent at once (`POST /v1/snapshots`, the same generated
//!    `request_id` on each, so a create retried after a lost answer is the same snapshot).
//! 2. Wait until each one is frozen (`?wait=frozen`, long polls). An agent "fails to freeze" when
//!    its create was refused or could not be sent, or when its snapshot is not in state `frozen`
//!    once it got past freezing (it ended without freezing, or its deadline thawed it while the
//!    group was still waiting for a slower member). With several agents every member is checked
//!    once more after the slowest froze. A snapshot that is `frozen` with consistency `crash` (a
//!    mount that could not freeze, or freezing disabled on that agent) counts as frozen: that is
//!    the agent's honest answer, and its final consistency says so in the report.
//! 3. If any agent failed to freeze: abort (`DELETE`) every snapshot that was started, never run
//!    CMD, wait for their end, print the report, exit 1.
//! 4. Otherwise run CMD once with `sh -c` (stdin /dev/null, stdout and stderr to our stderr). The
//!    thaw is `taken` if it exited 0, else `failed`. Without `--exec` nothing runs and the thaw
//!    is `taken` at once: a freeze test of the group.
//! 5. Thaw every agent at once, wait for every snapshot's end (`?wait=done`), print the report.
//!
//! The report on stdout is `{"snapshots": [...]}`, one entry per `--agent`, in that order: the
//! agent's final Snapshot with an added `"agent"` (the URL) and, when the host side saw a
//! problem, an `"error"` message. An agent on which no snapshot was started gets
//! `{"agent": URL, "id": null, "state": null, "error": "..."}`. Exit 0 only when every snapshot
//! ended `succeeded` (whatever its consistency); 1 otherwise, and for errors found before
//! anything started (a bad URL, an unreadable key file: a message on stderr, no report).
//!
//! SIGINT or SIGTERM before the thaw aborts every started snapshot (while CMD runs: CMD is
//! killed and the thaw is `failed`); during the final wait it stops waiting. The report is
//! printed in every case.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::auth::Key;
use crate::commands::args::SnapshotArgs;
use crate::host::client::AgentClient;
use crate::snapshot::lifecycle::{State, ThawReason};
use crate::snapshot::model::Received;

/// Longest wait for a snapshot to get through its pre hooks and freeze.
pub const FREEZE_WAIT: Duration = Duration::from_secs(600);
/// Longest wait for a snapshot to end after the thaw or abort (post hooks).
pub const END_WAIT: Duration = Duration::from_secs(600);
/// One long poll (the agent answers earlier when the state is reached).
const POLL: Duration = Duration::from_secs(30);
/// Failed polls in a row before an agent is given up.
const POLL_FAILURES: u32 = 3;
/// Pause after a failed poll or a create that got no answer.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// One agent of the group and what the host knows of its snapshot.
struct Member {
    client: AgentClient,
    url: String,
    id: Option<String>,
    /// The last Snapshot the agent sent.
    last: Option<Received>,
    /// What went wrong, as told on stderr and put in the report.
    error: Option<String>,
}

impl Member {
    fn state(&self) -> Option<State> {
        Some(self.last.as_ref()?.snapshot.state)
    }

    fn fail(&mut self, message: String) {
        eprintln!("quiesce snapshot: {message}");
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    fn report(&self) -> Value {
        let mut entry = match &self.last {
            // Exactly what the agent sent, fields unknown to this client included.
            Some(received) => received.raw.clone(),
            None => {
                let mut m = Map::new();
                m.insert("id".into(), json!(self.id));
                m.insert("state".into(), Value::Null);
                m
            }
        };
        entry.insert("agent".into(), json!(self.url));
        if let Some(e) = &self.error {
            entry.insert("error".into(), json!(e));
        }
        Value::Object(entry)
    }

    fn succeeded(&self) -> bool {
        self.error.is_none() && self.state() == Some(State::Succeeded)
    }
}

/// Runs the command; returns the exit code.
pub async fn run(args: SnapshotArgs) -> anyhow::Result<i32> {
    let key = read_key(args.key_file.as_deref())?;
    let mut members = Vec::new();
    let mut seen = HashSet::new();
    for url in &args.agents {
        let client = AgentClient::new(url, key.clone())?;
        if !seen.insert(client.base_url().to_string()) {
            bail!("--agent {url} is given twice");
        }
        members.push(Member {
            client,
            url: url.clone(),
            id: None,
            last: None,
            error: None,
        });
    }
    let body = create_body(&args)?;
    let mut interrupt = Interrupt::install()?;

    create_all(&mut members, &body, key.is_some()).await;
    let mut group_frozen = members.iter().all(|m| m.id.is_some());
    if group_frozen {
        group_frozen = tokio::select! {
            ok = wait_frozen(&mut members) => ok,
            _ = interrupt.wait() => false,
        };
    }
    if interrupt.is_set() {
        for m in members.iter_mut().filter(|m| m.id.is_some()) {
            m.fail(format!("{}: interrupted before the thaw", m.url));
        }
    }
    if group_frozen && !interrupt.is_set() {
        let taken = match &args.exec {
            Some(cmd) => run_exec(cmd, &mut interrupt).await,
            None => true,
        };
        if !taken && interrupt.is_set() {
            for m in &mut members {
                m.fail(format!("{}: interrupted while CMD ran", m.url));
            }
        }
        thaw_all(&mut members, taken).await;
    } else {
        let started = members.iter().filter(|m| m.id.is_some()).count();
        if started > 0 {
            eprintln!(
                "quiesce snapshot: {}: aborting the {started} started snapshot(s){}",
                if interrupt.is_set() {
                    "interrupted"
                } else {
                    "not every agent froze"
                },
                if args.exec.is_some() {
                    "; CMD is not run"
                } else {
                    ""
                }
            );
        }
        abort_all(&mut members).await;
    }
    tokio::select! {
        _ = wait_end(&mut members) => {}
        _ = interrupt.wait_next() => {
            for m in members.iter_mut().filter(|m| m.id.is_some()) {
                m.fail(format!("{}: interrupted while waiting for the end", m.url));
            }
        }
    }

    let report = json!({ "snapshots": members.iter().map(Member::report).collect::<Vec<_>>() });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("the report serializes")
    );
    let ok = members.iter().filter(|m| m.succeeded()).count();
    eprintln!(
        "quiesce snapshot: {ok} of {} snapshot(s) succeeded",
        members.len()
    );
    Ok(if ok == members.len() { 0 } else { 1 })
}

pub(crate) fn read_key(path: Option<&Path>) -> anyhow::Result<Option<Key>> {
    let Some(path) = path else { return Ok(None) };
    let bytes =
        std::fs::read(path).with_context(|| format!("reading --key-file {}", path.display()))?;
    let key =
        Key::from_file_contents(bytes).with_context(|| format!("--key-file {}", path.display()))?;
    Ok(Some(key))
}

/// The `POST /v1/snapshots` body: only what was asked, plus a fresh `request_id`.
fn create_body(args: &SnapshotArgs) -> anyhow::Result<Value> {
    // The nonce alphabet is [A-Za-z0-9_-]; request ids allow [A-Za-z0-9._:-].
    let nonce = crate::auth::new_nonce().context("making a request_id")?;
    let mut body = Map::new();
    body.insert(
        "request_id".into(),
        json!(format!("quiesce-{}", nonce.replace('_', "."))),
    );
    if let Some(c) = args.consistency {
        body.insert("consistency".into(), json!(c.as_str()));
    }
    if let Some(t) = args.freeze_timeout {
        body.insert(
            "freeze_timeout_ms".into(),
            json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    if !args.mounts.is_empty() {
        let mut mounts = Vec::new();
        for m in &args.mounts {
            let Some(text) = m.to_str() else {
                bail!("--mount {}: not UTF-8, cannot be sent", m.display());
            };
            mounts.push(text.to_string());
        }
        body.insert("mounts".into(), json!(mounts));
    }
    Ok(Value::Object(body))
}

/// Runs the futures concurrently; their results in order.
async fn parallel<T, F>(futures: Vec<F>) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("an agent task does not panic"));
    }
    out
}

/// What to add to a refusal so that the operator knows what to do.
pub(crate) fn hint(status: u16, body: &Value, keyed: bool) -> String {
    match status {
        401 if keyed => " (check that --key-file holds the agent's auth.key_file and that the \
                         host's and guest's clocks agree)"
            .into(),
        401 => {
            " (the agent requires signed requests: pass --key-file with its auth.key_file)".into()
        }
        409 => match body.get("active").and_then(Value::as_str) {
            Some(active) => format!(" (snapshot {active} is still running on that agent)"),
            None => String::new(),
        },
        _ => String::new(),
    }
}

async fn create_all(members: &mut [Member], body: &Value, keyed: bool) {
    let futures = members
        .iter()
        .map(|m| {
            let (client, body) = (m.client.clone(), body.clone());
            async move {
                let mut reply = client.create(&body).await;
                // The agent may have seen it: the same request_id again answers with that
                // snapshot rather than starting another.
                if matches!(&reply, Err(e) if !e.is_connect()) {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    reply = client.create(&body).await;
                }
                reply
            }
        })
        .collect();
    for (m, reply) in members.iter_mut().zip(parallel(futures).await) {
        match reply {
            Ok(r) if r.is_success() => match r.snapshot() {
                Ok(s) => {
                    m.id = Some(s.snapshot.id.clone());
                    m.last = Some(s);
                }
                Err(e) => m.fail(format!("{}: the agent's answer to the create: {e}", m.url)),
            },
            Ok(r) => {
                let why = format!(
                    "{}: the agent refused the snapshot: {}{}",
                    m.url,
                    r.describe(),
                    hint(r.status, &r.body, keyed)
                );
                m.fail(why);
            }
            Err(e) => m.fail(format!("{}: cannot start a snapshot: {e}", m.url)),
        }
    }
}

/// Waits until every started snapshot reached `frozen`; false if one did not (with its error).
async fn wait_frozen(members: &mut [Member]) -> bool {
    wait_all(members, "frozen", FREEZE_WAIT).await;
    if members.len() > 1 && members.iter().all(|m| m.state() == Some(State::Frozen)) {
        // The early ones may have been thawed by their deadline while the group waited.
        let futures = members
            .iter()
            .map(|m| {
                let (client, id) = (m.client.clone(), m.id.clone().unwrap_or_default());
                async move { client.get(&id, None, 0).await }
            })
            .collect();
        for (m, reply) in members.iter_mut().zip(parallel(futures).await) {
            match reply {
                Ok(r) if r.status == 200 => match r.snapshot() {
                    Ok(s) => m.last = Some(s),
                    Err(e) => m.fail(format!("{}: {e}", m.url)),
                },
                Ok(r) => m.fail(format!("{}: {}", m.url, r.describe())),
                Err(e) => m.fail(e.to_string()),
            }
        }
    }
    let mut all = true;
    for m in members.iter_mut() {
        if m.error.is_some() {
            all = false;
            continue;
        }
        let last = m.last.as_ref().map(|r| &r.snapshot);
        match last {
            Some(s) if s.state == State::Frozen => {
                eprintln!(
                    "quiesce snapshot: {}: snapshot {} frozen (consistency {})",
                    m.url,
                    m.id.as_deref().unwrap_or("?"),
                    json_text(&s.consistency)
                );
            }
            _ => {
                let errors = last
                    .map(|s| {
                        s.errors
                            .iter()
                            .map(|p| p.message.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .filter(|e| !e.is_empty())
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                let why = format!(
                    "{}: snapshot {} is not frozen (state {}){errors}",
                    m.url,
                    m.id.as_deref().unwrap_or("?"),
                    last.map_or("unknown", |s| s.state.as_str())
                );
                m.fail(why);
                all = false;
            }
        }
    }
    all
}

/// Long-polls every started snapshot until it reached `wait` (`frozen`: got past freezing;
/// `done`: ended) or `budget` ran out; keeps the last Snapshot seen and records failures.
async fn wait_all(members: &mut [Member], wait: &'static str, budget: Duration) {
    let futures: Vec<_> = members
        .iter()
        .filter_map(|m| {
            let (client, id) = (m.client.clone(), m.id.clone()?);
            Some(async move { wait_one(client, id, wait, budget).await })
        })
        .collect();
    let results = parallel(futures).await;
    for (m, (last, error)) in members.iter_mut().filter(|m| m.id.is_some()).zip(results) {
        if last.is_some() {
            m.last = last;
        }
        if let Some(e) = error {
            m.fail(format!("{}: {e}", m.url));
        }
    }
}

fn reached(wait: &str, state: State) -> bool {
    match wait {
        "frozen" => !matches!(state, State::PreHooks | State::Freezing),
        _ => state.is_end(),
    }
}

/// A field as the JSON text the agent would have sent (`"application"`, `null`).
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

async fn wait_one(
    client: AgentClient,
    id: String,
    wait: &'static str,
    budget: Duration,
) -> (Option<Received>, Option<String>) {
    let start = Instant::now();
    let mut last = None;
    let mut failures = 0;
    loop {
        let left = budget.saturating_sub(start.elapsed());
        let poll = u64::try_from(left.min(POLL).as_millis()).unwrap_or(0);
        match client.get(&id, Some(wait), poll).await {
            Ok(r) if r.status == 200 => {
                let received = match r.snapshot() {
                    Ok(s) => s,
                    Err(e) => return (last, Some(format!("snapshot {id}: {e}"))),
                };
                failures = 0;
                let done = reached(wait, received.snapshot.state);
                last = Some(received);
                if done {
                    return (last, None);
                }
            }
            Ok(r) => return (last, Some(format!("snapshot {id}: {}", r.describe()))),
            Err(e) => {
                failures += 1;
                if failures >= POLL_FAILURES {
                    return (last, Some(e.to_string()));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        if start.elapsed() >= budget {
            let why = format!(
                "snapshot {id} did not get {wait} within {}",
                crate::duration::format(budget)
            );
            return (last, Some(why));
        }
    }
}

/// Runs CMD with `sh -c`; true when it exited 0. An interrupt kills it (false).
async fn run_exec(cmd: &str, interrupt: &mut Interrupt) -> bool {
    eprintln!("quiesce snapshot: every agent is frozen: running {cmd:?}");
    let started = crate::commands::spawn_shell(cmd);
    let mut child = match started {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quiesce snapshot: cannot run CMD with sh -c: {e}; thawing as failed");
            return false;
        }
    };
    tokio::select! {
        status = child.wait() => match status {
            Ok(s) if s.success() => true,
            Ok(s) => {
                eprintln!("quiesce snapshot: CMD {s}: thawing with storage_snapshot failed");
                false
            }
            Err(e) => {
                eprintln!("quiesce snapshot: waiting for CMD: {e}; thawing as failed");
                false
            }
        },
        _ = interrupt.wait() => {
            eprintln!("quiesce snapshot: interrupted: killing CMD, thawing as failed");
            let _ = child.start_kill();
            false
        }
    }
}

async fn thaw_all(members: &mut [Member], taken: bool) {
    let futures: Vec<_> = members
        .iter()
        .filter_map(|m| {
            let (client, id) = (m.client.clone(), m.id.clone()?);
            Some(async move {
                let mut reply = client.thaw(&id, taken).await;
                // Only when the agent surely did not see it: a second thaw it did see is a 409.
                for _ in 0..2 {
                    match &reply {
                        Err(e) if e.is_connect() => {
                            tokio::time::sleep(RETRY_PAUSE).await;
                            reply = client.thaw(&id, taken).await;
                        }
                        _ => break,
                    }
                }
                reply
            })
        })
        .collect();
    let replies = parallel(futures).await;
    for (m, reply) in members.iter_mut().filter(|m| m.id.is_some()).zip(replies) {
        match reply {
            Ok(r) if r.is_success() => match r.snapshot() {
                Ok(s) => m.last = Some(s),
                Err(e) => m.fail(format!("{}: the agent's answer to the thaw: {e}", m.url)),
            },
            Ok(r) => {
                // A 409 carries the Snapshot: its deadline may have come first.
                let late = r.snapshot().ok().and_then(|s| s.snapshot.thaw_reason)
                    == Some(ThawReason::Deadline);
                m.fail(format!(
                    "{}: the thaw was refused: {}{}",
                    m.url,
                    r.describe(),
                    if late {
                        " (the agent's freeze deadline came first: the storage snapshot is at \
                         best crash-consistent; a longer --freeze-timeout may help)"
                    } else {
                        ""
                    }
                ))
            }
            Err(e) => m.fail(format!(
                "{}: cannot ask for the thaw ({e}); the agent's deadline thaws",
                m.url
            )),
        }
    }
}

async fn abort_all(members: &mut [Member]) {
    let futures: Vec<_> = members
        .iter()
        .filter_map(|m| {
            let (client, id) = (m.client.clone(), m.id.clone()?);
            Some(async move { client.abort(&id).await })
        })
        .collect();
    let replies = parallel(futures).await;
    for (m, reply) in members.iter_mut().filter(|m| m.id.is_some()).zip(replies) {
        match reply {
            // 409: it had already ended, which is what an abort wants.
            Ok(r) if r.is_success() || r.status == 409 => {
                if let Ok(s) = r.snapshot() {
                    m.last = Some(s);
                }
                if m.error.is_none() {
                    m.error = Some(
                        "aborted: another agent of the group did not freeze; CMD did not run"
                            .into(),
                    );
                }
            }
            Ok(r) => m.fail(format!(
                "{}: the abort was refused: {}",
                m.url,
                r.describe()
            )),
            Err(e) => m.fail(format!(
                "{}: cannot abort ({e}); the agent's deadline thaws",
                m.url
            )),
        }
    }
}

async fn wait_end(members: &mut [Member]) {
    // Those already ended (an abort answered 409) need no poll, but one costs nothing.
    wait_all(members, "done", END_WAIT).await;
    for m in members.iter_mut() {
        if let Some(s) = m.last.as_ref().map(|r| &r.snapshot) {
            if m.id.is_some() && s.state != State::Succeeded && m.error.is_none() {
                eprintln!(
                    "quiesce snapshot: {}: snapshot {} ended {} (thaw_reason {})",
                    m.url,
                    m.id.as_deref().unwrap_or("?"),
                    s.state.as_str(),
                    json_text(&s.thaw_reason)
                );
            }
        }
    }
}

/// SIGINT and SIGTERM, caught for the whole run so that a frozen group is always thawed.
struct Interrupt {
    /// How many signals came so far.
    rx: watch::Receiver<u32>,
}

impl Interrupt {
    fn install() -> std::io::Result<Interrupt> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Interrupt { rx })
    }

    fn is_set(&self) -> bool {
        *self.rx.borrow() > 0
    }

    /// Returns once a signal came (at once if one already did).
    async fn wait(&mut self) {
        self.wait_beyond(0).await
    }

    /// Returns on the next signal, ignoring those that already came.
    async fn wait_next(&mut self) {
        let seen = *self.rx.borrow();
        self.wait_beyond(seen).await
    }

    async fn wait_beyond(&mut self, seen: u32) {
        if self.rx.wait_for(|n| *n > seen).await.is_err() {
            // The signal task never ends; without it, no signal can come.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> SnapshotArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: SnapshotArgs,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(extra);
        T::try_parse_from(argv).unwrap().a
    }

    #[test]
    fn the_create_body_holds_only_what_was_asked() {
        let b = create_body(&args(&["--agent", "http://h:1"])).unwrap();
        let rid = b["request_id"].as_str().unwrap();
        assert!(rid.starts_with("quiesce-") && rid.len() == 40, "{rid}");
        assert!(rid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)));
        assert_eq!(b.as_object().unwrap().len(), 1);
        let b = create_body(&args(&[
            "--agent",
            "http://h:1",
            "--consistency",
            "file_system",
            "--freeze-timeout",
            "2s",
            "--mount",
            "/data",
            "--mount",
            "/var/lib/db",
        ]))
        .unwrap();
        assert_eq!(b["consistency"], "file_system");
        assert_eq!(b["freeze_timeout_ms"], 2000);
        assert_eq!(b["mounts"], json!(["/data", "/var/lib/db"]));
    }

    #[test]
    fn reached_is_past_freezing_or_an_end() {
        use State::*;
        for st in [PreHooks, Freezing] {
            assert!(!reached("frozen", st));
        }
        for st in [Frozen, Thawing, PostHooks, Failed] {
            assert!(reached("frozen", st));
        }
        for st in [Frozen, Thawing, PostHooks] {
            assert!(!reached("done", st));
        }
        for st in [Succeeded, Failed, Aborted] {
            assert!(reached("done", st));
        }
    }

    #[test]
    fn an_agent_without_snapshot_is_reported_with_its_error() {
        let m = Member {
            client: AgentClient::new("http://h:1", None).unwrap(),
            url: "http://h:1".into(),
            id: None,
            last: None,
            error: Some("refused".into()),
        };
        assert_eq!(
            m.report(),
            json!({"agent": "http://h:1", "id": null, "state": null, "error": "refused"})
        );
        assert!(!m.succeeded());
    }

    #[test]
    fn refusals_carry_a_hint() {
        assert!(hint(401, &Value::Null, false).contains("--key-file"));
        assert!(hint(401, &Value::Null, true).contains("clocks"));
        assert!(hint(409, &json!({"active": "abc"}), false).contains("abc"));
        assert_eq!(hint(400, &Value::Null, false), "");
    }
}
