//! What the hook helper tells the runner: JSON lines on the helper's stdout.

use serde::{Deserialize, Serialize};

/// One line of the helper's stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum HelperEvent {
    /// The hook's main process exists; its pid is also its process group id. The runner keeps
    /// it so it can still kill the group if the helper itself dies.
    Started { pid: i32 },
    /// Everything is over; the helper exits right after this line.
    Finished(HelperReport),
}

/// The helper's final report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HelperReport {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    pub duration_us: u64,
    /// Spawn (exec) error or helper setup error; the hook did not run.
    pub error: Option<String>,
    pub signalled: usize,
    pub stray_processes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let started = HelperEvent::Started { pid: 42 };
        let line = serde_json::to_string(&started).unwrap();
        assert_eq!(line, r#"{"event":"started","pid":42}"#);
        assert_eq!(serde_json::from_str::<HelperEvent>(&line).unwrap(), started);

        let finished = HelperEvent::Finished(HelperReport {
            exit_code: Some(3),
            timed_out: true,
            error: Some("x".into()),
            ..Default::default()
        });
        let line = serde_json::to_string(&finished).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<HelperEvent>(&line).unwrap(),
            finished
        );
    }
}
