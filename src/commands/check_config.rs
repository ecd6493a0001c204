//! `quiesce check-config`: validate everything (the key file included) and show what the
//! agent would do with it.

use std::path::Path;

use crate::config::{AuthMode, Config, Hook, OnFailure};
use crate::freezer::{self, show};

/// `println!` that ends the command quietly when stdout is closed (`check-config | head -1`)
/// instead of panicking with EPIPE; nothing is frozen here, so exiting at once is safe.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Runs the command; returns the exit code.
pub fn run(config_path: &Path) -> i32 {
    let config = match super::load_config_and_key(config_path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return 1;
        }
    };
    println!("{}: OK", config_path.display());
    print_settings(&config);
    if let Some(why) = config.why_no_freeze() {
        println!("mounts: none ({why})");
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

/// The files read, where the agent listens, and the hooks in the order they run.
fn print_settings(config: &Config) {
    if config.origin.files.is_empty() {
        println!("files read: none (built-in defaults)");
    } else {
        println!("files read:");
        for f in &config.origin.files {
            println!("  {}", f.display());
        }
    }
    match config.auth.mode {
        AuthMode::Hmac => println!(
            "listen: {} (auth hmac, key {})",
            config.listen,
            config.auth.key_file.display()
        ),
        AuthMode::None => println!("listen: {} (auth none)", config.listen),
    }
    // Only when enabled: a config without qga prints what it printed before.
    let q = &config.qga;
    if q.enabled {
        println!(
            "qga: {} (freeze_timeout {}, consistency {}, forward {})",
            q.path,
            crate::duration::format(config.qga_freeze_timeout()),
            match q.consistency {
                crate::config::QgaConsistency::Application => "application",
                crate::config::QgaConsistency::FileSystem => "file_system",
            },
            if q.forward.is_empty() {
                "none: other commands are answered CommandNotFound"
            } else {
                &q.forward
            }
        );
    }
    print_imports(config);
    println!("hooks, in order (post hooks run in reverse):");
    if config.hooks.is_empty() {
        println!("  (none)");
    }
    for h in &config.hooks {
        print!("{}", describe(h));
    }
}

/// Each import: where from, what it found or why nothing; said only when `imports` is set.
fn print_imports(config: &Config) {
    if config.imported.is_empty() {
        return;
    }
    println!("imports:");
    for n in &config.imported {
        println!("  imports.{}: {}: {}", n.key, n.path.display(), n.outcome);
        for r in &n.remarks {
            println!("    {r}");
        }
        for (file, why) in &n.skipped {
            println!("    skipped {file}: {why}");
        }
    }
}

/// One hook, several lines.
fn describe(h: &Hook) -> String {
    let mut out = format!("  {}  (from {})\n", h.name, h.source.display());
    for (phase, argv) in [
        ("pre: ", &h.pre),
        ("post:", &h.post),
        ("post if the freeze failed:", &h.post_if_freeze_failed),
    ] {
        if let Some(argv) = argv {
            out.push_str(&format!("    {phase} {}\n", show_argv(argv)));
        }
    }
    if h.pre_retries > 0 || h.post_retries > 0 {
        out.push_str(&format!(
            "    retries: pre {}, post {}\n",
            h.pre_retries, h.post_retries
        ));
    }
    let env: Vec<&str> = h.env.keys().map(String::as_str).collect();
    out.push_str(&format!(
        "    timeout {}, on_failure {}, env: {}\n",
        crate::duration::format(h.timeout),
        match h.on_failure {
            OnFailure::Continue => "continue",
            OnFailure::Abort => "abort",
        },
        if env.is_empty() {
            "(none)".to_string()
        } else {
            env.join(", ")
        }
    ));
    out
}

/// The argv as words; a word that is empty or would not read back as one word is quoted.
fn show_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && !"\"'\\".contains(c));
            if plain {
                a.clone()
            } else {
                format!("{a:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_hook_as_printed() {
        let h = Hook {
            name: "pg".into(),
            pre: Some(vec!["/h/pg.sh".into(), "pre".into()]),
            post: None,
            timeout: std::time::Duration::from_secs(30),
            on_failure: OnFailure::Abort,
            env: [("B".to_string(), "1".to_string()), ("A".into(), "2".into())].into(),
            source: PathBuf::from("/etc/quiesce/config.d/pg.yaml"),
            ..Hook::default()
        };
        assert_eq!(
            describe(&h),
            "  pg  (from /etc/quiesce/config.d/pg.yaml)\n    pre:  /h/pg.sh pre\n    timeout 30s, on_failure abort, env: A, B\n"
        );
    }

    #[test]
    fn argv_words() {
        let v = |a: &[&str]| show_argv(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["/bin/sh", "-c", "echo hi"]), "/bin/sh -c \"echo hi\"");
        assert_eq!(v(&["/x", ""]), "/x \"\"");
        assert_eq!(v(&["/x", "a\"b"]), "/x \"a\\\"b\"");
    }
}
