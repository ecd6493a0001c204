//! Prometheus metrics for `GET /metrics` (contract: HTTP API), in text exposition format 0.0.4.
//!
//! The endpoint needs no signature, so the contract allows it to reveal no snapshot ids, hook
//! names or output: every label here comes from a small fixed set (state, consistency, thaw
//! reason, hook phase), never from a snapshot's free text. Those fixed sets are pre-initialised
//! to zero so that dashboards see zeros rather than missing series. The text format is written
//! by hand: it is simple, and the daemon lives on every VM (no metrics crate).

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::duration::{unix_ms, unix_ms_now};

use crate::freezer::protocol::Rcu;
use crate::snapshot::lifecycle::{Consistency, State};
use crate::snapshot::model::Snapshot;

/// Upper bounds (in ms) of the duration buckets, for freeze windows and hook runs alike: a
/// freeze should last well under a second, the default deadline is 10 s and the most a host
/// may ask for is 60 s; hooks have a 30 s default timeout. `+Inf` is implicit.
const BUCKETS_MS: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// The end states, in rendering order.
const END_STATES: [State; 3] = [State::Succeeded, State::Failed, State::Aborted];

/// The `consistency` label values; `none` stands for `null`.
const CONSISTENCIES: [&str; 4] = ["application", "file_system", "crash", "none"];

/// The `reason` label values (`ThawReason::as_str`).
const THAW_REASONS: [&str; 5] = ["host", "deadline", "abort", "shutdown", "error"];

/// The `phase` label values (`HookReport::phase`).
const PHASES: [&str; 2] = ["pre", "post"];

/// A histogram over durations in milliseconds, rendered in seconds.
#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [u64; BUCKETS_MS.len() + 1],
    /// The sum is kept in whole milliseconds: exact, and every input is whole milliseconds.
    sum_ms: u64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: u64) {
        let i = BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(BUCKETS_MS.len());
        self.counts[i] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.count += 1;
    }
}

/// Everything recorded from ended snapshots.
#[derive(Debug, Clone, Default)]
struct Recorded {
    /// Indexed `[END_STATES index][CONSISTENCIES index]`.
    snapshots: [[u64; CONSISTENCIES.len()]; END_STATES.len()],
    frozen: Histogram,
    /// Indexed like `THAW_REASONS`.
    thaws: [u64; THAW_REASONS.len()],
    /// Indexed like `PHASES`.
    hook_duration: [Histogram; PHASES.len()],
    hook_failures: [u64; PHASES.len()],
    /// Unix time of the last `succeeded` end, in ms.
    last_success_ms: Option<u64>,
    mount_failures: u64,
    /// Freezes (snapshots that issued a FIFREEZE), indexed like `Rcu::ALL`.
    rcu: [u64; Rcu::ALL.len()],
}

/// The agent's metrics: cheap to update from any thread, rendered on `GET /metrics`.
#[derive(Debug)]
pub struct Metrics {
    start_ms: u64,
    active: AtomicBool,
    frozen: AtomicBool,
    /// Requests answered 401 (`quiesce_auth_failures_total`).
    auth_failures: AtomicU64,
    recorded: Mutex<Recorded>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh metrics; the process start time is taken now.
    pub fn new() -> Metrics {
        Metrics {
            start_ms: unix_ms_now(),
            active: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            auth_failures: AtomicU64::new(0),
            recorded: Mutex::new(Recorded::default()),
        }
    }

    /// Records a snapshot that reached its end state; call it once per snapshot. A snapshot
    /// that has not ended is ignored (its outcome is not known yet).
    pub fn snapshot_ended(&self, s: &Snapshot) {
        let Some(state) = END_STATES.iter().position(|&e| e == s.state) else {
            return;
        };
        // Taken before the lock: the fallback clock read and the parse need no lock.
        let success_ms = (s.state == State::Succeeded).then(|| {
            s.finished_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .map_or_else(unix_ms_now, unix_ms)
        });
        let consistency = match s.consistency {
            Some(Consistency::Application) => 0,
            Some(Consistency::FileSystem) => 1,
            Some(Consistency::Crash) => 2,
            None => 3,
        };
        let mut r = self.lock();
        r.snapshots[state][consistency] += 1;
        if let Some(ms) = s.frozen_ms {
            r.frozen.observe(ms);
        }
        if let Some(reason) = s.thaw_reason {
            if let Some(i) = THAW_REASONS.iter().position(|&n| n == reason.as_str()) {
                r.thaws[i] += 1;
            }
        }
        for h in &s.hooks {
            // The phase is always `pre` or `post`; anything else would be a new label value.
            let Some(i) = PHASES.iter().position(|&p| p == h.phase) else {
                continue;
            };
            r.hook_duration[i].observe(h.duration_ms);
            if h.exit_code != Some(0) || h.timed_out {
                r.hook_failures[i] += 1;
            }
        }
        r.mount_failures += s.mounts.iter().filter(|m| m.error.is_some()).count() as u64;
        if let Some(i) = s
            .rcu
            .and_then(|rcu| Rcu::ALL.iter().position(|&x| x == rcu))
        {
            r.rcu[i] += 1;
        }
        if let Some(ms) = success_ms {
            // A clock step could make an older end look newer: keep the latest.
            r.last_success_ms = Some(r.last_success_ms.map_or(ms, |old| old.max(ms)));
        }
    }

    /// Whether a snapshot is under way (`quiesce_snapshot_active`).
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// Counts a request answered 401 (`quiesce_auth_failures_total`): a missing or wrong
    /// signature, a stale timestamp or a replayed nonce.
    pub fn auth_refused(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether mounts are frozen by us right now (`quiesce_frozen`).
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4), in a stable order.
    pub fn render(&self) -> String {
        let r = self.lock().clone();
        let mut out = String::with_capacity(4096);

        header(
            &mut out,
            "quiesce_build_info",
            "gauge",
            "The agent's version, as a label; always 1.",
        );
        sample(
            &mut out,
            "quiesce_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        header(
            &mut out,
            "quiesce_start_time_seconds",
            "gauge",
            "Unix time when the agent started.",
        );
        sample(
            &mut out,
            "quiesce_start_time_seconds",
            &[],
            ms_to_s(self.start_ms),
        );

        header(
            &mut out,
            "quiesce_snapshot_active",
            "gauge",
            "1 while a snapshot is under way, else 0.",
        );
        sample(
            &mut out,
            "quiesce_snapshot_active",
            &[],
            flag(self.active.load(Ordering::Relaxed)),
        );
        header(
            &mut out,
            "quiesce_frozen",
            "gauge",
            "1 while the agent holds mounts frozen, else 0.",
        );
        sample(
            &mut out,
            "quiesce_frozen",
            &[],
            flag(self.frozen.load(Ordering::Relaxed)),
        );

        header(
            &mut out,
            "quiesce_snapshots_total",
            "counter",
            "Snapshots ended, by end state and final consistency (none: null).",
        );
        for (si, state) in END_STATES.iter().enumerate() {
            for (ci, consistency) in CONSISTENCIES.iter().enumerate() {
                sample(
                    &mut out,
                    "quiesce_snapshots_total",
                    &[("state", state.as_str()), ("consistency", consistency)],
                    r.snapshots[si][ci] as f64,
                );
            }
        }

        header(
            &mut out,
            "quiesce_snapshot_frozen_seconds",
            "histogram",
            "How long mounts stayed frozen, per snapshot that froze.",
        );
        histogram(&mut out, "quiesce_snapshot_frozen_seconds", None, &r.frozen);

        header(
            &mut out,
            "quiesce_thaws_total",
            "counter",
            "Thaws of frozen mounts, by reason.",
        );
        for (i, reason) in THAW_REASONS.iter().enumerate() {
            sample(
                &mut out,
                "quiesce_thaws_total",
                &[("reason", reason)],
                r.thaws[i] as f64,
            );
        }

        header(
            &mut out,
            "quiesce_hook_duration_seconds",
            "histogram",
            "How long each hook command ran, by phase.",
        );
        for (i, phase) in PHASES.iter().enumerate() {
            histogram(
                &mut out,
                "quiesce_hook_duration_seconds",
                Some(("phase", phase)),
                &r.hook_duration[i],
            );
        }
        header(
            &mut out,
            "quiesce_hook_failures_total",
            "counter",
            "Hook commands that exited non-zero, were killed or timed out, by phase.",
        );
        for (i, phase) in PHASES.iter().enumerate() {
            sample(
                &mut out,
                "quiesce_hook_failures_total",
                &[("phase", phase)],
                r.hook_failures[i] as f64,
            );
        }

        header(
            &mut out,
            "quiesce_mount_freeze_failures_total",
            "counter",
            "Target mounts reported with an error (did not freeze, or did not thaw).",
        );
        sample(
            &mut out,
            "quiesce_mount_freeze_failures_total",
            &[],
            r.mount_failures as f64,
        );

        header(
            &mut out,
            "quiesce_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last snapshot that ended succeeded (0: none yet).",
        );
        sample(
            &mut out,
            "quiesce_last_success_timestamp_seconds",
            &[],
            r.last_success_ms.map_or(0.0, ms_to_s),
        );

        header(
            &mut out,
            "quiesce_auth_failures_total",
            "counter",
            "Requests refused with 401: missing or wrong signature, stale timestamp, replay.",
        );
        sample(
            &mut out,
            "quiesce_auth_failures_total",
            &[],
            self.auth_failures.load(Ordering::Relaxed) as f64,
        );

        header(
            &mut out,
            "quiesce_freeze_rcu_total",
            "counter",
            "Freezes by what became of RCU grace periods during the FIFREEZEs: expedited by us, \
             already expedited by someone else, unavailable (could not be set), off (freeze.expedite_rcu: false).",
        );
        for (i, rcu) in Rcu::ALL.iter().enumerate() {
            sample(
                &mut out,
                "quiesce_freeze_rcu_total",
                &[("rcu", rcu.as_str())],
                r.rcu[i] as f64,
            );
        }
        out
    }

    /// A panic elsewhere while holding the lock leaves plain counters behind: still usable.
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn ms_to_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

/// Cumulative `_bucket` lines, then `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, label: Option<(&str, &str)>, h: &Histogram) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, count) in h.counts.iter().enumerate() {
        cumulative += count;
        let le = match BUCKETS_MS.get(i) {
            Some(&ms) => format_value(ms_to_s(ms)),
            None => "+Inf".to_string(),
        };
        let mut labels: Vec<(&str, &str)> = label.into_iter().collect();
        labels.push(("le", &le));
        sample(out, &bucket, &labels, cumulative as f64);
    }
    let labels: Vec<(&str, &str)> = label.into_iter().collect();
    sample(out, &format!("{name}_sum"), &labels, ms_to_s(h.sum_ms));
    sample(out, &format!("{name}_count"), &labels, h.count as f64);
}

/// Go's spelling of the special values; Rust's `Display` gives plain decimals otherwise.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    use super::*;
    use crate::snapshot::lifecycle::{Problem, Requested, ThawReason};
    use crate::snapshot::model::{HookReport, MountReport};

    type Labels = Vec<(String, String)>;

    /// One parsed sample line.
    #[derive(Debug, Clone, PartialEq)]
    struct Line {
        name: String,
        labels: Labels,
        value: f64,
    }

    /// Parses label pairs `k="v",...` (with escapes) up to the closing brace.
    fn parse_labels(s: &str) -> (Labels, &str) {
        let mut labels = Vec::new();
        let mut rest = s;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                return (labels, r);
            }
            let eq = rest.find('=').expect("label without =");
            let key = &rest[..eq];
            assert!(
                !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !key.starts_with(|c: char| c.is_ascii_digit()),
                "bad label name {key:?}"
            );
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .expect("label value not quoted");
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next().expect("unterminated label value");
                match c {
                    '"' => break i,
                    '\\' => match chars.next().expect("dangling escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        e => panic!("bad escape \\{e}"),
                    },
                    '\n' => panic!("raw newline in label value"),
                    c => value.push(c),
                }
            };
            labels.push((key.to_string(), value));
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }

    fn parse_value(v: &str) -> f64 {
        match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}")),
        }
    }

    /// Checks the exposition format and returns the samples: every sample line is
    /// `name{labels} value`; every family has HELP then TYPE before its samples; histogram
    /// buckets are cumulative and `+Inf` equals `_count`.
    fn check(text: &str) -> Vec<Line> {
        assert!(text.ends_with('\n'), "the last line ends with a line feed");
        let mut help = BTreeSet::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut lines = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(help.insert(name.to_string()), "HELP twice for {name}");
                assert!(!types.contains_key(name), "HELP after TYPE for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap(), it.next().unwrap());
                assert!(help.contains(name), "TYPE before HELP for {name}");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "type {kind}"
                );
                assert!(types.insert(name.into(), kind.into()).is_none());
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let name_end = line.find(['{', ' ']).expect("no value");
            let name = &line[..name_end];
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name {name:?}"
            );
            let (labels, rest) = match line[name_end..].strip_prefix('{') {
                Some(r) => parse_labels(r),
                None => (Vec::new(), &line[name_end..]),
            };
            let value = rest.strip_prefix(' ').expect("no space before the value");
            let value = parse_value(value);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "{name} has no TYPE");
            lines.push(Line {
                name: name.to_string(),
                labels,
                value,
            });
        }
        for (family, kind) in &types {
            assert!(
                lines.iter().any(|l| l.name.starts_with(family.as_str())),
                "{family} has no sample"
            );
            if kind == "histogram" {
                check_histogram(family, &lines);
            }
        }
        lines
    }

    fn check_histogram(family: &str, lines: &[Line]) {
        let bucket = format!("{family}_bucket");
        // Series are keyed by their labels other than `le`.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for l in lines.iter().filter(|l| l.name == bucket) {
            let le = l.labels.iter().find(|(k, _)| k == "le").expect("no le");
            let key: Vec<_> = l
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            series
                .entry(key)
                .or_default()
                .push((parse_value(&le.1), l.value));
        }
        assert!(!series.is_empty(), "{family} has no buckets");
        for (key, buckets) in series {
            for w in buckets.windows(2) {
                assert!(w[0].0 < w[1].0, "{family}: le not increasing");
                assert!(w[0].1 <= w[1].1, "{family}: buckets not cumulative");
            }
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{family}: last bucket is +Inf");
            let count = lines
                .iter()
                .find(|l| l.name == format!("{family}_count") && l.labels == key)
                .expect("no _count");
            assert_eq!(last.1, count.value, "{family}: +Inf equals _count");
            assert!(lines
                .iter()
                .any(|l| l.name == format!("{family}_sum") && l.labels == key));
        }
    }

    fn value(lines: &[Line], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = lines
            .iter()
            .filter(|l| {
                l.name == name
                    && l.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }

    const ID: &str = "snap-ID-zz9-plural-z-alpha";
    const HOOK_A: &str = "hook-NAME-vogon-poetry";
    const HOOK_B: &str = "hook-NAME-babel-fish";
    const OUTPUT: &str = "OUTPUT-so-long-and-thanks";

    fn hook(name: &str, phase: &'static str, exit: Option<i32>, ms: u64) -> HookReport {
        HookReport {
            name: name.into(),
            phase,
            exit_code: exit,
            timed_out: false,
            duration_ms: ms,
            output: format!("{OUTPUT} {name}\n\"quoted\" \\ line"),
        }
    }

    fn snapshot(state: State, consistency: Option<Consistency>) -> Snapshot {
        Snapshot {
            id: ID.into(),
            request_id: Some(format!("request-{ID}")),
            channel: crate::snapshot::model::Channel::Http,
            state,
            requested_consistency: Requested::Application,
            consistency,
            created_at: "2024-01-02T03:04:00.000Z".into(),
            frozen_at: Some("2024-01-02T03:04:01.000Z".into()),
            thawed_at: Some("2024-01-02T03:04:01.042Z".into()),
            finished_at: Some("2024-01-02T03:04:05.250Z".into()),
            freeze_deadline: Some("2024-01-02T03:04:11.000Z".into()),
            frozen_ms: Some(42),
            thaw_reason: Some(ThawReason::Host),
            mounts: vec![MountReport {
                path: PathBuf::from(format!("/mnt/{ID}")),
                fstype: "ext4".into(),
                frozen: false,
                error: None,
            }],
            hooks: vec![
                hook(HOOK_A, "pre", Some(0), 120),
                hook(HOOK_B, "post", Some(0), 7),
            ],
            errors: vec![Problem {
                reason: crate::snapshot::lifecycle::Reason::PreHookFailed,
                message: format!("pre hook {HOOK_A} failed"),
            }],
            warnings: vec![],
            rcu: Some(Rcu::Expedited),
        }
    }

    #[test]
    fn freezes_are_counted_by_what_became_of_rcu() {
        let m = Metrics::new();
        for rcu in [
            Some(Rcu::Expedited),
            Some(Rcu::Expedited),
            Some(Rcu::Unavailable),
            None,
        ] {
            let mut s = snapshot(State::Succeeded, Some(Consistency::Application));
            s.rcu = rcu;
            m.snapshot_ended(&s);
        }
        let lines = check(&m.render());
        let rcu = |v| value(&lines, "quiesce_freeze_rcu_total", &[("rcu", v)]);
        assert_eq!(rcu("expedited"), 2.0);
        assert_eq!(rcu("unavailable"), 1.0);
        assert_eq!(rcu("already_expedited"), 0.0);
        assert_eq!(rcu("off"), 0.0);
    }

    #[test]
    fn a_fresh_render_parses_with_zeros_for_every_fixed_series() {
        let m = Metrics::new();
        let lines = check(&m.render());
        for state in ["succeeded", "failed", "aborted"] {
            for c in CONSISTENCIES {
                let labels = [("state", state), ("consistency", c)];
                assert_eq!(value(&lines, "quiesce_snapshots_total", &labels), 0.0);
            }
        }
        for reason in THAW_REASONS {
            assert_eq!(
                value(&lines, "quiesce_thaws_total", &[("reason", reason)]),
                0.0
            );
        }
        for phase in PHASES {
            let p = [("phase", phase)];
            assert_eq!(value(&lines, "quiesce_hook_failures_total", &p), 0.0);
            assert_eq!(
                value(&lines, "quiesce_hook_duration_seconds_count", &p),
                0.0
            );
        }
        assert_eq!(
            value(&lines, "quiesce_snapshot_frozen_seconds_count", &[]),
            0.0
        );
        assert_eq!(
            value(&lines, "quiesce_mount_freeze_failures_total", &[]),
            0.0
        );
        assert_eq!(value(&lines, "quiesce_snapshot_active", &[]), 0.0);
        assert_eq!(value(&lines, "quiesce_frozen", &[]), 0.0);
        assert_eq!(
            value(&lines, "quiesce_last_success_timestamp_seconds", &[]),
            0.0
        );
        assert_eq!(value(&lines, "quiesce_auth_failures_total", &[]), 0.0);
        m.auth_refused();
        m.auth_refused();
        let lines = check(&m.render());
        assert_eq!(value(&lines, "quiesce_auth_failures_total", &[]), 2.0);
        let start = value(&lines, "quiesce_start_time_seconds", &[]);
        let now = unix_ms_now() as f64 / 1000.0;
        assert!(start > 1.6e9 && start <= now, "{start}");
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        assert_eq!(value(&lines, "quiesce_build_info", &version), 1.0);
    }

    #[test]
    fn the_buckets_are_the_freeze_window_ones() {
        let lines = check(&Metrics::new().render());
        let les: Vec<String> = lines
            .iter()
            .filter(|l| l.name == "quiesce_snapshot_frozen_seconds_bucket")
            .map(|l| l.labels[0].1.clone())
            .collect();
        assert_eq!(
            les,
            [
                "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
                "+Inf"
            ]
        );
    }

    #[test]
    fn a_succeeded_application_snapshot_is_counted_exactly() {
        let m = Metrics::new();
        m.snapshot_ended(&snapshot(State::Succeeded, Some(Consistency::Application)));
        let lines = check(&m.render());

        let ok_app = [("state", "succeeded"), ("consistency", "application")];
        assert_eq!(value(&lines, "quiesce_snapshots_total", &ok_app), 1.0);
        let total: f64 = lines
            .iter()
            .filter(|l| l.name == "quiesce_snapshots_total")
            .map(|l| l.value)
            .sum();
        assert_eq!(total, 1.0);

        // frozen_ms 42: in 0.05 and above, not in 0.025.
        let frozen = "quiesce_snapshot_frozen_seconds_bucket";
        assert_eq!(value(&lines, frozen, &[("le", "0.025")]), 0.0);
        assert_eq!(value(&lines, frozen, &[("le", "0.05")]), 1.0);
        assert_eq!(value(&lines, frozen, &[("le", "+Inf")]), 1.0);
        assert_eq!(
            value(&lines, "quiesce_snapshot_frozen_seconds_sum", &[]),
            0.042
        );
        assert_eq!(
            value(&lines, "quiesce_snapshot_frozen_seconds_count", &[]),
            1.0
        );

        assert_eq!(
            value(&lines, "quiesce_thaws_total", &[("reason", "host")]),
            1.0
        );
        assert_eq!(
            value(&lines, "quiesce_thaws_total", &[("reason", "deadline")]),
            0.0
        );

        // Pre hook 120 ms, post hook 7 ms.
        let hb = "quiesce_hook_duration_seconds_bucket";
        assert_eq!(value(&lines, hb, &[("phase", "pre"), ("le", "0.1")]), 0.0);
        assert_eq!(value(&lines, hb, &[("phase", "pre"), ("le", "0.25")]), 1.0);
        assert_eq!(value(&lines, hb, &[("phase", "post"), ("le", "0.01")]), 1.0);
        let pre = [("phase", "pre")];
        let post = [("phase", "post")];
        assert_eq!(
            value(&lines, "quiesce_hook_duration_seconds_sum", &pre),
            0.12
        );
        assert_eq!(
            value(&lines, "quiesce_hook_duration_seconds_sum", &post),
            0.007
        );
        assert_eq!(
            value(&lines, "quiesce_hook_duration_seconds_count", &pre),
            1.0
        );
        assert_eq!(
            value(&lines, "quiesce_hook_duration_seconds_count", &post),
            1.0
        );
        assert_eq!(value(&lines, "quiesce_hook_failures_total", &pre), 0.0);
        assert_eq!(value(&lines, "quiesce_hook_failures_total", &post), 0.0);

        assert_eq!(
            value(&lines, "quiesce_mount_freeze_failures_total", &[]),
            0.0
        );
        // finished_at 2024-01-02T03:04:05.250Z.
        assert_eq!(
            value(&lines, "quiesce_last_success_timestamp_seconds", &[]),
            1_704_164_645.25
        );
    }

    #[test]
    fn failures_aborts_and_mount_errors_are_counted() {
        let m = Metrics::new();
        let mut s = snapshot(State::Failed, Some(Consistency::Crash));
        s.thaw_reason = Some(ThawReason::Deadline);
        s.frozen_ms = Some(10_000);
        s.hooks = vec![
            hook(HOOK_A, "pre", Some(1), 5),
            HookReport {
                timed_out: true,
                ..hook(HOOK_B, "pre", Some(0), 30_000)
            },
            hook(HOOK_A, "post", None, 90_000),
        ];
        s.mounts.push(MountReport {
            path: "/data".into(),
            fstype: "xfs".into(),
            frozen: false,
            error: Some(format!("{ID} is already frozen")),
        });
        m.snapshot_ended(&s);
        let mut a = snapshot(State::Aborted, None);
        a.frozen_ms = None;
        a.thaw_reason = None;
        a.hooks.clear();
        m.snapshot_ended(&a);
        // Not ended: ignored.
        m.snapshot_ended(&snapshot(State::Frozen, Some(Consistency::Application)));
        m.set_active(true);
        m.set_frozen(true);

        let lines = check(&m.render());
        let total = "quiesce_snapshots_total";
        assert_eq!(
            value(
                &lines,
                total,
                &[("state", "failed"), ("consistency", "crash")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &lines,
                total,
                &[("state", "aborted"), ("consistency", "none")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &lines,
                total,
                &[("state", "succeeded"), ("consistency", "application")]
            ),
            0.0
        );
        assert_eq!(
            value(&lines, "quiesce_thaws_total", &[("reason", "deadline")]),
            1.0
        );
        assert_eq!(
            value(&lines, "quiesce_thaws_total", &[("reason", "host")]),
            0.0
        );
        // 10 s is in the 10 bucket (le is inclusive); the aborted one never froze.
        let frozen = "quiesce_snapshot_frozen_seconds_bucket";
        assert_eq!(value(&lines, frozen, &[("le", "5")]), 0.0);
        assert_eq!(value(&lines, frozen, &[("le", "10")]), 1.0);
        assert_eq!(
            value(&lines, "quiesce_snapshot_frozen_seconds_count", &[]),
            1.0
        );
        let pre = [("phase", "pre")];
        let post = [("phase", "post")];
        assert_eq!(value(&lines, "quiesce_hook_failures_total", &pre), 2.0);
        assert_eq!(value(&lines, "quiesce_hook_failures_total", &post), 1.0);
        let hb = "quiesce_hook_duration_seconds_bucket";
        assert_eq!(value(&lines, hb, &[("phase", "post"), ("le", "60")]), 0.0);
        assert_eq!(value(&lines, hb, &[("phase", "post"), ("le", "+Inf")]), 1.0);
        assert_eq!(
            value(&lines, "quiesce_hook_duration_seconds_sum", &pre),
            30.005
        );
        assert_eq!(
            value(&lines, "quiesce_mount_freeze_failures_total", &[]),
            1.0
        );
        assert_eq!(
            value(&lines, "quiesce_last_success_timestamp_seconds", &[]),
            0.0
        );
        assert_eq!(value(&lines, "quiesce_snapshot_active", &[]), 1.0);
        assert_eq!(value(&lines, "quiesce_frozen", &[]), 1.0);

        m.set_active(false);
        m.set_frozen(false);
        let lines = check(&m.render());
        assert_eq!(value(&lines, "quiesce_snapshot_active", &[]), 0.0);
        assert_eq!(value(&lines, "quiesce_frozen", &[]), 0.0);
    }

    #[test]
    fn a_success_without_a_readable_finished_at_takes_now() {
        let m = Metrics::new();
        let before = unix_ms_now() as f64 / 1000.0;
        let mut s = snapshot(State::Succeeded, Some(Consistency::FileSystem));
        s.finished_at = Some("not a time".into());
        m.snapshot_ended(&s);
        let lines = check(&m.render());
        let t = value(&lines, "quiesce_last_success_timestamp_seconds", &[]);
        let after = unix_ms_now() as f64 / 1000.0;
        assert!(before <= t && t <= after, "{before} <= {t} <= {after}");
    }

    #[test]
    fn no_snapshot_id_hook_name_or_output_is_ever_rendered() {
        let m = Metrics::new();
        for (state, c) in [
            (State::Succeeded, Some(Consistency::Application)),
            (State::Failed, None),
            (State::Aborted, None),
        ] {
            let mut s = snapshot(state, c);
            s.mounts[0].error = Some(format!("{OUTPUT} {ID}"));
            m.snapshot_ended(&s);
        }
        let text = m.render();
        check(&text);
        for secret in [
            ID, HOOK_A, HOOK_B, OUTPUT, "request-", "vogon", "quoted", "/mnt",
        ] {
            assert!(!text.contains(secret), "{secret:?} leaked:\n{text}");
        }
        // Only the fixed label names appear.
        for line in check(&text) {
            for (k, _) in line.labels {
                assert!(
                    [
                        "state",
                        "consistency",
                        "reason",
                        "phase",
                        "le",
                        "version",
                        "rcu"
                    ]
                    .contains(&k.as_str()),
                    "label {k}"
                );
            }
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = String::new();
        header(&mut out, "x_total", "counter", "a \\ b\nc");
        sample(&mut out, "x_total", &[("l", "a\\b\"c\nd")], 3.0);
        assert_eq!(
            out,
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{l=\"a\\\\b\\\"c\\nd\"} 3\n"
        );
        let lines = check(&out);
        assert_eq!(lines[0].labels[0].1, "a\\b\"c\nd");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.042), "0.042");
    }

    #[test]
    fn the_rendering_order_is_stable() {
        let m = Metrics::new();
        m.snapshot_ended(&snapshot(State::Succeeded, Some(Consistency::Application)));
        assert_eq!(m.render(), m.render());
        let families: Vec<String> = m
            .render()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(
            families,
            [
                "quiesce_build_info",
                "quiesce_start_time_seconds",
                "quiesce_snapshot_active",
                "quiesce_frozen",
                "quiesce_snapshots_total",
                "quiesce_snapshot_frozen_seconds",
                "quiesce_thaws_total",
                "quiesce_hook_duration_seconds",
                "quiesce_hook_failures_total",
                "quiesce_mount_freeze_failures_total",
                "quiesce_last_success_timestamp_seconds",
                "quiesce_auth_failures_total",
                "quiesce_freeze_rcu_total",
            ]
        );
    }

    #[test]
    #[should_panic(expected = "buckets not cumulative")]
    fn the_checker_refuses_non_cumulative_buckets() {
        check(concat!(
            "# HELP h_seconds h\n# TYPE h_seconds histogram\n",
            "h_seconds_bucket{le=\"1\"} 2\nh_seconds_bucket{le=\"+Inf\"} 1\n",
            "h_seconds_sum 1\nh_seconds_count 1\n",
        ));
    }

    #[test]
    #[should_panic(expected = "has no TYPE")]
    fn the_checker_refuses_a_sample_without_type() {
        check("x_total 1\n");
    }

    #[test]
    #[should_panic(expected = "bad value")]
    fn the_checker_refuses_a_non_float_value() {
        check("# HELP x_total x\n# TYPE x_total counter\nx_total one\n");
    }

    #[test]
    fn metrics_are_shared_across_threads() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        m.snapshot_ended(&snapshot(State::Failed, None));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let lines = check(&m.render());
        assert_eq!(
            value(
                &lines,
                "quiesce_snapshots_total",
                &[("state", "failed"), ("consistency", "none")]
            ),
            100.0
        );
    }
}
