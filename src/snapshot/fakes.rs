//! Fakes of the seams for in-process tests: hooks that answer from a table after a delay, and a
//! freezer that keeps a deadline on tokio's (pausable) clock the way the watchdog does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ports::{BoxFuture, FreezePlan, FreezeView, Freezer, Freezers, HookRunner, Ports};
use crate::freezer::mountinfo::{DevNum, MountInfo};
use crate::freezer::session::Outcome;
use crate::freezer::{select, Discovery, PlanError};
use crate::hooks::{HookOutcome, HookSpec, Phase};
use crate::snapshot::lifecycle::{Event, ThawReason};

/// What a fake hook does: exit code and how long it takes.
#[derive(Debug, Clone, Copy)]
pub struct HookBehaviour {
    pub exit_code: i32,
    pub takes: Duration,
}

/// One hook run as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    pub name: String,
    pub phase: Phase,
    pub snapshot_id: String,
    pub thaw_reason: Option<String>,
}

/// Hooks answering from a table (`name/phase` → behaviour; exit 0 at once otherwise).
#[derive(Default)]
pub struct FakeHooks {
    pub table: Mutex<BTreeMap<String, HookBehaviour>>,
    pub calls: Mutex<Vec<HookCall>>,
}

impl FakeHooks {
    pub fn set(&self, name: &str, phase: Phase, exit_code: i32, takes: Duration) {
        self.table.lock().unwrap().insert(
            format!("{name}/{phase}"),
            HookBehaviour { exit_code, takes },
        );
    }
    pub fn calls(&self) -> Vec<HookCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl HookRunner for Arc<FakeHooks> {
    fn run(
        &self,
        spec: HookSpec,
        mut cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'static, HookOutcome> {
        let b = self
            .table
            .lock()
            .unwrap()
            .get(&format!("{}/{}", spec.name, spec.phase))
            .copied()
            .unwrap_or(HookBehaviour {
                exit_code: 0,
                takes: Duration::ZERO,
            });
        self.calls.lock().unwrap().push(HookCall {
            name: spec.name.clone(),
            phase: spec.phase,
            snapshot_id: spec.snapshot_id.clone(),
            thaw_reason: spec
                .vars
                .iter()
                .find(|(k, _)| k == "QUIESCE_THAW_REASON")
                .map(|(_, v)| v.clone()),
        });
        Box::pin(async move {
            let takes = b.takes.min(spec.timeout);
            tokio::select! {
                _ = tokio::time::sleep(takes) => HookOutcome {
                    exit_code: (b.takes <= spec.timeout).then_some(b.exit_code),
                    timed_out: b.takes > spec.timeout,
                    duration: takes,
                    ..Default::default()
                },
                _ = cancel.wait_for(|c| *c) => HookOutcome {
                    cancelled: true,
                    ..Default::default()
                },
            }
        })
    }
}

/// What the fake freezer does.
#[derive(Debug, Clone, Default)]
pub struct FreezeBehaviour {
    /// From the start to the moment every target has an outcome.
    pub settle_after: Duration,
    /// Targets whose FIFREEZE fails.
    pub failing: Vec<usize>,
    /// The freeze cannot start at all (no watchdog).
    pub start_error: Option<String>,
    /// From a thaw request to the thaw.
    pub thaw_after: Duration,
    /// The watchdog dies this long after the start.
    pub lost_after: Option<Duration>,
    /// The driver's task panics (a bug) this long after the start.
    pub panic_after: Option<Duration>,
}

/// One freeze as the fake saw it, on tokio's clock.
#[derive(Debug, Clone, Default)]
pub struct FreezeRecord {
    pub started: Option<Instant>,
    pub deadline: Option<Instant>,
    pub thawed: Option<Instant>,
    pub thaw_reason: Option<ThawReason>,
    pub thaw_requests: usize,
}

/// Fake freezers over the given targets.
pub struct FakeFreezers {
    pub targets: Vec<PathBuf>,
    pub behaviour: Mutex<FreezeBehaviour>,
    pub records: Arc<Mutex<Vec<FreezeRecord>>>,
}

impl FakeFreezers {
    pub fn new(targets: &[&str]) -> Arc<FakeFreezers> {
        Arc::new(FakeFreezers {
            targets: targets.iter().map(PathBuf::from).collect(),
            behaviour: Mutex::new(FreezeBehaviour::default()),
            records: Arc::new(Mutex::new(Vec::new())),
        })
    }
    pub fn records(&self) -> Vec<FreezeRecord> {
        self.records.lock().unwrap().clone()
    }
}

fn mount(path: &Path) -> MountInfo {
    MountInfo {
        mount_id: 1,
        parent_id: 0,
        dev: DevNum { major: 7, minor: 0 },
        root: PathBuf::from("/"),
        mount_point: path.to_path_buf(),
        mount_options: vec!["rw".into()],
        fstype: "ext4".into(),
        source: "/dev/loop0".into(),
        super_options: vec!["rw".into()],
    }
}

impl Freezers for Arc<FakeFreezers> {
    fn discover(
        &self,
        _rules: &select::Rules,
        requested: Option<&[PathBuf]>,
    ) -> Result<Discovery, PlanError> {
        let targets: Vec<MountInfo> = match requested {
            Some(list) => {
                for p in list {
                    if !self.targets.contains(p) {
                        return Err(PlanError::Select(select::SelectError::NotACandidate {
                            path: p.clone(),
                            reason: None,
                        }));
                    }
                }
                list.iter().map(|p| mount(p)).collect()
            }
            None => self.targets.iter().map(|p| mount(p)).collect(),
        };
        Ok(Discovery {
            beneath: vec![Vec::new(); targets.len()],
            targets,
            skipped: Vec::new(),
        })
    }

    fn freezer(&self, plan: FreezePlan) -> Box<dyn Freezer> {
        let index = {
            let mut r = self.records.lock().unwrap();
            r.push(FreezeRecord::default());
            r.len() - 1
        };
        Box::new(FakeFreezer {
            view: FreezeView::pending(&plan.discovery),
            plan,
            behaviour: self.behaviour.lock().unwrap().clone(),
            records: self.records.clone(),
            index,
            stage: Stage::Idle,
            queued: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Idle,
    Freezing { settle_at: Instant },
    Frozen,
    ThawPending { at: Instant, reason: ThawReason },
    Done,
}

struct FakeFreezer {
    plan: FreezePlan,
    behaviour: FreezeBehaviour,
    records: Arc<Mutex<Vec<FreezeRecord>>>,
    index: usize,
    stage: Stage,
    queued: Vec<Event>,
    view: FreezeView,
}

impl FakeFreezer {
    fn record(&self, f: impl FnOnce(&mut FreezeRecord)) {
        f(&mut self.records.lock().unwrap()[self.index]);
    }

    fn deadline(&self) -> Instant {
        self.records.lock().unwrap()[self.index]
            .deadline
            .expect("started")
    }

    fn lost_at(&self) -> Option<Instant> {
        let started = self.records.lock().unwrap()[self.index].started?;
        self.behaviour.lost_after.map(|d| started + d)
    }

    fn thaw_now(&mut self, reason: ThawReason) -> Vec<Event> {
        let now = Instant::now();
        self.stage = Stage::Done;
        self.record(|r| {
            r.thawed = Some(now);
            r.thaw_reason = Some(reason);
        });
        for m in self.view.mounts.iter_mut() {
            if m.frozen {
                m.frozen = false;
                m.outcome = Outcome::Thawed;
            } else if m.outcome == Outcome::Pending {
                m.outcome = Outcome::Cancelled;
            }
        }
        self.view.thaw_reason = Some(reason);
        vec![Event::Thawed { reason }]
    }

    async fn step(&mut self) -> Vec<Event> {
        if !self.queued.is_empty() {
            return std::mem::take(&mut self.queued);
        }
        let (wake, what) = match self.stage {
            Stage::Idle | Stage::Done => return std::future::pending().await,
            Stage::Freezing { settle_at } => (settle_at, 0),
            Stage::Frozen => (self.deadline(), 1),
            Stage::ThawPending { at, .. } => (at, 2),
        };
        let deadline = self.deadline();
        if let Some(after) = self.behaviour.panic_after {
            let started = self.records.lock().unwrap()[self.index].started;
            if let Some(started) = started {
                tokio::time::sleep_until(started + after).await;
                panic!("a bug in the driver, injected by the test");
            }
        }
        let lost = self.lost_at();
        let mut at = if what == 0 { wake.min(deadline) } else { wake };
        if let Some(l) = lost {
            at = at.min(l);
        }
        tokio::time::sleep_until(at).await;
        if lost.is_some_and(|l| at == l) {
            let mut ev = self.thaw_now(ThawReason::Error);
            ev[0] = Event::WatchdogLost {
                detail: "the watchdog exited unexpectedly".into(),
            };
            return ev;
        }
        match self.stage {
            Stage::Freezing { settle_at } if at == settle_at && settle_at <= deadline => {
                let mut frozen = 0;
                for (i, m) in self.view.mounts.iter_mut().enumerate() {
                    if self.behaviour.failing.contains(&i) {
                        m.outcome = Outcome::Failed;
                        m.error = Some("FIFREEZE: Input/output error".into());
                    } else {
                        m.outcome = Outcome::Frozen;
                        m.frozen = true;
                        frozen += 1;
                    }
                }
                self.stage = Stage::Frozen;
                vec![Event::FreezeSettled {
                    targets: self.view.mounts.len(),
                    frozen,
                }]
            }
            Stage::ThawPending { reason, .. } => self.thaw_now(reason),
            // The deadline, first.
            _ => self.thaw_now(ThawReason::Deadline),
        }
    }
}

impl Freezer for FakeFreezer {
    fn start(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let targets = self.view.mounts.len();
            if let Some(error) = self.behaviour.start_error.clone() {
                for m in self.view.mounts.iter_mut() {
                    m.error = Some(error.clone());
                }
                self.queued.push(Event::FreezeFailed { targets, error });
                return;
            }
            if targets == 0 {
                self.queued
                    .push(Event::FreezeSettled { targets, frozen: 0 });
                return;
            }
            let now = Instant::now();
            let deadline = now + self.plan.timeout;
            self.record(|r| {
                r.started = Some(now);
                r.deadline = Some(deadline);
            });
            let wall = super::now_ms();
            self.view.times.freeze_started_ms = Some(wall);
            self.view.times.deadline_ms = Some(wall + self.plan.timeout.as_millis() as u64);
            self.view.mounts.iter_mut().for_each(|m| {
                m.outcome = Outcome::Freezing;
            });
            self.stage = Stage::Freezing {
                settle_at: now + self.behaviour.settle_after,
            };
        })
    }

    fn thaw(&mut self, reason: ThawReason) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.record(|r| r.thaw_requests += 1);
            match self.stage {
                Stage::Freezing { .. } | Stage::Frozen => {
                    self.stage = Stage::ThawPending {
                        at: Instant::now() + self.behaviour.thaw_after,
                        reason,
                    }
                }
                // Nothing was ever frozen: answered at once.
                Stage::Idle => self.queued.push(Event::Thawed { reason }),
                Stage::ThawPending { .. } | Stage::Done => {}
            }
        })
    }

    fn next(&mut self) -> BoxFuture<'_, Vec<Event>> {
        Box::pin(self.step())
    }

    fn view(&self) -> &FreezeView {
        &self.view
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Seams made of the fakes.
pub fn ports(hooks: &Arc<FakeHooks>, freezers: &Arc<FakeFreezers>) -> Ports {
    Ports {
        hooks: Arc::new(hooks.clone()),
        freezers: Arc::new(freezers.clone()),
    }
}

/// A context for in-process tests: a config parsed from `yaml` after a minimal header (no file
/// is read: the key and hooks are never checked), and an exe that is never run.
pub fn context(yaml: &str) -> super::Context {
    let text = format!(
        "state_dir: /run/quiesce-test\nauth: {{mode: hmac, key_file: /etc/quiesce/host.key}}\n{yaml}"
    );
    let config = crate::config::Config::parse(Path::new("/etc/quiesce/config.yaml"), &text)
        .unwrap_or_else(|e| panic!("config: {e}"));
    super::Context {
        config: Arc::new(config),
        exe: "/nonexistent/quiesce".into(),
        callback_key: None,
    }
}
