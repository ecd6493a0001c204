//! The entry points of the subcommands.

pub mod args;
pub mod check_config;
pub mod daemon;
pub mod freeze;
pub mod thaw_all;

use std::path::Path;

use crate::config::{Config, ConfigErrors, LoadOptions};

/// Loads the config with its drop-ins; a missing file at the default path means the defaults
/// (the drop-ins still count). The key file is not checked: see [`load_config_and_key`].
pub fn load_config(path: &Path) -> Result<Config, ConfigErrors> {
    Config::load_with(path, load_options(path, false))
}

/// [`load_config`] plus the key file check, all errors together (check-config, the daemon).
pub fn load_config_and_key(path: &Path) -> Result<Config, ConfigErrors> {
    Config::load_with(path, load_options(path, true))
}

fn load_options(path: &Path, check_key_file: bool) -> LoadOptions {
    LoadOptions {
        missing_main_is_default: path == Path::new(crate::config::DEFAULT_PATH),
        check_key_file,
    }
}

/// Starts `cmd` with `sh -c`, stdin from /dev/null and its output on our stderr (stdout stays
/// the report's): the `--exec` CMD of `quiesce freeze` and `quiesce snapshot`.
pub fn spawn_shell(cmd: &str) -> std::io::Result<tokio::process::Child> {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(stderr))
        .spawn()
}
