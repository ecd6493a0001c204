//! `quiesce thaw-all`: the last line of defence (the unit's ExecStopPost).

use std::path::{Path, PathBuf};

use crate::config::DEFAULT_STATE_DIR;
use crate::freezer::recovery::{self, Recovery};

/// The state_dir named by the config, read leniently: a broken config must not stop a thaw.
pub fn state_dir_of(config: &Path) -> (PathBuf, Option<String>) {
    let fallback = PathBuf::from(DEFAULT_STATE_DIR);
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (fallback, None),
        Err(e) => {
            return (
                fallback,
                Some(format!("cannot read {}: {e}", config.display())),
            )
        }
    };
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Ok(v) => match v.get("state_dir").and_then(|s| s.as_str()) {
            Some(s) => (PathBuf::from(s), None),
            None => (fallback, None),
        },
        Err(e) => (
            fallback,
            Some(format!(
                "{} does not parse ({e}); using {DEFAULT_STATE_DIR}",
                config.display()
            )),
        ),
    }
}

/// Runs the command; returns the exit code.
pub fn run(config: &Path) -> i32 {
    let (state_dir, warning) = state_dir_of(config);
    if let Some(w) = warning {
        eprintln!("quiesce thaw-all: warning: {w}");
    }
    match recovery::thaw_recorded(&state_dir) {
        Err(e) => {
            eprintln!(
                "quiesce thaw-all: reading records in {}: {e}",
                state_dir.display()
            );
            1
        }
        Ok(outcomes) => {
            for o in &outcomes {
                println!("{}", serde_json::to_string(o).unwrap_or_default());
            }
            let left = outcomes.iter().filter(|o| o.left_frozen()).count();
            let thawed = outcomes
                .iter()
                .filter(|o| matches!(o, Recovery::Thawed { .. }))
                .count();
            eprintln!(
                "quiesce thaw-all: {thawed} thawed, {} record(s) settled, {left} left frozen",
                outcomes.len() - left
            );
            i32::from(left > 0)
        }
    }
}
