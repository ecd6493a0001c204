//! The Snapshot object of the contract, as reported to hosts, and as the host side
//! (`quiesce snapshot`, `quiesce status`) reads it back.
//!
//! Reading is lenient where the agent may be newer than the client: unknown fields are ignored
//! (no `deny_unknown_fields` here), and the host side keeps the JSON it received next to the
//! typed value ([`Received`]) so that what it prints is exactly what the agent sent.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::freezer::protocol::escaped_path;
use crate::snapshot::lifecycle::{Consistency, Problem, Requested, State, ThawReason};

/// One target mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountReport {
    #[serde(with = "escaped_path")]
    pub path: PathBuf,
    pub fstype: String,
    /// Frozen by us at this moment.
    pub frozen: bool,
    /// Why it did not freeze (or thaw), if so.
    pub error: Option<String>,
}

/// One hook run (pre or post), in the order they ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookReport {
    pub name: String,
    pub phase: &'static str,
    /// `null` when it was killed or could not be started.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// The last 4 KiB of stdout+stderr (and the runner's error, if any).
    pub output: String,
}

/// The front door a snapshot was ordered through (contract: `"channel"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The HTTP API.
    #[default]
    Http,
    /// The QEMU guest agent protocol.
    Qga,
    /// `quiesce freeze` on the command line (its report is printed, never served).
    Cli,
}

/// The Snapshot object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub request_id: Option<String>,
    /// Read as `http` from an agent that predates the field.
    #[serde(default)]
    pub channel: Channel,
    pub state: State,
    pub requested_consistency: Requested,
    pub consistency: Option<Consistency>,
    pub created_at: String,
    pub frozen_at: Option<String>,
    pub thawed_at: Option<String>,
    pub finished_at: Option<String>,
    pub freeze_deadline: Option<String>,
    pub frozen_ms: Option<u64>,
    pub thaw_reason: Option<ThawReason>,
    pub mounts: Vec<MountReport>,
    pub hooks: Vec<HookReport>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// What became of RCU grace periods during the freeze (`None`: no FIFREEZE was issued).
    /// Not part of the contract's object: it feeds the metrics and the journal only.
    #[serde(skip)]
    pub rcu: Option<crate::freezer::protocol::Rcu>,
}

impl Snapshot {
    /// The status line for a snapshot: its progress while it runs, then its result, e.g.
    /// `last snapshot 2026-11-22T10:00:00Z: application, frozen 41 ms`.
    pub fn status_line(&self) -> String {
        let s = self;
        let frozen = s
            .frozen_ms
            .map(|ms| format!(", frozen {ms} ms"))
            .unwrap_or_default();
        if !s.state.is_end() {
            return format!("snapshot {} in progress: {}", s.id, s.state.as_str());
        }
        let when = s.finished_at.as_deref().unwrap_or(&s.created_at);
        let consistency = s
            .consistency
            .map(|c| c.as_str())
            .unwrap_or("no consistency");
        let outcome = match s.state {
            State::Succeeded => String::new(),
            other => format!(" ({})", other.as_str()),
        };
        let errors = match s.errors.len() {
            0 => String::new(),
            1 => format!(", 1 error: {}", s.errors[0].reason),
            n => format!(", {n} errors, first: {}", s.errors[0].reason),
        };
        format!("last snapshot {when}: {consistency}{outcome}{frozen}{errors}")
    }
}

/// The agent's words for fields that the daemon writes from a fixed set (`&'static str`: a hook's
/// phase, a problem's reason), read back from a host's copy: the known ones map to themselves,
/// one a newer agent introduced is kept once per process (a handful of codes, never per report).
fn fixed_word(word: String) -> &'static str {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    let seen = seen.get_or_insert_with(HashSet::new);
    if let Some(&known) = seen.get(word.as_str()) {
        return known;
    }
    let word: &'static str = Box::leak(word.into_boxed_str());
    seen.insert(word);
    word
}

impl<'de> Deserialize<'de> for HookReport {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            name: String,
            phase: String,
            exit_code: Option<i32>,
            timed_out: bool,
            duration_ms: u64,
            output: String,
        }
        let w = Wire::deserialize(d)?;
        Ok(HookReport {
            name: w.name,
            phase: match w.phase.as_str() {
                "pre" => "pre",
                "post" => "post",
                _ => fixed_word(w.phase),
            },
            exit_code: w.exit_code,
            timed_out: w.timed_out,
            duration_ms: w.duration_ms,
            output: w.output,
        })
    }
}

impl HookReport {
    /// Exited 0 within its timeout.
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// A Snapshot as an agent sent it: typed for the host's decisions, and the JSON object itself,
/// which the host prints unchanged (with fields this client may not know).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub snapshot: Snapshot,
    pub raw: Map<String, Value>,
}

impl Received {
    /// Reads one Snapshot object; the error says what is wrong with it.
    pub fn from_value(value: &Value) -> Result<Received, String> {
        let Value::Object(raw) = value else {
            return Err(format!("not a Snapshot object: {value}"));
        };
        let snapshot = Snapshot::deserialize(value).map_err(|e| format!("not a Snapshot: {e}"))?;
        Ok(Received {
            snapshot,
            raw: raw.clone(),
        })
    }

    /// Where the snapshot was ordered: the contract's `channel` (`http`, `qga`), `http` from an
    /// agent that predates the field.
    pub fn channel(&self) -> &str {
        self.raw
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or("http")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::lifecycle::{Consistency, Reason, State};
    use serde_json::json;

    fn sample() -> Value {
        json!({"id": "5f0c2a9e1b7d4c38", "request_id": "quiesce-x", "channel": "http",
         "state": "succeeded",
         "requested_consistency": "application", "consistency": "application",
         "created_at": "2026-11-22T10:00:00.000Z", "frozen_at": "2026-11-22T10:00:00.100Z",
         "thawed_at": "2026-11-22T10:00:00.141Z", "finished_at": "2026-11-22T10:00:00.200Z",
         "freeze_deadline": "2026-11-22T10:00:10.100Z", "frozen_ms": 41, "thaw_reason": "host",
         "mounts": [{"path": "/data\\040x", "fstype": "ext4", "frozen": false, "error": null}],
         "hooks": [{"name": "pg", "phase": "pre", "exit_code": 0, "timed_out": false,
                    "duration_ms": 12, "output": "ok"}],
         "errors": [], "warnings": [{"reason": "post_hook_failed", "message": "m"}]})
    }

    #[test]
    fn a_snapshot_reads_back_to_the_same_json() {
        let v = sample();
        let r = Received::from_value(&v).unwrap();
        assert_eq!(r.snapshot.state, State::Succeeded);
        assert_eq!(r.snapshot.consistency, Some(Consistency::Application));
        assert_eq!(r.snapshot.mounts[0].path, PathBuf::from("/data x"));
        assert_eq!(r.snapshot.warnings[0].reason, "post_hook_failed");
        assert!(r.snapshot.hooks[0].ok());
        assert_eq!(serde_json::to_value(&r.snapshot).unwrap(), v);
        assert_eq!(r.channel(), "http");
        // From an agent that predates the field: read as http.
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("channel");
        let r = Received::from_value(&old).unwrap();
        assert_eq!((r.snapshot.channel, r.channel()), (Channel::Http, "http"));
    }

    #[test]
    fn fields_and_words_of_a_newer_agent_are_kept_not_refused() {
        let mut v = sample();
        v["channel"] = json!("qga");
        v["some_future_field"] = json!({"x": 1});
        v["errors"] = json!([{"reason": "a_future_reason", "message": "m", "errno": 5}]);
        v["hooks"][0]["phase"] = json!("mid");
        let r = Received::from_value(&v).unwrap();
        assert_eq!(r.channel(), "qga");
        // A reason this build does not know reads as `unknown`; the raw JSON keeps its word.
        assert_eq!(r.snapshot.errors[0].reason, Reason::Unknown);
        assert_eq!(r.snapshot.hooks[0].phase, "mid");
        assert_eq!(Value::Object(r.raw), v, "the JSON is kept as sent");
        // One copy per word, however often it is read.
        let again = Received::from_value(&v).unwrap();
        assert!(std::ptr::eq(
            again.snapshot.hooks[0].phase,
            r.snapshot.hooks[0].phase
        ));
    }

    #[test]
    fn what_is_not_a_snapshot_is_an_error_naming_the_problem() {
        assert!(Received::from_value(&json!("text")).is_err());
        let mut v = sample();
        v["state"] = json!(7);
        let e = Received::from_value(&v).unwrap_err();
        assert!(e.contains("state") || e.contains("invalid type"), "{e}");
    }
}
