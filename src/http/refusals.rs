//! The log of refused (401) requests: bounded, so that clients without the key cannot flood
//! the journal or push the agent's own records out of the buffer kept while frozen.
//!
//! At most [`LINES_PER_INTERVAL`] WARN lines per [`INTERVAL`], then one summary line with the
//! number suppressed. While filesystems are frozen (a log hold lives) nothing is logged at all:
//! refusals are only counted and summed up after the thaw. Logged paths are cut to
//! [`MAX_PATH`] characters and escaped.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one rate-limit interval.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// WARN lines per interval at most.
pub const LINES_PER_INTERVAL: u32 = 5;
/// Characters of a path shown at most.
pub const MAX_PATH: usize = 64;

/// What to log for one refusal, decided by [`Refusals::refused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Log this refusal (after the summary of the previous interval, when there is one).
    Log { summary: Option<u64> },
    /// Count it only.
    Suppress,
}

/// The rate limiter (pure: the caller passes the time and whether a hold lives).
#[derive(Debug)]
pub struct Refusals {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
    /// Refusals were counted while frozen: sum them up as soon as the hold is gone.
    held_seen: bool,
}

impl Refusals {
    /// Nothing refused yet.
    pub const fn new() -> Refusals {
        Refusals {
            start: None,
            logged: 0,
            suppressed: 0,
            held_seen: false,
        }
    }

    /// One refusal at `now`; `held`: filesystems are frozen.
    pub fn refused(&mut self, now: Instant, held: bool) -> Decision {
        self.start.get_or_insert(now);
        if held {
            self.suppressed += 1;
            self.held_seen = true;
            return Decision::Suppress;
        }
        let summary = self.roll(now, false);
        if self.logged >= LINES_PER_INTERVAL {
            self.suppressed += 1;
            return Decision::Suppress;
        }
        self.logged += 1;
        Decision::Log { summary }
    }

    /// The count to report when an interval has passed, or at once when a hold has ended and
    /// refusals were counted meanwhile.
    pub fn tick(&mut self, now: Instant, held: bool) -> Option<u64> {
        if held {
            return None;
        }
        let now_due = std::mem::take(&mut self.held_seen);
        self.roll(now, now_due)
    }

    /// Whether a summary is still to come: refusals suppressed and not reported yet. Only then
    /// must [`tick`] be called (an idle daemon wakes for nothing).
    pub fn pending(&self) -> bool {
        self.suppressed > 0 || self.held_seen
    }

    fn roll(&mut self, now: Instant, force: bool) -> Option<u64> {
        let start = *self.start.get_or_insert(now);
        if !force && now.duration_since(start) < INTERVAL {
            return None;
        }
        self.start = Some(now);
        self.logged = 0;
        Some(std::mem::take(&mut self.suppressed)).filter(|n| *n > 0)
    }
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals::new()
    }
}

static REFUSALS: Mutex<Refusals> = Mutex::new(Refusals::new());

/// Signalled when a refusal is suppressed: the ticker then has a summary to wait for.
static SUPPRESSED: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn lock() -> std::sync::MutexGuard<'static, Refusals> {
    REFUSALS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Logs a refused request, within the limits.
pub fn log(method: &str, path: &str, peer: &str, reason: &str) {
    let decision = lock().refused(Instant::now(), crate::logging::held());
    if decision == Decision::Suppress {
        SUPPRESSED.notify_one();
    }
    if let Decision::Log { summary } = decision {
        if let Some(n) = summary {
            summary_line(n);
        }
        tracing::warn!(
            method = %method,
            path = %cut(path),
            %peer,
            "refused: {reason} (at most {LINES_PER_INTERVAL} such lines a minute, the rest are \
             counted)"
        );
    }
}

/// Calls [`tick`] every `every` while a summary is pending, and sleeps without a timer
/// otherwise: an idle daemon is never woken by it. Runs until dropped.
pub async fn ticker(every: std::time::Duration) {
    loop {
        while !lock().pending() {
            // A refusal suppressed since the check left a permit: no wakeup is lost.
            SUPPRESSED.notified().await;
        }
        tokio::time::sleep(every).await;
        tick();
    }
}

/// Logs the summary of suppressed refusals when it is due; call it every few seconds.
pub fn tick() {
    let due = lock().tick(Instant::now(), crate::logging::held());
    if let Some(n) = due {
        summary_line(n);
    }
}

fn summary_line(n: u64) {
    tracing::warn!("refused {n} more unauthenticated requests (not logged one by one)");
}

/// At most [`MAX_PATH`] characters, control and non-ASCII characters escaped.
pub fn cut(path: &str) -> String {
    let mut out: String = path
        .chars()
        .take(MAX_PATH)
        .flat_map(char::escape_default)
        .collect();
    if path.chars().count() > MAX_PATH {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_then_a_summary() {
        let mut r = Refusals::new();
        let t0 = Instant::now();
        let decisions: Vec<_> = (0..100).map(|_| r.refused(t0, false)).collect();
        let logged = decisions
            .iter()
            .filter(|d| matches!(d, Decision::Log { .. }))
            .count();
        assert_eq!(logged, LINES_PER_INTERVAL as usize);
        assert_eq!(r.tick(t0 + Duration::from_secs(1), false), None);
        assert_eq!(r.tick(t0 + INTERVAL, false), Some(95));
        assert_eq!(r.tick(t0 + 2 * INTERVAL, false), None);
        assert_eq!(
            r.refused(t0 + 2 * INTERVAL, false),
            Decision::Log { summary: None }
        );
    }

    #[test]
    fn the_ticker_is_needed_only_while_a_summary_is_pending() {
        let mut r = Refusals::new();
        let t0 = Instant::now();
        // Logged ones leave nothing to sum up: an idle daemon needs no timer.
        for _ in 0..LINES_PER_INTERVAL {
            r.refused(t0, false);
        }
        assert!(!r.pending());
        r.refused(t0, false);
        assert!(r.pending());
        assert_eq!(r.tick(t0 + INTERVAL, false), Some(1));
        assert!(!r.pending());
        r.refused(t0 + INTERVAL, true);
        assert!(r.pending());
        assert_eq!(r.tick(t0 + INTERVAL, false), Some(1));
        assert!(!r.pending());
    }

    #[test]
    fn nothing_is_logged_while_frozen() {
        let mut r = Refusals::new();
        let t0 = Instant::now();
        for _ in 0..2200 {
            assert_eq!(r.refused(t0, true), Decision::Suppress);
        }
        assert_eq!(r.tick(t0 + 2 * INTERVAL, true), None);
        // As soon as the hold is gone, without waiting for the interval.
        assert_eq!(r.tick(t0 + Duration::from_secs(1), false), Some(2200));
        assert_eq!(r.tick(t0 + Duration::from_secs(2), false), None);
    }

    #[test]
    fn paths_are_cut_and_escaped() {
        assert_eq!(cut("/v1/x"), "/v1/x");
        assert_eq!(cut("/a\nb"), "/a\\nb");
        let long = "/".repeat(500);
        assert_eq!(cut(&long).len(), MAX_PATH + 3);
    }
}
