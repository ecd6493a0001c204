//! The operator's YAML configuration (contract: Configuration).
//!
//! Strict: unknown keys are errors, and every error names `file:line:column`. This module
//! parses the main file and checks the freeze settings; hook validation and `config.d/`
//! drop-ins come with the hooks work.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default location of the main config.
pub const DEFAULT_PATH: &str = "/etc/quiesce/config.yaml";
/// Default runtime state folder (a tmpfs).
pub const DEFAULT_STATE_DIR: &str = "/run/quiesce";

/// `auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Hmac,
    None,
}

/// The `auth` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub mode: AuthMode,
    pub key_file: PathBuf,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            mode: AuthMode::Hmac,
            key_file: PathBuf::from("/etc/quiesce/host.key"),
        }
    }
}

/// The `freeze` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Freeze {
    pub enabled: bool,
    #[serde(with = "crate::duration::serde_str")]
    pub timeout: Duration,
    #[serde(with = "crate::duration::serde_str")]
    pub max_timeout: Duration,
    pub include_mounts: Vec<PathBuf>,
    pub exclude_mounts: Vec<PathBuf>,
    pub exclude_fstypes: Vec<String>,
}

impl Default for Freeze {
    fn default() -> Self {
        Freeze {
            enabled: true,
            timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(60),
            include_mounts: Vec::new(),
            exclude_mounts: vec![PathBuf::from("/boot/efi")],
            exclude_fstypes: Vec::new(),
        }
    }
}

/// `hooks[].on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Continue,
    Abort,
}

/// One entry of `hooks`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub name: String,
    #[serde(default)]
    pub pre: Option<Vec<String>>,
    #[serde(default)]
    pub post: Option<Vec<String>>,
    #[serde(default = "default_hook_timeout", with = "crate::duration::serde_str")]
    pub timeout: Duration,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub state_dir: PathBuf,
    pub auth: Auth,
    pub freeze: Freeze,
    pub hooks: Vec<Hook>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7380".into(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            auth: Auth::default(),
            freeze: Freeze::default(),
            hooks: Vec::new(),
        }
    }
}

/// A config error with its place (`file:line:column: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// All the errors of one load (each printed on its own line by `check-config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text`, reporting errors against `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let at = |line, column, message: String| ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            message,
        };
        // An empty file (or one with only comments) is the defaults.
        let config: Config = if text.trim().is_empty()
            || text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((1, 1));
                ConfigErrors(vec![at(line, column, e.to_string())])
            })?
        };
        let mut errors = Vec::new();
        let locate = |key: &str| locate_key(text, key);
        let f = &config.freeze;
        if f.timeout > f.max_timeout {
            let (l, c) = locate("timeout");
            errors.push(at(
                l,
                c,
                format!(
                    "freeze.timeout ({}) is above freeze.max_timeout ({})",
                    crate::duration::format(f.timeout),
                    crate::duration::format(f.max_timeout)
                ),
            ));
        }
        if f.timeout.is_zero() {
            let (l, c) = locate("timeout");
            errors.push(at(l, c, "freeze.timeout must be above 0".into()));
        }
        for (key, list) in [
            ("include_mounts", &f.include_mounts),
            ("exclude_mounts", &f.exclude_mounts),
        ] {
            for p in list.iter().filter(|p| !p.is_absolute()) {
                let (l, c) = locate(key);
                errors.push(at(
                    l,
                    c,
                    format!("freeze.{key}: {} is not an absolute path", p.display()),
                ));
            }
        }
        if !config.state_dir.is_absolute() {
            let (l, c) = locate("state_dir");
            errors.push(at(
                l,
                c,
                format!(
                    "state_dir {} is not an absolute path",
                    config.state_dir.display()
                ),
            ));
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The selection rules of the freeze section.
    pub fn rules(&self) -> crate::freezer::select::Rules {
        crate::freezer::select::Rules {
            include_mounts: self.freeze.include_mounts.clone(),
            exclude_mounts: self.freeze.exclude_mounts.clone(),
            exclude_fstypes: self.freeze.exclude_fstypes.clone(),
        }
    }
}

/// Line and column (1-based) of the first `key:` in the text, for errors found after parsing.
fn locate_key(text: &str, key: &str) -> (usize, usize) {
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with(&format!("{key}:")) {
            return (n + 1, line.len() - trimmed.len() + 1);
        }
    }
    (1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("/etc/quiesce/config.yaml"), text)
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../config.example.yaml");
        let config = parse(text).unwrap();
        assert_eq!(config.freeze.timeout, Duration::from_secs(10));
        assert_eq!(
            config.freeze.exclude_mounts,
            vec![PathBuf::from("/boot/efi")]
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_place() {
        let err = parse("freeze:\n  enabled: true\n  timeuot: 5s\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/quiesce/config.yaml:3:"), "{text}");
        assert!(text.contains("unknown field `timeuot`"), "{text}");
    }

    #[test]
    fn durations_need_units() {
        let err = parse("freeze:\n  timeout: 10\n").unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
        assert!(err.contains("no unit"), "{err}");
    }

    #[test]
    fn timeout_above_max_is_refused_at_its_line() {
        let err = parse("freeze:\n  max_timeout: 5s\n  timeout: 10s\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/quiesce/config.yaml:3:3: freeze.timeout (10s)"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = parse("freeze:\n  include_mounts: [data]\nstate_dir: run\n").unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }
}
