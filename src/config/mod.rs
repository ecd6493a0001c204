//! The operator's YAML configuration (contract: Configuration).
//!
//! Loading goes in three steps: `fragments` reads the main file and then the `config.d/*.yaml`
//! drop-ins next to it (lexical byte order, hidden names and other names ignored, a missing
//! folder is fine; a drop-in may set `hooks` and nothing else, its hooks are appended); the
//! hooks are merged; `validate` checks the result. Every error names `file:line:column`
//! (`locate` finds the place of errors found after parsing), and all the errors of all the
//! files come out together; a YAML error stops only its own file.
//!
//! Rules where the contract is silent:
//! - `listen` is `vsock:PORT` (1 to 4294967294; 4294967295 is VMADDR_PORT_ANY) or an IP socket
//!   address (`127.0.0.1:7380`, `[::1]:7380`) with a port above 0. Host names such as
//!   `localhost:7380` are refused: the agent starts early in boot, resolving would make it
//!   depend on the resolver and could bind an unexpected address, and `auth.mode: none`
//!   needs an address known to be loopback.
//! - `auth.mode: none` needs a loopback IP address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104); a
//!   vsock listener is never loopback. With `hmac`, `auth.key_file` must be absolute.
//! - Hook names are unique across all files, not empty, without control characters; `env`
//!   names are not empty, have no `=` or NUL, and may not start with `QUIESCE_` (reserved for
//!   the variables quiesce sets); a hook needs `pre`, `post` or both, each a non-empty list.
//! - Hook commands are checked as `files` describes: symlinks are followed and every
//!   directory on the way, before and after a link, must be trustworthy.
//! - The key file is checked only when [`LoadOptions::check_key_file`] asks for it (the daemon,
//!   check-config), not by [`Config::load`]: the local commands (`freeze`, `thaw-all`) do not
//!   need the key.
//!
//! [`Config::parse`] reads one text without touching any file (no drop-ins, no hook command
//! checks): the fuzz target and tests use it.

mod files;
mod fragments;
pub mod imports;
mod locate;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use fragments::DROP_IN_DIR;
pub use imports::{ImportNote, Imports};
pub use validate::RESERVED_ENV_PREFIX;

use locate::{Source, Step::Key};
use validate::HookAt;

/// Checks a command about to run as root (a hook, or the interpreter on its `#!` line) with
/// the rules of hook commands, on the real file system: `Err` says what is wrong.
pub fn check_command_now(path: &Path) -> Result<(), String> {
    let checked = files::check_command(&files::Real, path);
    match checked.problems.first() {
        None => Ok(()),
        Some(p) => Err(p.message(&path.display().to_string(), path, checked.real.as_deref())),
    }
}

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
    #[serde(deserialize_with = "duration_value")]
    pub timeout: Duration,
    #[serde(deserialize_with = "duration_value")]
    pub max_timeout: Duration,
    pub include_mounts: Vec<PathBuf>,
    pub exclude_mounts: Vec<PathBuf>,
    pub exclude_fstypes: Vec<String>,
    /// Expedite RCU grace periods during the FIFREEZE calls (`/sys/kernel/rcu_expedited`).
    pub expedite_rcu: bool,
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
            expedite_rcu: true,
        }
    }
}

/// The `qga` section (contract: the QEMU guest agent protocol).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Qga {
    pub enabled: bool,
    /// The virtio-serial port, or `unix:PATH` for a listening unix socket.
    pub path: String,
    /// As written; [`Config::qga_freeze_timeout`] is the one in force.
    #[serde(deserialize_with = "some_duration_value")]
    pub freeze_timeout: Option<Duration>,
    pub consistency: QgaConsistency,
    /// `unix:PATH` of a qemu-ga to relay the other commands to; empty: none.
    pub forward: String,
}

/// `qga.consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QgaConsistency {
    #[default]
    Application,
    FileSystem,
}

/// The virtio-serial port of the QEMU guest agent.
pub const QGA_PORT: &str = "/dev/virtio-ports/org.qemu.guest_agent.0";

impl Default for Qga {
    fn default() -> Self {
        Qga {
            enabled: false,
            path: QGA_PORT.into(),
            freeze_timeout: None,
            consistency: QgaConsistency::Application,
            forward: String::new(),
        }
    }
}

/// Where the qga endpoint is served (`qga.path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QgaPath {
    /// A character device (the virtio-serial port).
    Port(PathBuf),
    /// `unix:PATH`: a listening unix socket.
    Unix(PathBuf),
}

impl QgaPath {
    /// `unix:PATH` or an absolute device path.
    pub fn parse(text: &str) -> Result<QgaPath, String> {
        let (unix, path) = match text.strip_prefix("unix:") {
            Some(p) => (true, Path::new(p)),
            None => (false, Path::new(text)),
        };
        if !path.is_absolute() {
            return Err(format!(
                "{text:?} is not an absolute path (the virtio-serial port, such as {QGA_PORT}, or unix:/run/quiesce/qga.sock)"
            ));
        }
        Ok(if unix {
            QgaPath::Unix(path.to_path_buf())
        } else {
            QgaPath::Port(path.to_path_buf())
        })
    }
}

/// The `callbacks` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Callbacks {
    /// URL prefixes a host may name as `callback_url` besides its own address.
    pub allow: Vec<String>,
}

/// The longest `freeze.max_timeout` and hook `timeout` (contract: at most 1 h).
pub const MAX_TIMEOUT_CEILING: Duration = Duration::from_secs(3600);

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
    #[serde(default = "default_hook_timeout", deserialize_with = "duration_value")]
    pub timeout: Duration,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The file the hook was read from (the main file or a drop-in), or what it was imported
    /// from (Azure's script config, qemu-ga's or VMware's script folder).
    #[serde(skip)]
    pub source: PathBuf,
    /// Runs of the pre command after a failed one (Azure's `preScriptNoOfRetries`); not a YAML
    /// key (the contract has none): imports only.
    #[serde(skip)]
    pub pre_retries: u32,
    /// The same for the post command (Azure's `postScriptNoOfRetries`).
    #[serde(skip)]
    pub post_retries: u32,
    /// The post command when the freeze did not hold until the host's thaw (thaw reason other
    /// than `host`, or nothing frozen): VMware's `freezeFail`. `None`: `post` always.
    #[serde(skip)]
    pub post_if_freeze_failed: Option<Vec<String>>,
}

impl Default for Hook {
    /// A hook with no name and no commands (not valid as is: for building hooks in code).
    fn default() -> Self {
        Hook {
            name: String::new(),
            pre: None,
            post: None,
            timeout: default_hook_timeout(),
            on_failure: OnFailure::Continue,
            env: BTreeMap::new(),
            source: PathBuf::new(),
            pre_retries: 0,
            post_retries: 0,
            post_if_freeze_failed: None,
        }
    }
}

impl Hook {
    /// The post command for a snapshot whose thaw reason is `thaw_reason` (`None`: nothing
    /// was frozen): [`Hook::post_if_freeze_failed`] unless the host's thaw ended the freeze.
    pub fn post_for(
        &self,
        thaw_reason: Option<crate::freezer::protocol::ThawReason>,
    ) -> Option<&Vec<String>> {
        match (&self.post_if_freeze_failed, thaw_reason) {
            (Some(failed), r) if r != Some(crate::freezer::protocol::ThawReason::Host) => {
                Some(failed)
            }
            _ => self.post.as_ref(),
        }
    }
}

/// A contract duration (`10s`), refused while its scalar is read so that the error points at
/// the value itself (an error raised after reading would point at the enclosing mapping).
fn duration_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration with a unit, e.g. \"10s\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            crate::duration::parse(v).map_err(E::custom)
        }
        // An unquoted `10` is read as a number: the same message as "10".
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            self.visit_str(&v.to_string())
        }
    }
    d.deserialize_str(V)
}

/// [`duration_value`] for an optional key.
fn some_duration_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration_value(d).map(Some)
}

/// `qga.freeze_timeout` when it is not set: 60s, or `freeze.max_timeout` when that is lower.
pub const QGA_FREEZE_TIMEOUT: Duration = Duration::from_secs(60);

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
    pub callbacks: Callbacks,
    pub qga: Qga,
    /// The hooks of the main file, then those of each drop-in, in order; the imported ones
    /// follow (see [`imports`]).
    pub hooks: Vec<Hook>,
    /// Hooks written for other agents, run where they lie.
    pub imports: Imports,
    /// Where the settings were read from.
    #[serde(skip)]
    pub origin: Origin,
    /// What each import found, or why it imported nothing (for check-config).
    #[serde(skip)]
    pub imported: Vec<ImportNote>,
    /// Why freezing is off although `freeze.enabled` is true (Azure's `fsFreezeEnabled: false`).
    #[serde(skip)]
    pub freeze_off_by: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7380".into(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            auth: Auth::default(),
            freeze: Freeze::default(),
            callbacks: Callbacks::default(),
            qga: Qga::default(),
            hooks: Vec::new(),
            imports: Imports::default(),
            origin: Origin::default(),
            imported: Vec::new(),
            freeze_off_by: None,
        }
    }
}

/// Where a config was read from: for `check-config` and for errors found after loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The main file (named even when it was missing and the defaults were used).
    pub main: PathBuf,
    /// The files read, in order: the main file (when it exists), then the drop-ins.
    pub files: Vec<PathBuf>,
    /// Line and column of `auth.key_file` in the main file (else of `auth`, else 1:1).
    pub key_file_at: (usize, usize),
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            main: PathBuf::from(DEFAULT_PATH),
            files: Vec::new(),
            key_file_at: (1, 1),
        }
    }
}

/// Where the agent listens (`listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `vsock:PORT`, on any CID of the guest.
    Vsock { port: u32 },
    /// An IP address and port.
    Tcp(SocketAddr),
    /// `unix:PATH`: a unix socket (mode 0600, root's peers only).
    Unix(PathBuf),
}

impl Listen {
    /// Parses `vsock:PORT` or an IP socket address; host names are refused.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let p = Path::new(path);
            if !p.is_absolute() || path.contains('\0') {
                return Err(format!(
                    "unix socket path {path:?} must be absolute, e.g. unix:/run/quiesce/api.sock"
                ));
            }
            // sun_path holds 108 bytes with the final NUL.
            if path.len() > 107 {
                return Err(format!(
                    "unix socket path {path:?} is longer than 107 bytes"
                ));
            }
            return Ok(Listen::Unix(p.to_path_buf()));
        }
        if let Some(port) = text.strip_prefix("vsock:") {
            return match port.parse::<u32>() {
                Ok(p @ 1..=0xffff_fffe) => Ok(Listen::Vsock { port: p }),
                _ => Err(format!(
                    "vsock port {port:?} must be a number from 1 to 4294967294, e.g. vsock:7380"
                )),
            };
        }
        match text.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => Err(format!(
                "{text} has port 0 (a random port): give the port the host connects to, e.g. 7380"
            )),
            Ok(a) => Ok(Listen::Tcp(a)),
            Err(_) => Err(format!(
                "{text:?} is not an IP address with a port or vsock:PORT (host names are not \
                 resolved): write e.g. 127.0.0.1:7380, [::1]:7380, 0.0.0.0:7380 or vsock:7380"
            )),
        }
    }

    /// A unix socket (the only listener where `auth.mode: none` is allowed: its peers are
    /// root's, checked with SO_PEERCRED).
    pub fn is_unix(&self) -> bool {
        matches!(self, Listen::Unix(_))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Vsock { port } => write!(f, "vsock:{port}"),
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How [`Config::load_with`] loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// A missing main file means the defaults (the drop-ins are still read); else an error.
    pub missing_main_is_default: bool,
    /// Also check the key file (it exists, is a regular file of at least 32 bytes, owned by
    /// root, with no permission for group or others), so that all errors come together.
    pub check_key_file: bool,
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
    /// Reads the main file, its drop-ins, and validates them (the key file is not checked).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, LoadOptions::default())
    }

    /// [`Config::load`] with options.
    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Config, ConfigErrors> {
        load_with(path, options, &files::Real)
    }

    /// Parses and validates one main file's `text`, reporting errors against `file`. Touches no
    /// file: no drop-ins, no checks of the hook commands or the key (see [`Config::load`]).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let src = Source::new(file, text);
        let mut config = fragments::parse_main(&src).map_err(|e| ConfigErrors(vec![e]))?;
        let at: Vec<HookAt<'_>> = hooks_at(&config.hooks, &src);
        let mut errors = validate::settings(&config, &src);
        errors.extend(validate::qga(&config, &src));
        errors.extend(validate::hooks(&at));
        errors.extend(imports::section(&config, &src));
        finish(&mut config, &src, true);
        if errors.is_empty() {
            Ok(config)
        } else {
            sort(&mut errors, &[file.to_path_buf()]);
            Err(ConfigErrors(errors))
        }
    }

    /// Where the agent listens (valid once the config loaded).
    pub fn listen_address(&self) -> Result<Listen, String> {
        Listen::parse(&self.listen)
    }

    /// The deadline of a freeze ordered over qga: `qga.freeze_timeout`, else 60s capped at
    /// `freeze.max_timeout` (so that lowering `max_timeout` alone keeps a valid config).
    pub fn qga_freeze_timeout(&self) -> Duration {
        self.qga
            .freeze_timeout
            .unwrap_or(QGA_FREEZE_TIMEOUT.min(self.freeze.max_timeout))
    }

    /// Whether snapshots freeze: `freeze.enabled`, unless an import turned freezing off
    /// ([`Config::freeze_off_by`] says which).
    pub fn freezes(&self) -> bool {
        self.freeze.enabled && self.freeze_off_by.is_none()
    }

    /// Why snapshots do not freeze, when they do not.
    pub fn why_no_freeze(&self) -> Option<String> {
        if !self.freeze.enabled {
            Some("freeze.enabled is false".into())
        } else {
            self.freeze_off_by.clone()
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

fn hooks_at<'a>(hooks: &'a [Hook], src: &'a Source) -> Vec<HookAt<'a>> {
    hooks
        .iter()
        .enumerate()
        .map(|(index, hook)| HookAt { hook, src, index })
        .collect()
}

/// Records where the main file's settings came from.
fn finish(config: &mut Config, main: &Source, main_read: bool) {
    for h in &mut config.hooks {
        h.source = main.file.clone();
    }
    config.origin = Origin {
        main: main.file.clone(),
        files: if main_read {
            vec![main.file.clone()]
        } else {
            Vec::new()
        },
        key_file_at: main.place(&[Key("auth"), Key("key_file")]),
    };
}

/// Errors by file (in reading order), then by place; same place: as found.
fn sort(errors: &mut [ConfigError], order: &[PathBuf]) {
    errors.sort_by_key(|e| {
        let file = order
            .iter()
            .position(|f| *f == e.file)
            .unwrap_or(order.len());
        (file, e.line, e.column)
    });
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        message: format!("cannot read: {e}"),
    })
}

/// [`Config::load_with`] on a given file system (for the hook command and key checks).
fn load_with(
    path: &Path,
    options: LoadOptions,
    fs: &dyn files::Inspect,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut order = vec![path.to_path_buf()];

    let (main, main_read) = match read(path) {
        Ok(text) => (Some(Source::new(path, text)), true),
        Err(_) if options.missing_main_is_default && !path.exists() => {
            (Some(Source::new(path, "")), false)
        }
        Err(e) => {
            errors.push(e);
            (None, false)
        }
    };
    let mut config = main
        .as_ref()
        .and_then(|src| fragments::parse_main(src).map_err(|e| errors.push(e)).ok());

    let mut drop_ins: Vec<(Source, Vec<Hook>)> = Vec::new();
    match fragments::drop_in_files(path) {
        Err(e) => errors.push(e),
        Ok(list) => {
            for file in list {
                order.push(file.clone());
                let parsed = read(&file).and_then(|text| {
                    let src = Source::new(&file, text);
                    fragments::parse_drop_in(&src).map(|hooks| (src, hooks))
                });
                match parsed {
                    Ok(d) => drop_ins.push(d),
                    Err(e) => errors.push(e),
                }
            }
        }
    }

    let mut all: Vec<HookAt<'_>> = Vec::new();
    if let (Some(c), Some(src)) = (&config, &main) {
        all.extend(hooks_at(&c.hooks, src));
    }
    for (src, hooks) in &drop_ins {
        all.extend(hooks_at(hooks, src));
    }
    errors.extend(validate::hooks(&all));
    errors.extend(validate::hook_commands(&all, fs));

    if let (Some(c), Some(src)) = (&mut config, &main) {
        errors.extend(validate::settings(c, src));
        errors.extend(validate::qga(c, src));
        finish(c, src, main_read);
        for (src, hooks) in &drop_ins {
            c.origin.files.push(src.file.clone());
            c.hooks.extend(hooks.iter().map(|h| Hook {
                source: src.file.clone(),
                ..h.clone()
            }));
        }
        if options.check_key_file {
            errors.extend(validate::key_file(c, fs));
        }
        let found = imports::load(c, src, fs);
        errors.extend(found.errors);
        for f in found.files {
            if !order.contains(&f) {
                order.push(f);
            }
        }
        c.hooks.extend(found.hooks);
        c.imported = found.notes;
        c.freeze_off_by = found.freeze_off_by;
    }

    sort(&mut errors, &order);
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::files::fake::Tree;
    use super::*;

    const MAIN: &str = "/etc/quiesce/config.yaml";

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new(MAIN), text)
    }

    /// The errors of `text` as `line:column: message`, the file name left out.
    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect()
    }

    fn one_error(text: &str) -> String {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:#?}");
        e[0].clone()
    }

    #[test]
    fn the_qga_section() {
        let c = parse(
            "qga:\n  enabled: true\n  path: unix:/run/quiesce/qga.sock\n  freeze_timeout: 30s\n  \
             consistency: file_system\n  forward: unix:/run/qemu-ga.sock\n",
        )
        .unwrap();
        assert!(c.qga.enabled);
        assert_eq!(
            QgaPath::parse(&c.qga.path),
            Ok(QgaPath::Unix("/run/quiesce/qga.sock".into()))
        );
        assert_eq!(c.qga_freeze_timeout(), Duration::from_secs(30));
        assert_eq!(c.qga.consistency, QgaConsistency::FileSystem);
        let d = parse("").unwrap().qga;
        assert_eq!((d.enabled, d.path.as_str()), (false, QGA_PORT));
        assert_eq!(
            parse("").unwrap().qga_freeze_timeout(),
            Duration::from_secs(60)
        );
        // Unset, it follows a lower max_timeout.
        let low = parse("freeze: {max_timeout: 20s, timeout: 5s}\nqga: {enabled: true}\n").unwrap();
        assert_eq!(low.qga_freeze_timeout(), Duration::from_secs(20));
        assert!(one_error("qga:\n  enabled: true\n  paht: x\n")
            .starts_with("3:3: qga: unknown field `paht`"));
        assert_eq!(
            one_error("qga:\n  freeze_timeout: 2m\n"),
            "2:3: qga.freeze_timeout (2m) is above freeze.max_timeout (1m)"
        );
        assert_eq!(
            one_error("qga: {freeze_timeout: 0s}\n"),
            "1:7: qga.freeze_timeout must be above 0"
        );
        assert!(one_error("qga:\n  path: dev/ttyS0\n")
            .starts_with("2:3: qga.path: \"dev/ttyS0\" is not an absolute path"));
        assert!(one_error("qga:\n  forward: /run/qemu-ga.sock\n").starts_with("2:3: qga.forward"));
        assert!(one_error("qga:\n  consistency: crash\n")
            .starts_with("2:16: qga.consistency: unknown variant"));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        for text in ["", "# nothing\n\n"] {
            let c = parse(text).unwrap();
            assert_eq!(
                Config {
                    origin: Origin::default(),
                    ..c.clone()
                },
                Config::default()
            );
            assert_eq!(c.origin.files, [PathBuf::from(MAIN)]);
        }
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../config.example.yaml");
        let config = parse(text).unwrap();
        assert_eq!(config.freeze.timeout, Duration::from_secs(10));
        assert_eq!(
            config.freeze.exclude_mounts,
            vec![PathBuf::from("/boot/efi")]
        );
        assert_eq!(config.origin.key_file_at, (11, 3));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_place() {
        let err = parse("freeze:\n  enabled: true\n  timeuot: 5s\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/quiesce/config.yaml:3:3: "), "{text}");
        assert!(text.contains("unknown field `timeuot`"), "{text}");
        let e = one_error("hooks:\n  - name: a\n    pre: [/bin/sh]\n    evn: {}\n");
        assert!(e.starts_with("4:5: hooks[0]: unknown field `evn`"), "{e}");
        let e = one_error("auth: {mode: hmac, key: x}\n");
        assert!(e.starts_with("1:20: auth: unknown field `key`"), "{e}");
    }

    #[test]
    fn wrong_types_and_malformed_yaml() {
        let e = one_error("freeze:\n  enabled: maybe\n");
        assert!(e.starts_with("2:12: freeze.enabled: invalid type"), "{e}");
        let e = one_error("hooks:\n  - name: a\n    pre: /bin/sh\n");
        assert!(e.starts_with("3:10: hooks[0].pre: invalid type"), "{e}");
        let e = one_error("auth:\n  mode: hmca\n");
        assert!(
            e.starts_with("2:9: auth.mode: unknown variant `hmca`"),
            "{e}"
        );
        let e = one_error("freeze:\n  timeout: 10s\n bad: [\n");
        assert!(e.starts_with("3:"), "{e}");
        assert!(!e.contains(" at line "), "{e}");
        let e = one_error("- a\n- b\n");
        assert!(e.starts_with("1:1: invalid type: sequence"), "{e}");
    }

    #[test]
    fn durations_need_units() {
        let e = one_error("freeze:\n  timeout: 10\n");
        assert!(e.starts_with("2:12: freeze.timeout: duration"), "{e}");
        assert!(e.contains("no unit"), "{e}");
        let e = one_error("hooks:\n  - name: a\n    pre: [/bin/sh]\n    timeout: 5\n");
        assert!(e.starts_with("4:14: hooks[0].timeout: duration"), "{e}");
    }

    #[test]
    fn timeout_above_max_is_refused_at_its_line() {
        // The hook's `timeout:` comes first in the text and must not be taken for it.
        let text = "hooks:\n  - name: a\n    pre: [/bin/sh]\n    timeout: 1s\nfreeze:\n  max_timeout: 5s\n  timeout: 10s\n";
        assert_eq!(
            one_error(text),
            "7:3: freeze.timeout (10s) is above freeze.max_timeout (5s)"
        );
        assert_eq!(
            one_error("freeze: {timeout: 0s}\n"),
            "1:10: freeze.timeout must be above 0"
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        assert_eq!(
            errors("freeze:\n  include_mounts: [/data, data]\nstate_dir: run\n"),
            [
                "2:27: freeze.include_mounts: data is not an absolute path",
                "3:1: state_dir run is not an absolute path",
            ]
        );
        assert_eq!(
            one_error("auth:\n  key_file: host.key\n"),
            "2:3: auth.key_file host.key is not an absolute path: write the full path, such as /etc/quiesce/host.key"
        );
        // The key file does not matter without hmac.
        parse("listen: unix:/run/q.sock\nauth: {mode: none, key_file: host.key}\n").unwrap();
    }

    #[test]
    fn listen_addresses() {
        for good in [
            "127.0.0.1:7380",
            "0.0.0.0:7380",
            "[::1]:7380",
            "[::]:1",
            "10.1.2.3:65535",
            "vsock:7380",
            "vsock:1",
            "vsock:4294967294",
            "unix:/run/quiesce/api.sock",
        ] {
            let c = parse(&format!("listen: \"{good}\"\n")).unwrap();
            assert_eq!(c.listen_address().unwrap().to_string(), good);
        }
        for (bad, why) in [
            ("localhost:7380", "host names are not"),
            ("127.0.0.1", "not an IP address with a port"),
            ("127.0.0.1:0", "port 0"),
            ("::1:7380", "not an IP address with a port"),
            ("vsock:0", "from 1 to 4294967294"),
            ("vsock:4294967295", "from 1 to 4294967294"),
            ("vsock:-1", "from 1 to 4294967294"),
            ("vsock:", "from 1 to 4294967294"),
            ("", "not an IP address"),
            ("unix:run/api.sock", "must be absolute"),
            ("unix:", "must be absolute"),
        ] {
            let e = one_error(&format!("state_dir: /run/q\nlisten: \"{bad}\"\n"));
            assert!(e.starts_with("2:1: listen: "), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn auth_none_only_on_a_unix_socket() {
        parse("listen: unix:/run/quiesce/api.sock\nauth: {mode: none}\n").unwrap();
        for bad in [
            "127.0.0.1:7380",
            "[::1]:7380",
            "0.0.0.0:7380",
            "10.0.0.1:7380",
            "[::]:7380",
            "vsock:7380",
        ] {
            let e = one_error(&format!("listen: \"{bad}\"\nauth:\n  mode: none\n"));
            assert!(
                e.starts_with(&format!(
                    "3:3: auth.mode none is refused unless listen is a unix socket (unix:PATH, root's peers only), and listen is {bad}"
                )),
                "{e}"
            );
        }
        // The default listen (loopback TCP) is refused too.
        assert!(one_error("auth: {mode: none}\n").contains(": auth.mode none is refused"));
        // A bad listen is one error, not two.
        let e = one_error("listen: localhost:1\nauth: {mode: none}\n");
        assert!(e.starts_with("1:1: listen:"), "{e}");
    }

    #[test]
    fn timeouts_have_a_ceiling_of_one_hour() {
        parse("freeze: {max_timeout: 1h}\nhooks:\n  - {name: a, pre: [/bin/true], timeout: 1h}\n")
            .unwrap();
        assert_eq!(
            errors("freeze:\n  max_timeout: 3601s\nhooks:\n  - name: a\n    pre: [/bin/true]\n    timeout: 2h\n"),
            [
                "2:3: freeze.max_timeout (3601s) is above the ceiling of 1h: no snapshot needs its filesystems frozen longer",
                "6:5: hook a: timeout (2h) is above the ceiling of 1h",
            ]
        );
    }

    #[test]
    fn callback_prefixes_are_checked_at_their_place() {
        parse("callbacks:\n  allow: [\"https://backup.example/q/\"]\n").unwrap();
        let e = one_error("callbacks:\n  allow:\n    - https://backup.example\n");
        assert!(e.starts_with("3:7: callbacks.allow: "), "{e}");
        assert!(e.contains("must end with /"), "{e}");
    }

    #[test]
    fn hook_shapes() {
        let hook = |body: &str| one_error(&format!("hooks:\n  - name: a\n{body}"));
        assert_eq!(
            hook("    timeout: 5s\n"),
            "2:5: hook a has neither pre nor post: give it a pre command, a post command or both"
        );
        assert_eq!(
            hook("    post: []\n"),
            "3:5: hook a: post is empty: give the command and its arguments, e.g. [/etc/quiesce/hooks/a.sh, post]"
        );
        assert_eq!(
            hook("    pre: [\"\", x]\n"),
            "3:5: hook a: pre has an empty command: write its absolute path"
        );
        assert_eq!(
            hook("    pre: [hooks/a.sh, pre]\n"),
            "3:5: hook a: pre hooks/a.sh is not an absolute path: write the full path, starting with /"
        );
        assert_eq!(
            hook("    pre: [/bin/sh, \"a\\0b\"]\n"),
            "3:20: hook a: pre argument 1 contains a NUL character"
        );
        assert_eq!(
            hook("    pre: [/bin/sh]\n    timeout: 0ms\n"),
            "4:5: hook a: timeout must be above 0"
        );
        // A hook with only post is fine; pre: ~ is no pre.
        parse("hooks:\n  - name: a\n    post: [/bin/sh]\n    pre: ~\n").unwrap();
    }

    #[test]
    fn hook_names() {
        assert_eq!(
            one_error("hooks:\n  - name: \"\"\n    pre: [/bin/sh]\n"),
            "2:5: hook #1 has an empty name: give each hook a unique name"
        );
        assert_eq!(
            one_error("hooks:\n  - {name: \"a\\nb\", pre: [/bin/sh]}\n"),
            "2:6: hook \"a\\nb\": the name contains a control character"
        );
        assert_eq!(
            one_error("hooks:\n  - {name: a, pre: [/bin/sh]}\n  - {name: b, pre: [/bin/sh]}\n  - {name: a, post: [/bin/sh]}\n"),
            "4:6: hook a: the name is already used by the hook at /etc/quiesce/config.yaml:2:6: hook names must be unique"
        );
        let e = one_error("hooks:\n  - pre: [/bin/sh]\n");
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn hook_env() {
        let env = |e: &str| match parse(&format!(
            "hooks:\n  - name: a\n    pre: [/bin/sh]\n    env:\n{e}"
        )) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                    .collect()
            }
        };
        assert_eq!(
            env("      PGHOST: /run/postgresql\n      X: \"\"\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            env("      QUIESCE_PHASE: x\n"),
            ["5:7: hook a: env QUIESCE_PHASE is reserved: quiesce sets the QUIESCE_* variables itself"]
        );
        assert_eq!(
            env("      \"A=B\": x\n"),
            ["5:7: hook a: env variable name \"A=B\" may not contain '=' or NUL"]
        );
        assert_eq!(
            env("      \"\": x\n"),
            ["5:7: hook a: env has an empty variable name"]
        );
        assert_eq!(
            env("      A: \"x\\0\"\n"),
            ["5:7: hook a: env \"A\" has a value that contains a NUL character"]
        );
        // Lower case is not the reserved prefix.
        assert_eq!(env("      quiesce_x: y\n"), Vec::<String>::new());
        let e = one_error("hooks:\n  - name: a\n    pre: [/bin/sh]\n    env: {A: [1]}\n");
        assert!(e.starts_with("4:14: hooks[0].env.A: invalid type"), "{e}");
    }

    #[test]
    fn all_errors_come_out_in_order_of_place() {
        let text = "\
hooks:
  - name: a
    pre: [rel]
    env: {QUIESCE_X: y}
  - name: a
state_dir: run
freeze:
  timeout: 0s
";
        assert_eq!(
            errors(text),
            [
                "3:5: hook a: pre rel is not an absolute path: write the full path, starting with /",
                "4:11: hook a: env QUIESCE_X is reserved: quiesce sets the QUIESCE_* variables itself",
                "5:5: hook a: the name is already used by the hook at /etc/quiesce/config.yaml:2:5: hook names must be unique",
                "5:5: hook a has neither pre nor post: give it a pre command, a post command or both",
                "6:1: state_dir run is not an absolute path",
                "8:3: freeze.timeout must be above 0",
            ]
        );
    }

    #[test]
    fn the_key_file_place() {
        let at = |t: &str| parse(t).unwrap().origin.key_file_at;
        assert_eq!(at("listen: 127.0.0.1:1\nauth:\n  key_file: /k\n"), (3, 3));
        assert_eq!(at("listen: 127.0.0.1:1\nauth:\n  mode: hmac\n"), (2, 1));
        assert_eq!(at("listen: 127.0.0.1:1\n"), (1, 1));
    }

    #[test]
    fn the_key_file_check() {
        let mut t = Tree::new();
        t.file("/etc/quiesce/host.key", 0o644, 0, 16);
        let c = parse("state_dir: /run/q\nauth:\n  key_file: /etc/quiesce/host.key\n").unwrap();
        let e: Vec<String> = validate::key_file(&c, &t)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            e,
            [
                "/etc/quiesce/config.yaml:3:3: auth.key_file /etc/quiesce/host.key holds 16 bytes, fewer than 32: use a key of at least 32 random bytes",
                "/etc/quiesce/config.yaml:3:3: auth.key_file /etc/quiesce/host.key gives permissions to group or others (mode 0644): chmod 0600 /etc/quiesce/host.key",
            ]
        );
        t.file("/etc/quiesce/host.key", 0o400, 0, 32);
        assert!(validate::key_file(&c, &t).is_empty());
        // Not looked at without hmac.
        let none = parse("listen: unix:/run/q.sock\nauth: {mode: none}\n").unwrap();
        assert!(validate::key_file(&none, &Tree::default()).is_empty());
        // Defaults: the default key, reported at 1:1 of the main file.
        let e = validate::key_file(&Config::default(), &Tree::new());
        assert_eq!(
            e[0].to_string(),
            "/etc/quiesce/config.yaml:1:1: auth.key_file /etc/quiesce/host.key does not exist: put the key shared with the host there (at least 32 bytes, owned by root, mode 0600) or correct auth.key_file"
        );
    }

    /// A main file and drop-ins in a temporary folder.
    struct Layout {
        dir: tempfile::TempDir,
    }

    impl Layout {
        fn new(main: Option<&str>, drop_ins: &[(&str, &str)]) -> Layout {
            let dir = tempfile::tempdir().unwrap();
            if let Some(text) = main {
                std::fs::write(dir.path().join("config.yaml"), text).unwrap();
            }
            if !drop_ins.is_empty() {
                std::fs::create_dir(dir.path().join("config.d")).unwrap();
            }
            for (name, text) in drop_ins {
                std::fs::write(dir.path().join("config.d").join(name), text).unwrap();
            }
            Layout { dir }
        }
        fn main(&self) -> PathBuf {
            self.dir.path().join("config.yaml")
        }
        fn load(&self, options: LoadOptions) -> Result<Config, Vec<String>> {
            load_with(&self.main(), options, &Tree::new()).map_err(|e| {
                let root = format!("{}/", self.dir.path().display());
                e.0.iter()
                    .map(|e| e.to_string().replace(&root, ""))
                    .collect()
            })
        }
    }

    const PG: &str = "hooks:\n  - name: pg\n    pre: [/etc/quiesce/hooks/pg.sh, pre]\n    post: [/etc/quiesce/hooks/pg.sh, post]\n";

    #[test]
    fn drop_ins_add_hooks_in_order() {
        let l = Layout::new(
            Some(&format!("state_dir: /run/q\n{PG}")),
            &[
                (
                    "20-b.yaml",
                    "hooks: [{name: b, post: [/etc/quiesce/hooks/pg.sh]}]\n",
                ),
                (
                    "10-a.yaml",
                    "# a\nhooks:\n  - name: a\n    pre: [/etc/quiesce/hooks/pg.sh]\n",
                ),
                ("15-empty.yaml", "# nothing yet\n"),
                ("30-c.yml", "not: [read"),
                (".40-d.yaml", "not: [read"),
            ],
        );
        let c = l.load(LoadOptions::default()).unwrap();
        let names: Vec<&str> = c.hooks.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["pg", "a", "b"]);
        let d = l.dir.path().join("config.d");
        assert_eq!(c.hooks[0].source, l.main());
        assert_eq!(c.hooks[1].source, d.join("10-a.yaml"));
        assert_eq!(c.hooks[2].source, d.join("20-b.yaml"));
        assert_eq!(
            c.origin.files,
            [
                l.main(),
                d.join("10-a.yaml"),
                d.join("15-empty.yaml"),
                d.join("20-b.yaml")
            ]
        );
        assert_eq!(c.state_dir, Path::new("/run/q"));
    }

    #[test]
    fn errors_of_every_file_come_together() {
        let l = Layout::new(
            Some(&format!("listen: 127.0.0.1:1\nlisten: x\n{PG}")),
            &[
                ("a.yaml", "hooks: []\nlisten: 0.0.0.0:1\n"),
                (
                    "b.yaml",
                    "hooks:\n  - name: b\n    pre: [/etc/quiesce/hooks/none.sh]\n",
                ),
                (
                    "c.yaml",
                    "hooks:\n  - name: b\n    post: [/etc/quiesce/hooks/pg.sh]\n    timeout: 1\n",
                ),
                (
                    "d.yaml",
                    "hooks:\n  - name: b\n    post: [/etc/quiesce/hooks/pg.sh]\n",
                ),
            ],
        );
        let e = l.load(LoadOptions::default()).unwrap_err();
        assert_eq!(e.len(), 5, "{e:#?}");
        assert_eq!(
            e[0],
            "config.yaml:2:1: duplicate key `listen`: it is set earlier in the same mapping"
        );
        assert_eq!(
            e[1],
            "config.d/a.yaml:2:1: only `hooks` may be set in a drop-in, not `listen` (other settings belong in the main config file)"
        );
        assert_eq!(
            e[2],
            "config.d/b.yaml:3:5: hook b: pre /etc/quiesce/hooks/none.sh does not exist: install it there or correct the path"
        );
        assert!(
            e[3].starts_with("config.d/c.yaml:4:14: hooks[0].timeout: duration"),
            "{e:#?}"
        );
        assert_eq!(
            e[4],
            "config.d/d.yaml:2:5: hook b: the name is already used by the hook at config.d/b.yaml:2:5: hook names must be unique"
        );
    }

    #[test]
    fn duplicate_names_across_files_and_command_checks() {
        let mut t = Tree::new();
        t.file("/etc/quiesce/hooks/w.sh", 0o775, 0, 1);
        let l = Layout::new(
            Some(PG),
            &[(
                "x.yaml",
                "hooks:\n  - name: pg\n    pre: [/etc/quiesce/hooks/w.sh]\n",
            )],
        );
        let e = load_with(&l.main(), LoadOptions::default(), &t).unwrap_err();
        let e: Vec<String> = e.0.iter().map(|e| e.message.clone()).collect();
        assert_eq!(
            e,
            [
                format!("hook pg: the name is already used by the hook at {}:2:5: hook names must be unique", l.main().display()),
                "hook pg: pre /etc/quiesce/hooks/w.sh is writable by group or others (mode 0775): chmod go-w /etc/quiesce/hooks/w.sh".into(),
            ]
        );
    }

    #[test]
    fn a_missing_main_file() {
        let l = Layout::new(None, &[("a.yaml", PG)]);
        let e = l.load(LoadOptions::default()).unwrap_err();
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("config.yaml:1:1: cannot read: "), "{e:#?}");
        // At the default path, it is the defaults, and the drop-ins still count.
        let options = LoadOptions {
            missing_main_is_default: true,
            check_key_file: false,
        };
        let c = l.load(options).unwrap();
        assert_eq!(c.hooks.len(), 1);
        assert_eq!(c.listen, "127.0.0.1:7380");
        assert_eq!(c.origin.files, [l.dir.path().join("config.d/a.yaml")]);
        assert_eq!(c.origin.main, l.main());
    }

    #[test]
    fn the_key_check_is_an_option_of_load() {
        let l = Layout::new(Some("auth:\n  key_file: /etc/quiesce/host.key\n"), &[]);
        assert!(l.load(LoadOptions::default()).is_ok());
        let options = LoadOptions {
            missing_main_is_default: false,
            check_key_file: true,
        };
        assert_eq!(
            l.load(options).unwrap_err(),
            ["config.yaml:2:3: auth.key_file /etc/quiesce/host.key does not exist: put the key shared with the host there (at least 32 bytes, owned by root, mode 0600) or correct auth.key_file"]
        );
        // With other errors too.
        let l = Layout::new(Some("state_dir: x\n"), &[]);
        assert_eq!(l.load(options).unwrap_err().len(), 2);
    }

    #[test]
    fn real_hook_commands() {
        // /bin/sh is root's on any system the tests run on, as are the folders above it.
        let l = Layout::new(
            Some("hooks:\n  - name: sh\n    pre: [/bin/sh, -c, true]\n  - name: no\n    post: [/nonexistent-quiesce/x]\n"),
            &[],
        );
        let e = Config::load(&l.main()).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(
            e.0[0].message,
            "hook no: post /nonexistent-quiesce/x: /nonexistent-quiesce does not exist: install it there or correct the path"
        );
        assert_eq!((e.0[0].line, e.0[0].column), (5, 5));
    }

    #[test]
    fn error_display() {
        let e = ConfigErrors(vec![
            ConfigError {
                file: PathBuf::from("/a"),
                line: 1,
                column: 2,
                message: "x".into(),
            },
            ConfigError {
                file: PathBuf::from("/b"),
                line: 3,
                column: 4,
                message: "y".into(),
            },
        ]);
        assert_eq!(e.to_string(), "/a:1:2: x\n/b:3:4: y");
    }

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(rel)
    }

    /// The fixtures' hooks and keys under `/q` (their `@DIR@`), on a made-up tree.
    fn fixture_tree() -> Tree {
        let mut t = Tree::new();
        t.dir("/q", 0o700, 0)
            .dir("/q/hooks", 0o755, 0)
            .file("/q/hooks/ok.sh", 0o755, 0, 10)
            .link("/q/hooks/link.sh", "ok.sh", 0)
            .dir("/q/keys", 0o755, 0)
            .file("/q/keys/ok.key", 0o600, 0, 32);
        t
    }

    #[test]
    fn the_good_fixtures_load() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("full");
        std::fs::create_dir_all(copy.join("config.d")).unwrap();
        for entry in std::fs::read_dir(fixture("good/full/config.d")).unwrap() {
            let entry = entry.unwrap();
            let text = std::fs::read_to_string(entry.path()).unwrap();
            std::fs::write(
                copy.join("config.d").join(entry.file_name()),
                text.replace("@DIR@", "/q"),
            )
            .unwrap();
        }
        let main = std::fs::read_to_string(fixture("good/full/config.yaml")).unwrap();
        std::fs::write(copy.join("config.yaml"), main.replace("@DIR@", "/q")).unwrap();
        let options = LoadOptions {
            missing_main_is_default: false,
            check_key_file: true,
        };
        let c = load_with(&copy.join("config.yaml"), options, &fixture_tree()).unwrap();
        let hooks: Vec<(&str, &str)> = c
            .hooks
            .iter()
            .map(|h| {
                let file = h.source.file_name().unwrap().to_str().unwrap();
                (h.name.as_str(), file)
            })
            .collect();
        assert_eq!(
            hooks,
            [
                ("first", "config.yaml"),
                ("db", "10-db.yaml"),
                ("app", "20-app.yaml")
            ]
        );
        assert_eq!(c.hooks[1].on_failure, OnFailure::Abort);
        assert_eq!(c.hooks[2].timeout, Duration::from_millis(500));
        assert_eq!(c.hooks[0].env["MODE"], "fast and safe");
        assert_eq!(c.origin.files.len(), 4);
        assert_eq!(c.freeze.exclude_fstypes, ["vfat"]);

        for rel in ["good/minimal.yaml", "good/vsock.yaml"] {
            let text = std::fs::read_to_string(fixture(rel)).unwrap();
            parse(&text.replace("@DIR@", "/q")).unwrap();
        }
    }

    /// The bad fixtures whose error needs no file: `Config::parse` finds it at the same place
    /// as the built binary does (tests/config.rs).
    #[test]
    fn the_bad_fixtures_are_refused_by_parse_alone() {
        for (rel, place) in [
            ("bad/malformed.yaml", "4:4"),
            ("bad/wrong-type.yaml", "4:12"),
            ("bad/unknown-key.yaml", "4:3"),
            ("bad/duration-no-unit.yaml", "7:14"),
            ("bad/relative-hook.yaml", "6:5"),
            ("bad/auth-none-public.yaml", "3:3"),
            ("bad/listen-hostname.yaml", "1:1"),
            ("bad/reserved-env.yaml", "9:7"),
        ] {
            let text = std::fs::read_to_string(fixture(rel)).unwrap();
            let e = errors(&text.replace("@DIR@", "/q"));
            assert_eq!(e.len(), 1, "{rel}: {e:#?}");
            assert!(e[0].starts_with(&format!("{place}: ")), "{rel}: {e:#?}");
        }
    }

    #[test]
    fn tagged_nodes() {
        // serde_yaml reads a tag on a struct or a list as no tag.
        let c = parse("hooks: !t\n  - !m {name: a, pre: !s [/a], timeout: !d 5s}\n").unwrap();
        assert_eq!(c.hooks[0].timeout, Duration::from_secs(5));
        let e = one_error("hooks:\n  !---\n- name: other\n   R@/hooks/ok.sh]\n");
        assert!(
            e.starts_with("3:3: hook other R@/hooks/ok.sh] has neither pre nor post"),
            "{e}"
        );
    }

    /// Never a panic, whatever the text (the fuzz target does the same at scale).
    #[test]
    fn mutated_texts_never_panic() {
        let seeds = [
            include_str!("../../config.example.yaml"),
            PG,
            "hooks:\n  - {name: a, pre: [/bin/sh], env: {A: b}, timeout: 5s, on_failure: abort}\n",
            "listen: vsock:7380\nauth: {mode: none}\nfreeze: {include_mounts: [/a], exclude_fstypes: [x]}\n",
            "a: &x [*x]\n",
            "{[a]: b, ? c : d, !t e: f}\n",
            // Found by the fuzzer (a tagged sequence under `hooks`).
            "hooks:\n  !---\n- name: other\n   R@/hooks/ok.sh]\n",
            "hooks: !t\n  - !m {name: a, pre: !s [/a]}\n",
        ];
        let alphabet: &[&str] = &[
            "\n",
            " ",
            "  ",
            ":",
            "- ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "\"",
            "'",
            "#",
            "&a ",
            "*a",
            "!",
            "?",
            "|",
            ">",
            "\\",
            "\0",
            "é",
            "~",
            "hooks",
            "name",
            "pre",
            "env",
            "0s",
            "10",
            "---\n",
            "...\n",
            "<<: ",
            "\t",
            "%YAML 1.2\n",
            "QUIESCE_X",
            "/",
            "\u{feff}",
        ];
        // xorshift: reproducible without a dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..4000 {
            let seed = seeds[round % seeds.len()];
            let mut text: Vec<char> = seed.chars().collect();
            for _ in 0..(1 + next() % 6) {
                let at = (next() as usize) % (text.len() + 1);
                match next() % 3 {
                    0 if !text.is_empty() => {
                        let end = (at + 1 + (next() as usize) % 8).min(text.len());
                        text.drain(at.min(end)..end);
                    }
                    _ => {
                        let piece = alphabet[(next() as usize) % alphabet.len()];
                        for (k, c) in piece.chars().enumerate() {
                            text.insert(at + k, c);
                        }
                    }
                }
            }
            let text: String = text.into_iter().collect();
            let _ = parse(&text);
        }
    }
}
