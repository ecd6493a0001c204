//! Hooks written for other agents (contract: `imports`): Azure Backup's script config, qemu-ga's
//! `fsfreeze-hook.d` and VMware Tools' `backupScripts.d`, read where they lie and turned into
//! ordinary [`Hook`]s appended to the one hook list, so that the hook runner, the post hooks in
//! reverse, the timeouts and the report apply to them unchanged.
//!
//! Each importer reads its agent's format as that agent reads it (`docs/migrating.md` cites the
//! sources): [`azure`], [`qemu`], [`vmware`]. A path that does not exist imports nothing (the
//! note says so); every script found is checked with the rules of hook commands, and every
//! problem is an error at its place: the `imports.KEY` line of the main file for a folder and
//! the scripts in it, the JSON's own line and column for Azure's config. A config with an
//! import error is refused as a whole, so a reload with one keeps the running config.

mod azure;
mod qemu;
mod vmware;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::files::{self, Inspect};
use super::locate::{Source, Step::Key};
use super::{Config, ConfigError, Hook};

/// The `imports` section: where each agent's scripts are; each key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Imports {
    /// Azure VMSnapshotLinux's script config (`/etc/azure/VMSnapshotScriptPluginConfig.json`).
    pub azure_plugin_config: Option<PathBuf>,
    /// qemu-ga's hook folder (`/etc/qemu/fsfreeze-hook.d`).
    pub qemu_hook_dir: Option<PathBuf>,
    /// VMware Tools' script folder (`/etc/vmware-tools/backupScripts.d`).
    pub vmware_scripts_dir: Option<PathBuf>,
}

/// Azure's default place.
pub const AZURE_PLUGIN_CONFIG: &str = "/etc/azure/VMSnapshotScriptPluginConfig.json";
/// qemu-ga's default place.
pub const QEMU_HOOK_DIR: &str = "/etc/qemu/fsfreeze-hook.d";
/// VMware Tools' default place.
pub const VMWARE_SCRIPTS_DIR: &str = "/etc/vmware-tools/backupScripts.d";
/// Where open-vm-tools looks for its legacy `pre-freeze-script` and `post-thaw-script`.
pub const VMWARE_LEGACY_DIR: &str = "/usr/sbin";

/// What one import found, for check-config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportNote {
    /// `imports.KEY`.
    pub key: &'static str,
    pub path: PathBuf,
    /// One line on the whole (`2 hooks`, `does not exist: imports nothing`).
    pub outcome: String,
    /// What was looked at and left out, and why (a file name, the reason).
    pub skipped: Vec<(String, String)>,
    /// Anything else worth saying (an Azure field read but ignored).
    pub remarks: Vec<String>,
}

/// What the imports of one config found.
#[derive(Debug, Default)]
pub struct Found {
    pub hooks: Vec<Hook>,
    pub notes: Vec<ImportNote>,
    pub errors: Vec<ConfigError>,
    /// Files errors may name besides the config's (for their order).
    pub files: Vec<PathBuf>,
    pub freeze_off_by: Option<String>,
}

/// The `imports` section's paths as written (no file is read): absolute, no NUL.
pub fn section(c: &Config, src: &Source) -> Vec<ConfigError> {
    entries(&c.imports)
        .filter(|(_, p)| !p.is_absolute())
        .map(|(key, p)| {
            src.error(
                &[Key("imports"), Key(key)],
                format!(
                    "imports.{key}: {} is not an absolute path: write the full path, e.g. {}",
                    p.display(),
                    default_of(key)
                ),
            )
        })
        .collect()
}

fn entries(i: &Imports) -> impl Iterator<Item = (&'static str, &PathBuf)> {
    [
        ("azure_plugin_config", &i.azure_plugin_config),
        ("qemu_hook_dir", &i.qemu_hook_dir),
        ("vmware_scripts_dir", &i.vmware_scripts_dir),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.as_ref().map(|p| (k, p)))
}

fn default_of(key: &str) -> &'static str {
    match key {
        "azure_plugin_config" => AZURE_PLUGIN_CONFIG,
        "qemu_hook_dir" => QEMU_HOOK_DIR,
        _ => VMWARE_SCRIPTS_DIR,
    }
}

/// Reads every import of `c` (whose main file is `src`): Azure's, then qemu-ga's, then
/// VMware's, the contract's order.
pub fn load(c: &Config, src: &Source, fs: &dyn Inspect) -> Found {
    load_with_legacy(c, src, fs, Path::new(VMWARE_LEGACY_DIR))
}

/// [`load`] with VMware's legacy scripts looked for in `legacy_dir` (tests).
pub fn load_with_legacy(c: &Config, src: &Source, fs: &dyn Inspect, legacy_dir: &Path) -> Found {
    let mut found = Found {
        errors: section(c, src),
        ..Found::default()
    };
    if !found.errors.is_empty() {
        return found;
    }
    let i = &c.imports;
    let ctx = |key: &'static str| Ctx { src, key, fs };
    if let Some(p) = &i.azure_plugin_config {
        azure::import(&ctx("azure_plugin_config"), p, &mut found);
    }
    if let Some(p) = &i.qemu_hook_dir {
        qemu::import(&ctx("qemu_hook_dir"), p, &mut found);
    }
    if let Some(p) = &i.vmware_scripts_dir {
        vmware::import(&ctx("vmware_scripts_dir"), p, legacy_dir, &mut found);
    }
    // Imported names carry their agent's prefix; a YAML hook could still take one.
    let yaml: HashMap<&str, &Path> = c
        .hooks
        .iter()
        .map(|h| (h.name.as_str(), h.source.as_path()))
        .collect();
    for h in &found.hooks {
        if let Some(file) = yaml.get(h.name.as_str()) {
            let key = match h.name.split(':').next() {
                Some("azure") => "azure_plugin_config",
                Some("qemu") => "qemu_hook_dir",
                _ => "vmware_scripts_dir",
            };
            found.errors.push(src.error(
                &[Key("imports"), Key(key)],
                format!(
                    "imports.{key}: the imported hook {} has the name of a hook in {}: rename that hook",
                    h.name,
                    file.display()
                ),
            ));
        }
    }
    found
}

/// Where an importer reports.
struct Ctx<'a> {
    src: &'a Source,
    key: &'static str,
    fs: &'a dyn Inspect,
}

impl Ctx<'_> {
    /// An error at `imports.KEY` in the main file.
    fn error(&self, message: impl Into<String>) -> ConfigError {
        self.src.error(
            &[Key("imports"), Key(self.key)],
            format!("imports.{}: {}", self.key, message.into()),
        )
    }

    fn note(&self, path: &Path, outcome: impl Into<String>) -> ImportNote {
        ImportNote {
            key: self.key,
            path: path.to_path_buf(),
            outcome: outcome.into(),
            skipped: Vec::new(),
            remarks: Vec::new(),
        }
    }

    /// A script of a folder import, as `(hook name, command)`: named `AGENT:FILE` and checked
    /// like a YAML hook's command. `None` (with the errors in `found`) when its name cannot be
    /// a hook's or the file is not safe to run.
    fn folder_script(
        &self,
        found: &mut Found,
        agent: &str,
        dir: &Path,
        raw: &[u8],
        path: &Path,
    ) -> Option<(String, String)> {
        let file = match name_of(raw) {
            Ok(n) => n,
            Err(e) => {
                found
                    .errors
                    .push(self.error(format!("{}: {e}", dir.display())));
                return None;
            }
        };
        let name = format!("{agent}:{file}");
        let problems = self.check_command(&format!("{name} ({})", path.display()), path);
        if !problems.is_empty() {
            found
                .errors
                .extend(problems.into_iter().map(|m| self.error(m)));
            return None;
        }
        Some((name, path.to_string_lossy().into_owned()))
    }

    /// The problems of a script the import runs directly, each a message naming `label`.
    fn check_command(&self, label: &str, path: &Path) -> Vec<String> {
        let checked = files::check_command(self.fs, path);
        checked
            .problems
            .iter()
            .map(|p| p.message(label, path, checked.real.as_deref()))
            .collect()
    }
}

/// What a folder holds, as the importer of a folder agent sees it: `None` when it does not
/// exist (the note says so), else the names in byte order (`strcmp`, as both agents sort).
fn list_dir(ctx: &Ctx<'_>, dir: &Path, found: &mut Found) -> Option<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    match files::follow(ctx.fs, dir) {
        None if !exists(ctx.fs, dir) => {
            found
                .notes
                .push(ctx.note(dir, "does not exist: imports nothing"));
            return None;
        }
        Some(st) if st.kind == files::Kind::Dir => {}
        _ => {
            found.errors.push(ctx.error(format!(
                "{} is not a directory: name the folder of scripts, e.g. {}",
                dir.display(),
                default_of(ctx.key)
            )));
            return None;
        }
    }
    match ctx.fs.read_dir(dir) {
        Ok(names) => {
            let mut names: Vec<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
            names.sort();
            Some(names)
        }
        Err(e) => {
            found
                .errors
                .push(ctx.error(format!("cannot read {}: {e}", dir.display())));
            None
        }
    }
}

/// `N hooks` (or `no script: imports nothing`).
fn count(n: usize) -> String {
    match n {
        0 => "no script to run: imports nothing".into(),
        1 => "1 hook".into(),
        n => format!("{n} hooks"),
    }
}

/// Whether anything is at `path`, a dangling symlink included.
fn exists(fs: &dyn Inspect, path: &Path) -> bool {
    fs.lstat(path).is_ok()
}

/// A file name as a hook name's tail, or why it cannot be one.
fn name_of(bytes: &[u8]) -> Result<&str, String> {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().any(char::is_control) => Err(format!(
            "the file name {s:?} contains a control character: rename it"
        )),
        Ok(s) => Ok(s),
        Err(_) => Err(format!(
            "the file name {:?} is not UTF-8: rename it",
            String::from_utf8_lossy(bytes)
        )),
    }
}

#[cfg(test)]
mod tests;
