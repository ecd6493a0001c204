//! The rules a parsed config must follow, each error at the place of the setting.
//!
//! [`settings`] and [`hooks`] look at the text only; [`hook_commands`] and [`key_file`] look
//! at the files named, through [`Inspect`].

use std::collections::HashMap;
use std::path::Path;

use super::files::{self, Inspect, Problem};
use super::locate::{Source, Step, Step::Index, Step::Key};
use super::{AuthMode, Config, ConfigError, Hook, Listen, QgaPath};

/// Prefix of the variables quiesce gives every hook; `env` may not set them.
pub const RESERVED_ENV_PREFIX: &str = "QUIESCE_";

/// `listen`, `auth`, `state_dir` and `freeze` of the main file.
pub fn settings(c: &Config, src: &Source) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let listen = Listen::parse(&c.listen);
    if let Err(e) = &listen {
        errors.push(src.error(&[Key("listen")], format!("listen: {e}")));
    }
    match c.auth.mode {
        AuthMode::None => {
            let unix = matches!(&listen, Ok(l) if l.is_unix());
            if listen.is_ok() && !unix {
                errors.push(src.error(
                    &[Key("auth"), Key("mode")],
                    format!(
                        "auth.mode none is refused unless listen is a unix socket (unix:PATH, root's \
                         peers only), and listen is {}: any local user could freeze the filesystems; \
                         use auth.mode hmac with a key_file, or listen on unix:/run/quiesce/api.sock",
                        c.listen
                    ),
                ));
            }
        }
        AuthMode::Hmac => {
            if !c.auth.key_file.is_absolute() {
                errors.push(src.error(
                    &[Key("auth"), Key("key_file")],
                    format!(
                        "auth.key_file {} is not an absolute path: write the full path, such as /etc/quiesce/host.key",
                        c.auth.key_file.display()
                    ),
                ));
            }
        }
    }
    if !c.state_dir.is_absolute() {
        errors.push(src.error(
            &[Key("state_dir")],
            format!(
                "state_dir {} is not an absolute path",
                c.state_dir.display()
            ),
        ));
    }
    let f = &c.freeze;
    if f.max_timeout > super::MAX_TIMEOUT_CEILING {
        errors.push(src.error(
            &[Key("freeze"), Key("max_timeout")],
            format!(
                "freeze.max_timeout ({}) is above the ceiling of 1h: no snapshot needs its \
                 filesystems frozen longer",
                crate::duration::format(f.max_timeout)
            ),
        ));
    }
    for (i, prefix) in c.callbacks.allow.iter().enumerate() {
        if let Err(e) = crate::callbacks::check_allow_prefix(prefix) {
            errors.push(src.error(
                &[Key("callbacks"), Key("allow"), Index(i)],
                format!("callbacks.allow: {prefix:?}: {e}"),
            ));
        }
    }
    let timeout = [Key("freeze"), Key("timeout")];
    if f.timeout.is_zero() {
        errors.push(src.error(&timeout, "freeze.timeout must be above 0"));
    } else if f.timeout > f.max_timeout {
        errors.push(src.error(
            &timeout,
            format!(
                "freeze.timeout ({}) is above freeze.max_timeout ({})",
                crate::duration::format(f.timeout),
                crate::duration::format(f.max_timeout)
            ),
        ));
    }
    for (key, list) in [
        ("include_mounts", &f.include_mounts),
        ("exclude_mounts", &f.exclude_mounts),
    ] {
        for (i, p) in list.iter().enumerate() {
            if !p.is_absolute() {
                errors.push(src.error(
                    &[Key("freeze"), Key(key), Index(i)],
                    format!("freeze.{key}: {} is not an absolute path", p.display()),
                ));
            }
        }
    }
    for (i, t) in f.exclude_fstypes.iter().enumerate() {
        if t.trim().is_empty() {
            errors.push(src.error(
                &[Key("freeze"), Key("exclude_fstypes"), Index(i)],
                "freeze.exclude_fstypes: an entry is empty",
            ));
        }
    }
    errors
}

/// The `qga` section: its paths, and a deadline within `freeze.max_timeout`.
pub fn qga(c: &Config, src: &Source) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let q = &c.qga;
    if let Err(e) = QgaPath::parse(&q.path) {
        errors.push(src.error(&[Key("qga"), Key("path")], format!("qga.path: {e}")));
    }
    if !q.forward.is_empty() {
        match q.forward.strip_prefix("unix:").map(Path::new) {
            Some(p) if p.is_absolute() => {
                if QgaPath::parse(&q.path) == Ok(QgaPath::Unix(p.to_path_buf())) {
                    errors.push(src.error(
                        &[Key("qga"), Key("forward")],
                        "qga.forward names qga.path itself: give the unix socket of a qemu-ga",
                    ));
                }
            }
            _ => errors.push(src.error(
                &[Key("qga"), Key("forward")],
                format!(
                    "qga.forward {:?} must be unix:PATH with an absolute PATH (the socket of `qemu-ga -m unix-listen -p PATH`), or \"\" for none",
                    q.forward
                ),
            )),
        }
    }
    let at = [Key("qga"), Key("freeze_timeout")];
    let Some(timeout) = q.freeze_timeout else {
        return errors;
    };
    if timeout.is_zero() {
        errors.push(src.error(&at, "qga.freeze_timeout must be above 0"));
    } else if timeout > c.freeze.max_timeout {
        errors.push(src.error(
            &at,
            format!(
                "qga.freeze_timeout ({}) is above freeze.max_timeout ({})",
                crate::duration::format(timeout),
                crate::duration::format(c.freeze.max_timeout)
            ),
        ));
    }
    errors
}

/// A hook with the file it was read from and its index in that file's `hooks`.
pub struct HookAt<'a> {
    pub hook: &'a Hook,
    pub src: &'a Source,
    pub index: usize,
}

impl HookAt<'_> {
    fn error(&self, rest: &[Step<'_>], message: impl Into<String>) -> ConfigError {
        let mut path = vec![Key("hooks"), Index(self.index)];
        path.extend_from_slice(rest);
        self.src.error(&path, message)
    }

    /// `hook NAME`, or `hook #N` (1-based, in its file) when the name is empty.
    fn label(&self) -> String {
        if self.hook.name.is_empty() {
            format!("hook #{}", self.index + 1)
        } else {
            format!("hook {}", self.hook.name)
        }
    }

    fn phases(&self) -> impl Iterator<Item = (&'static str, &[String])> {
        [("pre", &self.hook.pre), ("post", &self.hook.post)]
            .into_iter()
            .filter_map(|(phase, argv)| argv.as_deref().map(|a| (phase, a)))
    }
}

/// The rules of each hook that need no file: names (unique across all files), the commands'
/// shape, the timeout and `env`.
pub fn hooks(all: &[HookAt<'_>]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut seen: HashMap<&str, ConfigError> = HashMap::new();
    for h in all {
        let hook = h.hook;
        let label = h.label();
        if hook.name.is_empty() {
            errors.push(h.error(
                &[Key("name")],
                format!("{label} has an empty name: give each hook a unique name"),
            ));
        } else if hook.name.chars().any(char::is_control) {
            errors.push(h.error(
                &[Key("name")],
                format!(
                    "hook {:?}: the name contains a control character",
                    hook.name
                ),
            ));
        } else {
            let here = h.error(&[Key("name")], "");
            match seen.get(hook.name.as_str()) {
                Some(first) => errors.push(ConfigError {
                    message: format!(
                        "{label}: the name is already used by the hook at {}:{}:{}: hook names must be unique",
                        first.file.display(),
                        first.line,
                        first.column
                    ),
                    ..here
                }),
                None => {
                    seen.insert(&hook.name, here);
                }
            }
        }
        if hook.pre.is_none() && hook.post.is_none() {
            errors.push(h.error(
                &[],
                format!("{label} has neither pre nor post: give it a pre command, a post command or both"),
            ));
        }
        for (phase, argv) in h.phases() {
            match argv.first() {
                None => errors.push(h.error(
                    &[Key(phase)],
                    format!(
                        "{label}: {phase} is empty: give the command and its arguments, e.g. [/etc/quiesce/hooks/{}.sh, {phase}]",
                        if hook.name.is_empty() { "app" } else { &hook.name }
                    ),
                )),
                Some(cmd) if cmd.is_empty() => errors.push(h.error(
                    &[Key(phase)],
                    format!("{label}: {phase} has an empty command: write its absolute path"),
                )),
                Some(cmd) if !cmd.contains('\0') && !Path::new(cmd).is_absolute() => {
                    errors.push(h.error(
                        &[Key(phase)],
                        Problem::NotAbsolute.message(
                            &format!("{label}: {phase} {cmd}"),
                            Path::new(cmd),
                            None,
                        ),
                    ))
                }
                Some(_) => {}
            }
            for (i, arg) in argv.iter().enumerate() {
                if arg.contains('\0') {
                    errors.push(h.error(
                        &[Key(phase), Index(i)],
                        format!("{label}: {phase} argument {i} contains a NUL character"),
                    ));
                }
            }
        }
        if hook.timeout.is_zero() {
            errors.push(h.error(
                &[Key("timeout")],
                format!("{label}: timeout must be above 0"),
            ));
        } else if hook.timeout > super::MAX_TIMEOUT_CEILING {
            errors.push(h.error(
                &[Key("timeout")],
                format!(
                    "{label}: timeout ({}) is above the ceiling of 1h",
                    crate::duration::format(hook.timeout)
                ),
            ));
        }
        for (key, value) in &hook.env {
            let at = [Key("env"), Key(key)];
            if key.is_empty() {
                errors.push(h.error(&at, format!("{label}: env has an empty variable name")));
            } else if key.contains('=') || key.contains('\0') {
                errors.push(h.error(
                    &at,
                    format!("{label}: env variable name {key:?} may not contain '=' or NUL"),
                ));
            } else if key.starts_with(RESERVED_ENV_PREFIX) {
                errors.push(h.error(
                    &at,
                    format!(
                        "{label}: env {key} is reserved: quiesce sets the {RESERVED_ENV_PREFIX}* variables itself"
                    ),
                ));
            }
            if value.contains('\0') {
                errors.push(h.error(
                    &at,
                    format!("{label}: env {key:?} has a value that contains a NUL character"),
                ));
            }
        }
    }
    errors
}

/// Each hook command (argv[0]) must be a root-owned executable regular file, not writable by
/// group or others, in trustworthy directories (see [`files`]). Commands that [`hooks`] already
/// refuses (empty, relative, with NUL) are not looked at.
pub fn hook_commands(all: &[HookAt<'_>], fs: &dyn Inspect) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for h in all {
        let label = h.label();
        for (phase, argv) in h.phases() {
            let Some(cmd) = argv.first() else { continue };
            let written = Path::new(cmd);
            if cmd.contains('\0') || !written.is_absolute() {
                continue;
            }
            let checked = files::check_command(fs, written);
            let subject = format!("{label}: {phase} {cmd}");
            for p in &checked.problems {
                errors.push(h.error(
                    &[Key(phase)],
                    p.message(&subject, written, checked.real.as_deref()),
                ));
            }
        }
    }
    errors
}

/// The HMAC key file, when `auth.mode` is hmac (errors at the place of `auth.key_file`).
pub fn key_file(c: &Config, fs: &dyn Inspect) -> Vec<ConfigError> {
    if c.auth.mode != AuthMode::Hmac || !c.auth.key_file.is_absolute() {
        return Vec::new();
    }
    let path = &c.auth.key_file;
    let checked = files::check_key(fs, path);
    let subject = format!("auth.key_file {}", path.display());
    let (line, column) = c.origin.key_file_at;
    checked
        .problems
        .iter()
        .map(|p| ConfigError {
            file: c.origin.main.clone(),
            line,
            column,
            message: match p {
                Problem::Missing { path: missing } => format!(
                    "{subject}{} does not exist: put the key shared with the host there \
                     (at least {} bytes, owned by root, mode 0600) or correct auth.key_file",
                    if missing == path {
                        String::new()
                    } else {
                        format!(": {}", missing.display())
                    },
                    files::MIN_KEY_LEN
                ),
                p => p.message(&subject, path, checked.real.as_deref()),
            },
        })
        .collect()
}
