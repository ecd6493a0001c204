//! `quiesce check-config`.

use std::path::Path;

use crate::freezer::{self, show};

/// Runs the command; returns the exit code.
pub fn run(config_path: &Path) -> i32 {
    let config = match super::load_config(config_path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return 1;
        }
    };
    println!("{}: OK", config_path.display());
    println!("hooks:");
    if config.hooks.is_empty() {
        println!("  (none)");
    }
    for h in &config.hooks {
        let argv = |a: &Option<Vec<String>>| a.as_ref().map(|v| v.join(" ")).unwrap_or("-".into());
        println!(
            "  {}: pre: {}; post: {}; timeout {}; on_failure {:?}",
            h.name,
            argv(&h.pre),
            argv(&h.post),
            crate::duration::format(h.timeout),
            h.on_failure
        );
    }
    if !config.freeze.enabled {
        println!("mounts: none (freeze.enabled is false)");
        return 0;
    }
    match freezer::discover(&config.rules(), None) {
        Err(e) => {
            eprintln!("{}: {e}", config_path.display());
            1
        }
        Ok(d) => {
            println!("mounts to freeze, in order:");
            if d.targets.is_empty() {
                println!("  (none)");
            }
            for m in &d.targets {
                println!("  {}  {}  {}", show(&m.mount_point), m.fstype, m.source);
            }
            println!("skipped:");
            for (m, why) in &d.skipped {
                println!("  {}  {}  {why}", show(&m.mount_point), m.fstype);
            }
            0
        }
    }
}
