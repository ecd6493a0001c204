//! The entry points of the subcommands.

pub mod check_config;
pub mod freeze;
pub mod thaw_all;

use std::path::Path;

use crate::config::{Config, ConfigErrors};

/// Loads the config; a missing file at the default path means the defaults.
pub fn load_config(path: &Path) -> Result<Config, ConfigErrors> {
    if path == Path::new(crate::config::DEFAULT_PATH) && !path.exists() {
        return Ok(Config::default());
    }
    Config::load(path)
}
