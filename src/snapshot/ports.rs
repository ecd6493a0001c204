//! The driver's seams: what runs a hook and what freezes, as traits, with the real
//! implementations (the hook helper process, the watchdog process). In-process tests put fakes
//! in their place (`fakes`), so that the driver, the agent's registry and the HTTP router are
//! tested without root.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::freezer::session::{FreezeSession, MountStatus, Outcome, Times};
use crate::freezer::standby::Standby;
use crate::freezer::{self, Discovery, FreezeOptions, PlanError};
use crate::hooks::{self, HookOutcome, HookSpec};
use crate::snapshot::lifecycle::{Event, ThawReason};

/// A boxed future, as the seams return them (they are called a few times per snapshot).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs one hook command to its end (see [`hooks::run_hook`]).
pub trait HookRunner: Send + Sync {
    /// Runs `spec`; when `cancel` becomes true the hook is stopped and reported `cancelled`.
    fn run(&self, spec: HookSpec, cancel: watch::Receiver<bool>)
        -> BoxFuture<'static, HookOutcome>;
}

/// The freeze of one snapshot's targets, as the driver sees it: it is started, it reports
/// lifecycle [`Event`]s (settled, thawed and why, a warning, the watchdog lost), and it thaws
/// when asked. Every `thaw` is answered by an [`Event::Thawed`], also when nothing was frozen.
pub trait Freezer: Send {
    /// Flushes and freezes; the outcome comes as events ([`Event::FreezeSettled`], or
    /// [`Event::FreezeFailed`] when nothing could be frozen).
    fn start(&mut self) -> BoxFuture<'_, ()>;
    /// Asks for the thaw; a second call changes nothing.
    fn thaw(&mut self, reason: ThawReason) -> BoxFuture<'_, ()>;
    /// The next events; pending forever when none can come any more. Cancel-safe.
    fn next(&mut self) -> BoxFuture<'_, Vec<Event>>;
    /// Each target's outcome and the times, as they stand.
    fn view(&self) -> &FreezeView;
    /// Lets go of the freeze once the snapshot has ended.
    fn finish(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Makes the [`Freezer`] of each snapshot, and finds its targets.
pub trait Freezers: Send + Sync {
    /// The targets of a request (`requested` is its `mounts`), in freeze order.
    fn discover(
        &self,
        rules: &freezer::select::Rules,
        requested: Option<&[PathBuf]>,
    ) -> Result<Discovery, PlanError>;
    /// The freezer of one snapshot.
    fn freezer(&self, plan: FreezePlan) -> Box<dyn Freezer>;
    /// Gets ready for the next freeze ahead of any request (the daemon calls it once started;
    /// needs a tokio runtime). Nothing to do by default.
    fn prepare(&self) {}
}

/// What a snapshot's freeze is to do.
#[derive(Debug, Clone)]
pub struct FreezePlan {
    pub discovery: Discovery,
    pub timeout: Duration,
    pub preflush: bool,
    pub state_dir: PathBuf,
    /// `freeze.expedite_rcu`.
    pub expedite_rcu: bool,
}

/// A freeze as it stands: each target and the times.
#[derive(Debug, Clone, Default)]
pub struct FreezeView {
    pub mounts: Vec<MountStatus>,
    pub times: Times,
    /// Why the freezer thawed, once it has.
    pub thaw_reason: Option<ThawReason>,
    pub warnings: Vec<String>,
    /// What became of RCU grace periods, once the first FIFREEZE was issued.
    pub rcu: Option<crate::freezer::protocol::Rcu>,
}

impl FreezeView {
    /// Every target, not frozen yet.
    pub fn pending(discovery: &Discovery) -> FreezeView {
        FreezeView {
            mounts: discovery
                .targets
                .iter()
                .map(|m| MountStatus::pending(&m.mount_point, &m.fstype))
                .collect(),
            ..Default::default()
        }
    }
}

/// The seams a snapshot runs on.
#[derive(Clone)]
pub struct Ports {
    pub hooks: Arc<dyn HookRunner>,
    pub freezers: Arc<dyn Freezers>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ports")
    }
}

impl Ports {
    /// The real ones: hooks through the hook helper, freezes through the watchdog, both run
    /// from `exe` (this binary).
    pub fn real(exe: &Path) -> Ports {
        Ports {
            hooks: Arc::new(ProcessHooks {
                exe: exe.to_path_buf(),
            }),
            freezers: Arc::new(Watchdogs {
                exe: exe.to_path_buf(),
                standby: None,
            }),
        }
    }

    /// The daemon's: [`Ports::real`] with a spare watchdog kept ready before each request
    /// (started by [`Freezers::prepare`], and again after each freeze).
    pub fn daemon(exe: &Path) -> Ports {
        let standby = Arc::new(Standby::new(exe));
        Ports {
            freezers: Arc::new(Watchdogs {
                exe: exe.to_path_buf(),
                standby: Some(standby),
            }),
            ..Ports::real(exe)
        }
    }
}

/// Hooks run by the hook helper process (`quiesce hook-exec`).
pub struct ProcessHooks {
    pub exe: PathBuf,
}

impl HookRunner for ProcessHooks {
    fn run(
        &self,
        spec: HookSpec,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'static, HookOutcome> {
        let exe = self.exe.clone();
        Box::pin(async move { hooks::run_hook(&spec, &exe, cancel).await })
    }
}

/// Freezes done by the watchdog process (`quiesce watchdog`).
pub struct Watchdogs {
    pub exe: PathBuf,
    /// The daemon's spare watchdog; `None`: started on demand.
    pub standby: Option<Arc<Standby>>,
}

impl Freezers for Watchdogs {
    fn discover(
        &self,
        rules: &freezer::select::Rules,
        requested: Option<&[PathBuf]>,
    ) -> Result<Discovery, PlanError> {
        freezer::discover(rules, requested)
    }

    fn prepare(&self) {
        if let Some(standby) = &self.standby {
            standby.fill();
        }
    }

    fn freezer(&self, plan: FreezePlan) -> Box<dyn Freezer> {
        Box::new(WatchdogFreezer {
            view: FreezeView::pending(&plan.discovery),
            plan,
            exe: self.exe.clone(),
            standby: self.standby.clone(),
            session: None,
            open: false,
            queued: Vec::new(),
        })
    }
}

/// One freeze through a watchdog process ([`FreezeSession`]).
struct WatchdogFreezer {
    plan: FreezePlan,
    exe: PathBuf,
    standby: Option<Arc<Standby>>,
    session: Option<FreezeSession>,
    /// The watchdog's events still come.
    open: bool,
    /// Events decided here (nothing to freeze, nothing to thaw), delivered by `next`.
    queued: Vec<Event>,
    view: FreezeView,
}

impl WatchdogFreezer {
    async fn begin(&mut self) {
        let targets = self.plan.discovery.targets.len();
        if targets == 0 {
            self.queued
                .push(Event::FreezeSettled { targets, frozen: 0 });
            return;
        }
        let opts = FreezeOptions {
            timeout: self.plan.timeout,
            preflush: self.plan.preflush,
            flush_budget: self.plan.timeout,
            state_dir: self.plan.state_dir.clone(),
            expedite_rcu: self.plan.expedite_rcu,
        };
        let started = match freezer::plan(&self.plan.discovery, &opts) {
            Ok(plan) => FreezeSession::start(&plan, &self.exe, self.standby.as_deref())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match started {
            Ok(mut session) => {
                session.request_freeze().await;
                self.session = Some(session);
                self.open = true;
                self.refresh();
            }
            Err(error) => {
                tracing::error!(
                    message_id = crate::logging::ids::FREEZE_FAILED,
                    phase = "freeze",
                    "cannot freeze: {error}"
                );
                for m in self.view.mounts.iter_mut() {
                    m.error = Some(error.clone());
                }
                self.queued.push(Event::FreezeFailed { targets, error });
            }
        }
    }

    /// Copies the session's state into the view; returns the warnings that are new.
    fn refresh(&mut self) -> Vec<String> {
        let Some(s) = &self.session else {
            return Vec::new();
        };
        let known = self.view.warnings.len();
        self.view.mounts.clone_from(&s.mounts);
        self.view.times = s.times.clone();
        self.view.thaw_reason = s.thaw_reason;
        self.view.rcu = s.rcu;
        self.view.warnings.clone_from(&s.warnings);
        self.view.warnings.get(known..).unwrap_or_default().to_vec()
    }

    async fn next_events(&mut self) -> Vec<Event> {
        if !self.queued.is_empty() {
            return std::mem::take(&mut self.queued);
        }
        let ev = match self.session.as_mut() {
            Some(s) if self.open => s.next_event().await,
            _ => return std::future::pending().await,
        };
        let fresh = self.refresh();
        use crate::freezer::protocol::Event as Wd;
        let mut out = Vec::new();
        match ev {
            None => {
                // The watchdog is gone: the session already thawed from the records.
                self.open = false;
                out.push(Event::WatchdogLost {
                    detail: fresh.join("; "),
                });
                return out;
            }
            Some(Wd::AllSettled { .. }) => {
                let counted: Vec<_> = self
                    .view
                    .mounts
                    .iter()
                    .filter(|m| m.outcome != Outcome::Unsupported)
                    .collect();
                out.push(Event::FreezeSettled {
                    targets: counted.len(),
                    frozen: counted.iter().filter(|m| m.frozen).count(),
                });
            }
            Some(Wd::ThawComplete { reason, .. }) => {
                out.push(Event::Thawed { reason });
            }
            Some(_) => {}
        }
        let warnings = fresh
            .into_iter()
            .map(|message| Event::FreezerWarning { message });
        out.splice(0..0, warnings);
        out
    }
}

impl Freezer for WatchdogFreezer {
    fn start(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.begin())
    }

    fn thaw(&mut self, reason: ThawReason) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.session.as_mut() {
                Some(s) if self.open && s.thaw_reason.is_none() => s.request_thaw(reason).await,
                // Nothing of ours is frozen (nothing froze, or the watchdog is gone).
                _ => {
                    if self.session.is_none() || !self.open {
                        self.queued.push(Event::Thawed { reason })
                    }
                }
            }
        })
    }

    fn next(&mut self) -> BoxFuture<'_, Vec<Event>> {
        Box::pin(self.next_events())
    }

    fn view(&self) -> &FreezeView {
        &self.view
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(s) = self.session {
                s.finish().await;
            }
            // The snapshot has ended: the next freeze's watchdog starts now, not on its path.
            if let Some(standby) = &self.standby {
                standby.fill();
            }
        })
    }
}
