//! The agent's side of a freeze: spawns the watchdog, drives it, and keeps each mount's outcome.
//!
//! Nothing here blocks the async runtime or touches a frozen filesystem: the watchdog does the
//! ioctls, and this side only reads and writes pipes.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::protocol::{
    escaped_path, Command, Event, FailKind, Plan, Rcu, SetupProblem, ThawReason,
};
use super::recovery;
use super::standby::{spawn_watchdog, Standby};
use crate::logging::{self, ids, FrozenHold};

/// How long the watchdog may take to open the mounts and lock its memory.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Why a freeze could not run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("starting the watchdog {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("handing the plan to the watchdog: {0}")]
    SendPlan(#[source] std::io::Error),
    #[error("watchdog setup failed: the plan: {0}")]
    BadPlan(String),
    #[error("watchdog setup failed: opening {}: {source}", super::show(path))]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "watchdog setup failed: {} no longer holds the planned filesystem",
        super::show(path)
    )]
    Replaced { path: PathBuf },
    #[error("watchdog setup failed: state_dir {}: {source}", super::show(path))]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the watchdog answered {0} before it was ready")]
    Unexpected(String),
    #[error("the watchdog did not get ready within {0:?}")]
    NotReady(Duration),
    #[error("the watchdog exited unexpectedly")]
    WatchdogGone,
}

impl From<SetupProblem> for SessionError {
    fn from(problem: SetupProblem) -> Self {
        let os = std::io::Error::from_raw_os_error;
        match problem {
            SetupProblem::Plan { error } => SessionError::BadPlan(error),
            SetupProblem::Open { path, errno } => SessionError::Open {
                path,
                source: os(errno),
            },
            SetupProblem::Replaced { path } => SessionError::Replaced { path },
            SetupProblem::StateDir { path, errno } => SessionError::StateDir {
                path,
                source: os(errno),
            },
        }
    }
}

/// Where one target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not frozen yet.
    Pending,
    /// FIFREEZE issued, not returned.
    Freezing,
    Frozen,
    /// FIFREEZE failed (`error` says why); never thawed by us.
    Failed,
    /// EOPNOTSUPP: skipped.
    Unsupported,
    /// The thaw came before its freeze started.
    Cancelled,
    Thawed,
    /// FITHAW failed: it may still be frozen (`thaw-all` retries from the record).
    ThawFailed,
}

/// One target's report.
#[derive(Debug, Clone, Serialize)]
pub struct MountStatus {
    #[serde(with = "escaped_path")]
    pub path: PathBuf,
    pub fstype: String,
    /// Frozen by us at this moment.
    pub frozen: bool,
    pub outcome: Outcome,
    pub error: Option<String>,
    /// The OS error number of a failed FIFREEZE or FITHAW.
    pub errno: Option<i32>,
    /// syncfs time of the pre-flush.
    pub flush_ms: Option<f64>,
    /// FIFREEZE call time.
    pub freeze_ms: Option<f64>,
    /// From its FIFREEZE call to its thaw.
    pub frozen_ms: Option<f64>,
    /// Position in which FIFREEZE returned successfully (0 first).
    pub freeze_seq: Option<usize>,
    /// Position in which it was thawed (0 first).
    pub thaw_seq: Option<usize>,
    /// Set for a mount already frozen by someone else (EBUSY).
    #[serde(skip)]
    pub fail_kind: Option<FailKind>,
}

impl MountStatus {
    /// A target not frozen yet.
    pub fn pending(path: &Path, fstype: &str) -> MountStatus {
        MountStatus {
            path: path.to_path_buf(),
            fstype: fstype.to_owned(),
            frozen: false,
            outcome: Outcome::Pending,
            error: None,
            errno: None,
            flush_ms: None,
            freeze_ms: None,
            frozen_ms: None,
            freeze_seq: None,
            thaw_seq: None,
            fail_kind: None,
        }
    }
}

/// Times of a session, as Unix milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Times {
    pub freeze_started_ms: Option<u64>,
    pub settled_ms: Option<u64>,
    pub thawed_ms: Option<u64>,
    /// The hard deadline (the watchdog keeps it on the monotonic clock, from the start of the
    /// first FIFREEZE call; this is its wall-clock reading, for reports).
    pub deadline_ms: Option<u64>,
    /// From the first FIFREEZE call to the last thaw.
    pub frozen_us: Option<u64>,
}

/// A freeze under way.
pub struct FreezeSession {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Event>,
    state_dir: PathBuf,
    pub mounts: Vec<MountStatus>,
    pub times: Times,
    pub warnings: Vec<String>,
    /// Set once everything we froze is thawed.
    pub thaw_reason: Option<ThawReason>,
    /// Mounts whose FIFREEZE has not returned at the thaw; the watchdog thaws each on return.
    pub pending: Vec<usize>,
    /// What became of RCU grace periods, once the first FIFREEZE was issued.
    pub rcu: Option<Rcu>,
    /// The plan asked for expedited RCU grace periods.
    expedite_rcu: bool,
    freeze_seq: usize,
    thaw_seq: usize,
    /// Log records stay in memory from the freeze request until the thaw (or this session's
    /// end, whichever comes first): the log output may be on a filesystem we freeze.
    log_hold: Option<FrozenHold>,
}

impl FreezeSession {
    /// Takes the spare watchdog of `standby` (or starts one from `exe` when there is none),
    /// hands it the plan and waits until it is ready.
    pub async fn start(
        plan: &Plan,
        exe: &Path,
        standby: Option<&Standby>,
    ) -> Result<FreezeSession, SessionError> {
        if let Some(spare) = standby.and_then(Standby::take) {
            match FreezeSession::start_on(spare, plan).await {
                // A spare that died since (killed by someone): start one now instead.
                Err(SessionError::SendPlan(_) | SessionError::WatchdogGone) => {
                    tracing::warn!("the spare watchdog was gone; starting one for this freeze")
                }
                other => return other,
            }
        }
        let child = spawn_watchdog(exe).map_err(|source| SessionError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
        FreezeSession::start_on(child, plan).await
    }

    /// Hands the plan to a started watchdog and waits until it is ready.
    async fn start_on(mut child: Child, plan: &Plan) -> Result<FreezeSession, SessionError> {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, events) = mpsc::unbounded_channel();
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&line) {
                        Ok(ev) => {
                            if tx.send(ev).is_err() {
                                break;
                            }
                        }
                        Err(e) => tracing::warn!("unreadable line from the watchdog ({e}): {line}"),
                    }
                }
            }
            .instrument(span.clone()),
        );
        tokio::spawn(
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(target: "quiesce::watchdog", "{line}");
                }
            }
            .instrument(span),
        );
        let mut line = serde_json::to_string(plan).expect("plan serializes");
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(SessionError::SendPlan)?;
        let mut session = FreezeSession {
            child,
            stdin: Some(stdin),
            events,
            state_dir: plan.state_dir.clone(),
            mounts: plan
                .mounts
                .iter()
                .map(|m| MountStatus::pending(&m.path, &m.fstype))
                .collect(),
            times: Times::default(),
            warnings: Vec::new(),
            thaw_reason: None,
            pending: Vec::new(),
            rcu: None,
            expedite_rcu: plan.expedite_rcu,
            freeze_seq: 0,
            thaw_seq: 0,
            log_hold: None,
        };
        match tokio::time::timeout(READY_WAIT, session.events.recv()).await {
            Ok(Some(Event::Ready { warnings })) => {
                session.warnings.extend(warnings);
                Ok(session)
            }
            Ok(Some(Event::SetupFailed { problem })) => Err(problem.into()),
            Ok(Some(other)) => Err(SessionError::Unexpected(format!("{other:?}"))),
            Ok(None) => Err(SessionError::WatchdogGone),
            Err(_) => Err(SessionError::NotReady(READY_WAIT)),
        }
    }

    async fn send(&mut self, cmd: &Command) {
        let mut line = serde_json::to_string(cmd).expect("command serializes");
        line.push('\n');
        if let Some(stdin) = self.stdin.as_mut() {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                self.stdin = None;
            }
        }
    }

    /// Receives and applies the next event; `None` when the watchdog is gone.
    async fn next(&mut self) -> Option<Event> {
        let ev = self.events.recv().await;
        match &ev {
            Some(ev) => self.apply(ev),
            None => self.watchdog_lost().await,
        }
        ev
    }

    /// The watchdog died without finishing (it should not: it is the last line of defence).
    /// Fall back on the records, which thaw exactly what was being frozen.
    async fn watchdog_lost(&mut self) {
        if self.thaw_reason.is_some() {
            return;
        }
        let dir = self.state_dir.clone();
        let recovered = tokio::task::spawn_blocking(move || recovery::thaw_recorded(&dir)).await;
        self.warnings.push(format!(
            "the watchdog exited unexpectedly; recovery from state_dir: {recovered:?}"
        ));
        for m in self.mounts.iter_mut() {
            if m.frozen {
                m.frozen = false;
                m.outcome = Outcome::Thawed;
            }
        }
        self.thaw_reason = Some(ThawReason::Error);
        self.times.thawed_ms = Some(crate::duration::unix_ms_now());
        self.log_hold = None;
        tracing::error!(
            phase = "thaw",
            "the watchdog exited unexpectedly; thawed from the records"
        );
    }

    /// Keeps each mount's outcome and timings, and logs what happened; decides nothing (the
    /// snapshot's lifecycle does, from the events the driver passes on).
    fn apply(&mut self, ev: &Event) {
        match ev {
            Event::Ready { .. } | Event::SetupFailed { .. } | Event::Finished => {}
            Event::Flushed {
                mount,
                duration_us,
                error,
            } => {
                if let Some(m) = self.mounts.get_mut(*mount) {
                    m.flush_ms = Some(ms(*duration_us));
                }
                if let Some(e) = error {
                    self.warnings
                        .push(format!("pre-flush of mount {mount}: {e}"));
                }
            }
            Event::FlushBudgetExceeded { mounts } => {
                for &i in mounts {
                    if let Some(m) = self.mounts.get(i) {
                        self.warnings.push(format!(
                            "pre-flush of {} did not finish in time; freezing anyway",
                            super::show(&m.path)
                        ));
                    }
                }
            }
            Event::FreezeStarted {
                mount,
                unix_ms,
                deadline_unix_ms,
            } => {
                self.times.freeze_started_ms.get_or_insert(*unix_ms);
                if !self.expedite_rcu {
                    self.rcu.get_or_insert(Rcu::Off);
                }
                self.times.deadline_ms.get_or_insert(*deadline_unix_ms);
                if let Some(m) = self.mounts.get_mut(*mount) {
                    m.outcome = Outcome::Freezing;
                }
            }
            Event::Frozen { mount, duration_us } => self.frozen(*mount, *duration_us),
            Event::FreezeFailed {
                mount,
                kind,
                errno,
                error,
            } => self.freeze_failed(*mount, *kind, *errno, error),
            Event::RcuExpedite { rcu, error } => {
                self.rcu = Some(*rcu);
                match error {
                    None => tracing::info!(
                        phase = "freeze",
                        rcu = rcu.as_str(),
                        "RCU grace periods for the freeze: {}",
                        rcu.as_str()
                    ),
                    Some(e) => {
                        tracing::warn!(
                            phase = "freeze",
                            rcu = rcu.as_str(),
                            "RCU grace periods not expedited, the freeze goes on at the normal \
                             pace: {e}"
                        );
                        self.warnings
                            .push(format!("RCU grace periods not expedited: {e}"));
                    }
                }
            }
            Event::RcuRelaxFailed { error } => {
                tracing::error!(
                    phase = "freeze",
                    rcu = "expedited",
                    "cannot put RCU grace periods back to normal: {error}; `quiesce thaw-all` \
                     retries from the record"
                );
                self.warnings.push(format!(
                    "RCU grace periods are still expedited: {error}; `quiesce thaw-all` retries"
                ));
            }
            Event::AllSettled { unix_ms } => self.settled(*unix_ms),
            Event::DeadlineReached { .. } => tracing::warn!(
                message_id = ids::DEADLINE_THAW,
                phase = "thaw",
                "the freeze deadline came before the host's thaw: thawing"
            ),
            Event::Thawed { mount, frozen_us } => self.thawed(*mount, *frozen_us),
            Event::ThawFailed {
                mount,
                errno,
                error,
            } => {
                if let Some(m) = self.mounts.get_mut(*mount) {
                    tracing::error!(
                        message_id = ids::THAW_FAILED,
                        phase = "thaw",
                        mount = %m.path.display(),
                        "cannot thaw {}: {error}",
                        super::show(&m.path)
                    );
                    m.outcome = Outcome::ThawFailed;
                    m.error = Some(error.clone());
                    m.errno = Some(*errno);
                }
            }
            Event::ThawComplete {
                reason,
                unix_ms,
                frozen_us,
                pending,
            } => self.thaw_complete(*reason, *unix_ms, *frozen_us, pending),
        }
    }

    fn frozen(&mut self, mount: usize, duration_us: u64) {
        let Some(m) = self.mounts.get_mut(mount) else {
            return;
        };
        tracing::info!(
            message_id = ids::FROZEN,
            phase = "freeze",
            mount = %m.path.display(),
            freeze_ms = ms(duration_us),
            "froze {}",
            super::show(&m.path)
        );
        m.frozen = true;
        m.outcome = Outcome::Frozen;
        m.freeze_ms = Some(ms(duration_us));
        m.freeze_seq = Some(self.freeze_seq);
        self.freeze_seq += 1;
    }

    fn freeze_failed(&mut self, mount: usize, kind: FailKind, errno: i32, error: &str) {
        let Some(m) = self.mounts.get_mut(mount) else {
            return;
        };
        let path = super::show(&m.path);
        match kind {
            FailKind::AlreadyFrozen => tracing::warn!(
                message_id = ids::FOREIGN_FREEZE,
                phase = "freeze",
                mount = %m.path.display(),
                "{path} was already frozen by someone else: left as it is, never thawed by us \
                 ({error})"
            ),
            FailKind::Unsupported => tracing::info!(
                phase = "freeze",
                mount = %m.path.display(),
                "{path} cannot be frozen; skipped ({error})"
            ),
            FailKind::Error => tracing::error!(
                message_id = ids::FREEZE_FAILED,
                phase = "freeze",
                mount = %m.path.display(),
                "cannot freeze {path}: {error}"
            ),
        }
        m.outcome = match kind {
            FailKind::Unsupported => Outcome::Unsupported,
            _ => Outcome::Failed,
        };
        m.error = Some(error.to_owned());
        m.errno = Some(errno);
        m.fail_kind = Some(kind);
    }

    fn settled(&mut self, unix_ms: u64) {
        self.times.settled_ms = Some(unix_ms);
        let frozen = self.mounts.iter().filter(|m| m.frozen).count();
        if frozen == 0 {
            // Nothing of ours is frozen: no reason to keep the log waiting.
            self.log_hold = None;
        }
        tracing::info!(
            phase = "freeze",
            "freeze settled: {frozen} of {} mounts frozen",
            self.mounts.len()
        );
    }

    fn thawed(&mut self, mount: usize, frozen_us: u64) {
        let Some(m) = self.mounts.get_mut(mount) else {
            return;
        };
        tracing::info!(
            message_id = ids::THAWED,
            phase = "thaw",
            mount = %m.path.display(),
            frozen_ms = ms(frozen_us),
            "thawed {}",
            super::show(&m.path)
        );
        m.frozen = false;
        m.outcome = Outcome::Thawed;
        m.frozen_ms = Some(ms(frozen_us));
        m.thaw_seq = Some(self.thaw_seq);
        self.thaw_seq += 1;
    }

    fn thaw_complete(
        &mut self,
        reason: ThawReason,
        unix_ms: u64,
        frozen_us: Option<u64>,
        pending: &[usize],
    ) {
        self.thaw_reason = Some(reason);
        self.times.thawed_ms = Some(unix_ms);
        self.times.frozen_us = frozen_us;
        self.pending = pending.to_vec();
        for m in self.mounts.iter_mut() {
            if m.outcome == Outcome::Pending {
                m.outcome = Outcome::Cancelled;
            }
        }
        for &i in pending {
            if let Some(m) = self.mounts.get_mut(i) {
                if m.outcome == Outcome::Freezing {
                    m.error = Some(
                        "FIFREEZE had not returned at the thaw; the watchdog thaws it the moment \
                         it returns"
                            .into(),
                    );
                }
            }
        }
        // Everything is thawed: the records kept meanwhile go out now, before this one.
        self.log_hold = None;
        tracing::info!(
            phase = "thaw",
            reason = reason.as_str(),
            frozen_ms = frozen_us.map(ms),
            "thaw complete"
        );
    }

    /// Asks the watchdog to flush and freeze, without waiting (see [`Self::next_event`]).
    pub async fn request_freeze(&mut self) {
        self.log_hold.get_or_insert_with(logging::hold_while_frozen);
        self.send(&Command::Freeze).await;
    }

    /// Asks the watchdog to thaw, without waiting; a second request is ignored by it.
    pub async fn request_thaw(&mut self, reason: ThawReason) {
        self.send(&Command::Thaw { reason }).await;
    }

    /// The next event, already applied to the session's state; `None` once the watchdog is
    /// gone (after a fallback recovery from the records). Cancel-safe.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.next().await
    }

    /// Lets go of the watchdog: it lives on alone until its pending calls return and exits.
    pub async fn finish(mut self) {
        self.stdin = None;
        if self.pending.is_empty() {
            // Nothing outstanding: it exits at once; reap it.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        }
    }
}

/// Microseconds as fractional milliseconds (reports and logs).
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Formats Unix milliseconds as RFC 3339 (UTC, milliseconds).
///
/// Saturates at 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write (humantime
/// panics beyond it): a time that far is a bad input, never a reason to panic.
pub fn rfc3339(unix_ms: u64) -> String {
    const LAST_MS: u64 = 253_402_300_799_999;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms.min(LAST_MS)))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_problem_becomes_a_typed_error_with_the_path_and_the_os_error() {
        let err = SessionError::from(SetupProblem::Open {
            path: "/data".into(),
            errno: libc::ENOENT,
        });
        let SessionError::Open { path, source } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, Path::new("/data"));
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(err
            .to_string()
            .starts_with("watchdog setup failed: opening /data: "));
        let err = SessionError::from(SetupProblem::StateDir {
            path: "/run/q".into(),
            errno: libc::EACCES,
        });
        assert!(matches!(&err, SessionError::StateDir { source, .. }
            if source.raw_os_error() == Some(libc::EACCES)));
        let err = SessionError::from(SetupProblem::Replaced {
            path: "/data".into(),
        });
        assert_eq!(
            err.to_string(),
            "watchdog setup failed: /data no longer holds the planned filesystem"
        );
    }
}

#[cfg(test)]
mod rfc3339_tests {
    #[test]
    fn far_times_saturate_instead_of_panicking() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        for far in [300_000_000_000_000 + 1_700_000_000_000, u64::MAX] {
            assert_eq!(super::rfc3339(far), "9999-12-31T23:59:59.999Z");
        }
    }
}
