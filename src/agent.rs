//! The agent's snapshots: one running at a time, the last 100 kept, idempotent `request_id`s.
//! Transport-independent: the HTTP handlers only translate requests into these calls.

use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::snapshot::lifecycle::{Refusal, Requested, State};
use crate::snapshot::model::{Channel, Snapshot};
use crate::snapshot::ports::Ports;
use crate::snapshot::{self, Context, Control, ControlMsg, Request};

/// How many finished snapshots are kept for `GET /v1/snapshots`.
pub const HISTORY: usize = 100;

/// The body of `POST /v1/snapshots` (every field optional, unknown fields refused).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub request_id: Option<String>,
    pub consistency: Option<RequestedWire>,
    pub freeze_timeout_ms: Option<u64>,
    pub mounts: Option<Vec<PathBuf>>,
    pub callback_url: Option<String>,
}

/// `consistency` as the host writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestedWire {
    Application,
    FileSystem,
}

/// Why a create was refused.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("another snapshot is not finished")]
    Busy { active: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// The outcome of a create.
#[derive(Debug)]
pub enum Created {
    /// A new snapshot (202).
    New(Snapshot),
    /// The snapshot of a known `request_id` (200).
    Existing(Snapshot),
}

/// Why a thaw or abort was refused.
#[derive(Debug)]
pub enum ControlError {
    NotFound,
    /// 409, with the snapshot as it stands and the reason.
    Conflict(Box<Snapshot>, String),
}

struct Entry {
    id: String,
    request_id: Option<String>,
    report: Report,
    /// Set when the snapshot task panicked: the final report, which wins over the channel's
    /// last value (the task can no longer send one).
    panicked: Arc<std::sync::OnceLock<Snapshot>>,
    /// `None` once the entry is compacted (the snapshot has ended).
    controls: Option<mpsc::Sender<ControlMsg>>,
}

/// A snapshot's report as the history keeps it.
enum Report {
    /// The snapshot task's channel: the report as it changes.
    Live(watch::Receiver<Snapshot>),
    /// The final report of an ended snapshot, alone: the channels are gone (each costs a few
    /// KiB, and 100 are kept).
    Done(Box<Snapshot>),
}

impl Entry {
    /// The report as it stands.
    fn current(&self) -> Snapshot {
        if let Some(s) = self.panicked.get() {
            return s.clone();
        }
        match &self.report {
            Report::Live(rx) => rx.borrow().clone(),
            Report::Done(s) => (**s).clone(),
        }
    }

    fn ended(&self) -> bool {
        if self.panicked.get().is_some() {
            return true;
        }
        match &self.report {
            Report::Live(rx) => rx.borrow().state.is_end(),
            Report::Done(_) => true,
        }
    }

    /// A receiver of the report; for an ended snapshot, one whose sender is already gone
    /// (its value is final: waits on it answer at once).
    fn receiver(&self) -> watch::Receiver<Snapshot> {
        if let Some(s) = self.panicked.get() {
            return watch::channel(s.clone()).1;
        }
        match &self.report {
            Report::Live(rx) => rx.clone(),
            Report::Done(s) => watch::channel((**s).clone()).1,
        }
    }

    /// Drops the channels of an ended snapshot and keeps its final report.
    fn compact(&mut self) {
        if let Some(s) = self.panicked.get() {
            self.report = Report::Done(Box::new(s.clone()));
            self.controls = None;
            return;
        }
        if let Report::Live(rx) = &self.report {
            let snap = rx.borrow().clone();
            if snap.state.is_end() {
                self.report = Report::Done(Box::new(snap));
                self.controls = None;
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Newest first; the active snapshot, if any, is the first.
    entries: VecDeque<Entry>,
    shutting_down: bool,
}

/// The agent.
pub struct Agent {
    /// The configuration for the next snapshot; a reload swaps it, a running snapshot keeps the
    /// one it started with.
    ctx: RwLock<Context>,
    /// What runs hooks and freezes.
    ports: Ports,
    /// The newest snapshot as it changes (the service status line follows it).
    latest: watch::Sender<Option<Snapshot>>,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// Ends of running snapshot tasks, for shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<Snapshot>>>,
}

/// A fresh snapshot id: 16 hex digits from /dev/urandom (falls back on time and pid).
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = (t ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl Agent {
    /// An agent with no snapshot yet, freezing and running hooks for real, with a spare
    /// watchdog kept ready once [`Agent::prepare_freezer`] was called (see [`Ports::daemon`]).
    pub fn new(ctx: Context) -> Arc<Agent> {
        let ports = Ports::daemon(&ctx.exe);
        Agent::with_ports(ctx, ports)
    }

    /// Gets the freezer ready for the next freeze ahead of any request: the daemon's spare
    /// watchdog (called once the daemon is up, so that its start is not in the start-up time).
    pub fn prepare_freezer(&self) {
        self.ports.freezers.prepare();
    }

    /// An agent on the given seams (fakes in the in-process tests).
    pub fn with_ports(ctx: Context, ports: Ports) -> Arc<Agent> {
        Arc::new(Agent {
            ctx: RwLock::new(ctx),
            ports,
            latest: watch::channel(None).0,
            metrics: Arc::new(Metrics::new()),
            inner: Mutex::new(Inner::default()),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The configuration in force for the next snapshot.
    pub fn context(&self) -> Context {
        self.ctx.read().expect("context lock").clone()
    }

    /// Puts a reloaded configuration in force for the snapshots that start from now on.
    pub fn set_context(&self, ctx: Context) {
        *self.ctx.write().expect("context lock") = ctx;
    }

    /// The newest snapshot, updated at each change of its report.
    pub fn latest(&self) -> watch::Receiver<Option<Snapshot>> {
        self.latest.subscribe()
    }

    /// The agent's metrics (`GET /metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Starts a snapshot ordered over HTTP, or returns the one of a known `request_id`.
    ///
    /// `peer` is the requesting host's IP address (none on vsock and unix sockets): a
    /// `callback_url` must point at it or start with one of the config's `callbacks.allow`.
    pub fn create(
        &self,
        body: CreateBody,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Created, CreateError> {
        self.create_on(Channel::Http, body, peer)
    }

    /// Starts a snapshot ordered through `channel` (one at a time across all channels).
    pub fn create_on(
        &self,
        channel: Channel,
        body: CreateBody,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Created, CreateError> {
        if let Some(rid) = &body.request_id {
            if !valid_request_id(rid) {
                return Err(CreateError::BadRequest(
                    "request_id must be 1 to 128 characters of [A-Za-z0-9._:-]".into(),
                ));
            }
        }
        if let Some(url) = &body.callback_url {
            let allow = self.context().config.callbacks.allow.clone();
            crate::callbacks::check_url(url, peer, &allow).map_err(CreateError::BadRequest)?;
        }
        // Checked before and again after preparing: preparing reads the mount table and stats
        // mount points, which must not happen under the lock the request handlers share.
        if let Some(early) = self.admit(&body)? {
            return Ok(early);
        }
        let request = Request {
            id: new_id(),
            request_id: body.request_id.clone(),
            channel,
            requested: match body.consistency {
                Some(RequestedWire::FileSystem) => Requested::FileSystem,
                _ => Requested::Application,
            },
            freeze_timeout: body.freeze_timeout_ms.map(Duration::from_millis),
            mounts: body.mounts.clone(),
            callback_url: body.callback_url.clone(),
            preflush: true,
        };
        let ctx = self.context();
        let prepared = snapshot::prepare_with(&ctx, &self.ports, request)
            .map_err(|e| CreateError::BadRequest(e.to_string()))?;
        let mut inner = self.inner.lock().expect("agent lock");
        if let Some(early) = Self::admit_locked(&inner, &body)? {
            return Ok(early);
        }
        let initial = snapshot::initial_snapshot(&prepared);
        let (report_tx, report) = watch::channel(initial.clone());
        let (controls, rx) = mpsc::channel(8);
        let metrics = self.metrics.clone();
        let mut changes = report.clone();
        let latest = self.latest.clone();
        latest.send_replace(Some(initial.clone()));
        tokio::spawn(async move {
            // Ends when the snapshot task drops its sender.
            while changes.changed().await.is_ok() {
                let snap = changes.borrow_and_update().clone();
                metrics.set_frozen(snap.mounts.iter().any(|m| m.frozen));
                latest.send_replace(Some(snap));
            }
        });
        let metrics = self.metrics.clone();
        metrics.set_active(true);
        // What ends the snapshot if its driver is lost: the config, the seams, and a sender of
        // its report (waiters then see the end state).
        let lost = (ctx.clone(), self.ports.clone(), report_tx.clone());
        let run = snapshot::run_with(
            ctx,
            self.ports.clone(),
            prepared,
            rx,
            snapshot::Outputs {
                report: report_tx,
                freeze_view: None,
            },
        );
        let id = initial.id.clone();
        let panicked = Arc::new(std::sync::OnceLock::new());
        let on_panic = (panicked.clone(), report.clone(), self.latest.clone());
        let task = tokio::spawn(async move {
            // A logind inhibitor lock from before the first pre hook until the last post hook
            // has ended (`run` returns only then), so that no reboot or suspend cuts the
            // snapshot in half. `None` where there is no bus or no logind.
            let inhibitor = crate::systemd::dbus::logind::inhibit(&id).await;
            // On a task of its own, so that a panic in it ends this snapshot instead of
            // leaving it unfinished forever (every create answered 409).
            let end = match tokio::spawn(run).await {
                Ok(end) => end,
                Err(e) => {
                    let (slot, report, latest) = on_panic;
                    let failed = failed_by_panic(report.borrow().clone(), &e);
                    // Thaw from the records, then the post hooks still due.
                    let (ctx, ports, report_tx) = lost;
                    let end = snapshot::after_a_lost_driver(&ctx, &ports, failed).await;
                    let _ = slot.set(end.clone());
                    report_tx.send_replace(end.clone());
                    latest.send_replace(Some(end.clone()));
                    end
                }
            };
            drop(inhibitor);
            metrics.snapshot_ended(&end);
            metrics.set_frozen(false);
            metrics.set_active(false);
            crate::sys::heap::give_back();
            end
        });
        // The snapshots before this one have ended (admitted only then): keep their reports,
        // drop their channels.
        for e in inner.entries.iter_mut() {
            e.compact();
        }
        inner.entries.push_front(Entry {
            id: initial.id.clone(),
            request_id: body.request_id,
            report: Report::Live(report),
            panicked,
            controls: Some(controls),
        });
        inner.entries.truncate(HISTORY);
        let mut tasks = self.tasks.lock().expect("tasks lock");
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Ok(Created::New(initial))
    }

    fn admit(&self, body: &CreateBody) -> Result<Option<Created>, CreateError> {
        let inner = self.inner.lock().expect("agent lock");
        Self::admit_locked(&inner, body)
    }

    /// `Some` for a known `request_id`; an error when busy or stopping; `None` to go ahead.
    fn admit_locked(inner: &Inner, body: &CreateBody) -> Result<Option<Created>, CreateError> {
        if inner.shutting_down {
            return Err(CreateError::ShuttingDown);
        }
        if let Some(rid) = &body.request_id {
            if let Some(e) = inner
                .entries
                .iter()
                .find(|e| e.request_id.as_deref() == Some(rid.as_str()))
            {
                return Ok(Some(Created::Existing(e.current())));
            }
        }
        if let Some(active) = inner.entries.front() {
            if !active.ended() {
                return Err(CreateError::Busy {
                    active: active.id.clone(),
                });
            }
        }
        Ok(None)
    }

    /// The snapshot's report channel.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<Snapshot>> {
        let inner = self.inner.lock().expect("agent lock");
        inner
            .entries
            .iter()
            .find(|e| e.id == id)
            .map(Entry::receiver)
    }

    /// The last snapshots, newest first.
    pub fn list(&self) -> Vec<Snapshot> {
        let inner = self.inner.lock().expect("agent lock");
        inner.entries.iter().map(Entry::current).collect()
    }

    /// Sends a control and waits for its answer (after the thaw, for thaw and abort).
    pub async fn control(&self, id: &str, control: Control) -> Result<Snapshot, ControlError> {
        let (sender, report) = {
            let inner = self.inner.lock().expect("agent lock");
            let e = inner
                .entries
                .iter()
                .find(|e| e.id == id)
                .ok_or(ControlError::NotFound)?;
            (e.controls.clone(), e.receiver())
        };
        let current = || report.borrow().clone();
        let Some(sender) = sender else {
            let snap = current();
            let reason = Refusal::Ended(snap.state).to_string();
            return Err(ControlError::Conflict(Box::new(snap), reason));
        };
        let (tx, rx) = oneshot::channel();
        let msg = ControlMsg {
            control,
            reply: Some(tx),
        };
        if sender.send(msg).await.is_err() {
            let snap = current();
            let reason = Refusal::Ended(snap.state).to_string();
            return Err(ControlError::Conflict(Box::new(snap), reason));
        }
        match rx.await {
            Ok(Ok(())) => Ok(current()),
            Ok(Err(refusal)) => Err(ControlError::Conflict(
                Box::new(current()),
                refusal.to_string(),
            )),
            Err(_) => {
                let snap = current();
                let reason = Refusal::Ended(snap.state).to_string();
                Err(ControlError::Conflict(Box::new(snap), reason))
            }
        }
    }

    /// Refuses new snapshots, stops the running one (thaw, due post hooks) and waits for it.
    pub async fn shutdown(&self) {
        let active = {
            let mut inner = self.inner.lock().expect("agent lock");
            inner.shutting_down = true;
            inner
                .entries
                .front()
                .filter(|e| !e.ended())
                .and_then(|e| e.controls.clone())
        };
        if let Some(sender) = active {
            let _ = sender
                .send(ControlMsg {
                    control: Control::Shutdown,
                    reply: None,
                })
                .await;
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The snapshot that is not finished, if any.
    pub fn active(&self) -> Option<Snapshot> {
        let inner = self.inner.lock().expect("agent lock");
        inner
            .entries
            .front()
            .filter(|e| !e.ended())
            .map(Entry::current)
    }

    /// True while a snapshot is not finished.
    pub fn busy(&self) -> bool {
        let inner = self.inner.lock().expect("agent lock");
        inner.entries.front().is_some_and(|e| !e.ended())
    }
}

/// The final report of a snapshot whose task panicked: `failed`, with the panic as an error.
/// The freezer's watchdog thaws on its own when its session is dropped.
fn failed_by_panic(mut snap: Snapshot, e: &tokio::task::JoinError) -> Snapshot {
    let what = if e.is_panic() {
        "panicked"
    } else {
        "was cancelled"
    };
    tracing::error!(
        snapshot = %snap.id,
        "the snapshot task {what} in state {:?}: the snapshot ends failed",
        snap.state
    );
    snap.state = State::Failed;
    snap.consistency = None;
    for m in &mut snap.mounts {
        m.frozen = false;
    }
    if snap.finished_at.is_none() {
        snap.finished_at = Some(crate::freezer::session::rfc3339(
            crate::duration::unix_ms_now(),
        ));
    }
    snap.errors.push(crate::snapshot::lifecycle::Problem {
        reason: crate::snapshot::lifecycle::Reason::InternalError,
        message: format!(
            "the snapshot task {what}; what it had frozen was thawed (by its watchdog and from \
             the records) and the post hooks still due ran after it"
        ),
    });
    snap
}

/// Waits until `pred` holds for the snapshot (or an end state), at most `timeout`.
pub async fn wait_until(
    mut rx: watch::Receiver<Snapshot>,
    timeout: Duration,
    pred: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let _ = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s) || s.state.is_end())).await;
    let s = rx.borrow().clone();
    s
}

/// `?wait=frozen`: frozen, or past it.
pub fn reached_frozen(s: &Snapshot) -> bool {
    !matches!(s.state, State::PreHooks | State::Freezing)
}

/// An agent on the fakes of the freezer and the hook runner, over the targets /data and /logs,
/// configured by `yaml` (in-process tests of the agent and its front doors; no root).
#[cfg(test)]
pub(crate) fn on_fakes(
    yaml: &str,
) -> (
    Arc<Agent>,
    Arc<crate::snapshot::fakes::FakeHooks>,
    Arc<crate::snapshot::fakes::FakeFreezers>,
) {
    use crate::snapshot::fakes;
    let hooks = Arc::new(fakes::FakeHooks::default());
    let freezers = fakes::FakeFreezers::new(&["/data", "/logs"]);
    let agent = Agent::with_ports(fakes::context(yaml), fakes::ports(&hooks, &freezers));
    (agent, hooks, freezers)
}

/// The registry in-process, on the fakes of the freezer and the hook runner (no root).
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::snapshot::fakes::{FakeFreezers, FakeHooks};

    fn agent(hooks_yaml: &str) -> (Arc<Agent>, Arc<FakeHooks>, Arc<FakeFreezers>) {
        on_fakes(&format!("hooks: {hooks_yaml}\n"))
    }

    fn body(request_id: Option<&str>) -> CreateBody {
        CreateBody {
            request_id: request_id.map(str::to_owned),
            ..Default::default()
        }
    }

    async fn frozen(agent: &Agent, id: &str) -> Snapshot {
        let rx = agent.watch(id).expect("known id");
        wait_until(rx, Duration::from_secs(10), reached_frozen).await
    }

    fn id_of(c: Created) -> String {
        match c {
            Created::New(s) | Created::Existing(s) => s.id,
        }
    }

    #[tokio::test]
    async fn one_snapshot_at_a_time_and_request_ids_are_idempotent() {
        let (agent, _hooks, _freezers) = agent("[]");
        let first = agent.create(body(Some("r-1")), None).unwrap();
        let Created::New(s) = first else {
            panic!("a new snapshot")
        };
        assert!(agent.busy());
        // Busy for anyone else; the same request_id gets the same snapshot.
        match agent.create(body(None), None) {
            Err(CreateError::Busy { active }) => assert_eq!(active, s.id),
            other => panic!("{other:?}"),
        }
        match agent.create(body(Some("r-1")), None).unwrap() {
            Created::Existing(e) => assert_eq!(e.id, s.id),
            other => panic!("{other:?}"),
        }
        frozen(&agent, &s.id).await;
        let thawed = agent
            .control(&s.id, Control::HostThaw { taken: true })
            .await
            .unwrap();
        assert!(thawed.mounts.iter().all(|m| !m.frozen));
        let rx = agent.watch(&s.id).unwrap();
        let end = wait_until(rx, Duration::from_secs(10), |s| s.state.is_end()).await;
        assert_eq!(end.state, State::Succeeded);
        assert!(!agent.busy());
        // The next one may start; the history is newest first.
        let second = id_of(agent.create(body(Some("r-2")), None).unwrap());
        let ids: Vec<String> = agent.list().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, [second.clone(), s.id.clone()]);
        agent.shutdown().await;
        let last = agent.list();
        assert_eq!(last[0].state, State::Aborted);
    }

    #[tokio::test]
    async fn controls_are_refused_where_the_contract_says() {
        let (agent, _hooks, _freezers) = agent("[]");
        assert!(matches!(
            agent.control("nope", Control::Abort).await,
            Err(ControlError::NotFound)
        ));
        let id = id_of(agent.create(body(None), None).unwrap());
        frozen(&agent, &id).await;
        agent
            .control(&id, Control::HostThaw { taken: true })
            .await
            .unwrap();
        // DELETE once the host's thaw arrived, and a second thaw: 409 with the snapshot.
        for c in [Control::Abort, Control::HostThaw { taken: true }] {
            match agent.control(&id, c).await {
                Err(ControlError::Conflict(s, _)) => assert_eq!(s.id, id),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_bad_request_changes_nothing() {
        let (agent, _hooks, freezers) = agent("[]");
        let bad = CreateBody {
            mounts: Some(vec!["/not-a-target".into()]),
            ..Default::default()
        };
        assert!(matches!(
            agent.create(bad, None),
            Err(CreateError::BadRequest(_))
        ));
        let bad = CreateBody {
            request_id: Some("spaces are not allowed".into()),
            ..Default::default()
        };
        assert!(matches!(
            agent.create(bad, None),
            Err(CreateError::BadRequest(_))
        ));
        assert!(!agent.busy());
        assert!(agent.list().is_empty());
        assert!(freezers.records().is_empty());
    }

    #[tokio::test]
    async fn a_panicking_driver_ends_its_snapshot_failed_with_the_posts_run() {
        let (agent, hooks, freezers) = agent(
            "[{name: a, pre: [/bin/a], post: [/bin/a]}, {name: b, pre: [/bin/b], post: [/bin/b]}]",
        );
        freezers.behaviour.lock().unwrap().panic_after = Some(Duration::from_millis(50));
        let id = id_of(agent.create(body(None), None).unwrap());
        let rx = agent.watch(&id).unwrap();
        let end = wait_until(rx, Duration::from_secs(10), |s| s.state.is_end()).await;
        let end = agent.list().into_iter().find(|s| s.id == id).unwrap_or(end);
        assert_eq!((end.state, end.consistency), (State::Failed, None));
        assert!(end
            .errors
            .iter()
            .any(|e| e.reason == crate::snapshot::lifecycle::Reason::InternalError));
        let phases: Vec<String> = hooks
            .calls()
            .iter()
            .map(|c| format!("{}/{}", c.name, c.phase))
            .collect();
        assert_eq!(phases, ["a/pre", "b/pre", "b/post", "a/post"]);
        assert!(hooks
            .calls()
            .iter()
            .filter(|c| c.phase == crate::hooks::Phase::Post)
            .all(|c| c.thaw_reason.as_deref() == Some("error")));
        // Not wedged: the next snapshot is admitted.
        freezers.behaviour.lock().unwrap().panic_after = None;
        assert!(agent.create(body(None), None).is_ok());
    }

    #[tokio::test]
    async fn shutdown_during_pre_hooks_cancels_and_refuses_new_snapshots() {
        let (agent, hooks, freezers) = agent("[{name: slow, pre: [/bin/slow], post: [/bin/slow]}]");
        hooks.set("slow", crate::hooks::Phase::Pre, 0, Duration::from_secs(60));
        let id = id_of(agent.create(body(None), None).unwrap());
        agent.shutdown().await;
        let end = agent.watch(&id).unwrap().borrow().clone();
        assert_eq!((end.state, end.consistency), (State::Aborted, None));
        assert!(freezers.records().is_empty());
        assert!(matches!(
            agent.create(body(None), None),
            Err(CreateError::ShuttingDown)
        ));
    }
}

/// A panicking snapshot task, at the registry level.
#[cfg(test)]
mod panic_tests {
    use super::*;

    fn snapshot(state: State) -> Snapshot {
        Snapshot {
            id: "0123456789abcdef".into(),
            request_id: None,
            channel: crate::snapshot::model::Channel::Http,
            state,
            requested_consistency: Requested::Application,
            consistency: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            frozen_at: None,
            thawed_at: None,
            finished_at: None,
            freeze_deadline: None,
            frozen_ms: None,
            thaw_reason: None,
            mounts: vec![crate::snapshot::model::MountReport {
                path: "/data".into(),
                fstype: "ext4".into(),
                frozen: true,
                error: None,
            }],
            hooks: vec![],
            errors: vec![],
            warnings: vec![],
            rcu: None,
        }
    }

    /// A snapshot task that panics while `freezing` ends that snapshot `failed`, and the next
    /// create is admitted instead of answered 409 forever.
    #[tokio::test]
    async fn a_panicking_snapshot_task_does_not_wedge_the_agent() {
        let (tx, rx) = watch::channel(snapshot(State::Freezing));
        let panicked = Arc::new(std::sync::OnceLock::new());
        let mut inner = Inner::default();
        inner.entries.push_front(Entry {
            id: "0123456789abcdef".into(),
            request_id: None,
            report: Report::Live(rx.clone()),
            panicked: panicked.clone(),
            controls: None,
        });
        let body = CreateBody::default();
        assert!(matches!(
            Agent::admit_locked(&inner, &body),
            Err(CreateError::Busy { .. })
        ));
        // The task panics; its sender goes with it.
        let task = tokio::spawn(async move {
            let _keep = tx;
            panic!("rfc3339 out of range");
        });
        let err = task.await.unwrap_err();
        let end = failed_by_panic(rx.borrow().clone(), &err);
        panicked.set(end).unwrap();
        assert!(matches!(Agent::admit_locked(&inner, &body), Ok(None)));
        let e = &inner.entries[0];
        let now = e.current();
        assert_eq!(now.state, State::Failed);
        assert!(!now.mounts[0].frozen);
        assert!(now.finished_at.is_some());
        assert_eq!(now.errors[0].reason, "internal_error");
        assert_eq!(e.receiver().borrow().state, State::Failed);
    }
}
