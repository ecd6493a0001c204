//! Azure Backup's pre-script and post-script framework: `VMSnapshotScriptPluginConfig.json`, read
//! as the VMSnapshotLinux extension reads it (Azure/azure-linux-extensions,
//! `VMBackup/main/ScriptRunner.py` `get_config` and `validate_scripts`, `PluginHost.py`
//! `load_modules`; the sample `MicrosoftAzureBackup/VMSnapshotPluginConfig`).
//!
//! One hook, `azure:PLUGINNAME` (`pluginName`, `ScriptRunner` in the sample): its pre is
//! `sh preScriptLocation preScriptParams...` and its post `sh postScriptLocation
//! postScriptParams...`, as `ScriptRunner` builds them; `timeoutInSeconds` (default 10, at most
//! 1800, as there) per run; `continueBackupOnFailure` (default true) is `on_failure: continue`,
//! false `abort`; `preScriptNoOfRetries`/`postScriptNoOfRetries` are retried for real (Azure's
//! loop counts but never starts the script again); `fsFreezeEnabled: false` turns freezing off.
//! `pluginName`, `appName` (telemetry there), `ScriptsExecutionPollTimeSeconds` (the poll period
//! there; quiesce waits for the exit instead) and `timeout` (read by old versions, ignored by the
//! current one) are accepted; any other field is an error at its line and column.
//!
//! Azure's own permission rules hold on top of quiesce's: the config owned by root with no
//! permission for group or others and not executable (`PluginHost.load_modules`), each script
//! owned by root with no permission for group or others (`ScriptRunner.validate_permissions`).
//! Both scripts must exist (`validate_scripts` refuses the backup otherwise).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{exists, Ctx, Found};
use crate::config::files::{self, Imported};
use crate::config::{ConfigError, Hook, OnFailure};

/// `ScriptRunner`'s timeout when the config has none, in seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 10;
/// `PluginHost`'s ceiling on `timeoutInSeconds`.
pub const MAX_TIMEOUT_S: u64 = 1800;
/// The most retries quiesce runs (a bound on how long a pre hook can hold a snapshot).
pub const MAX_RETRIES: u32 = 10;
/// The shell Azure runs the scripts with (`sh`, from its PATH).
pub const SH: &str = "/bin/sh";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginConfig {
    #[serde(rename = "pluginName", default)]
    plugin_name: Option<String>,
    #[serde(rename = "appName", default)]
    _app_name: Option<de::IgnoredAny>,
    #[serde(rename = "preScriptLocation")]
    pre_location: String,
    #[serde(rename = "postScriptLocation")]
    post_location: String,
    #[serde(rename = "preScriptParams", default)]
    pre_params: Vec<Param>,
    #[serde(rename = "postScriptParams", default)]
    post_params: Vec<Param>,
    #[serde(rename = "preScriptNoOfRetries", default)]
    pre_retries: u32,
    #[serde(rename = "postScriptNoOfRetries", default)]
    post_retries: u32,
    #[serde(rename = "timeoutInSeconds", default)]
    timeout: Option<u64>,
    #[serde(rename = "continueBackupOnFailure", default = "yes")]
    continue_on_failure: bool,
    #[serde(rename = "fsFreezeEnabled", default = "yes")]
    fs_freeze: bool,
    #[serde(rename = "ScriptsExecutionPollTimeSeconds", default)]
    poll: Option<u64>,
    #[serde(rename = "timeout", default)]
    legacy_timeout: Option<de::IgnoredAny>,
}

fn yes() -> bool {
    true
}

/// A script parameter: Azure passes `str(param)`; strings and integers are taken.
#[derive(Debug)]
struct Param(String);

impl<'de> Deserialize<'de> for Param {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Param, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Param;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (or an integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Param, E> {
                if v.contains('\0') {
                    return Err(E::custom("a parameter contains a NUL character"));
                }
                Ok(Param(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Param, E> {
                Ok(Param(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Param, E> {
                Ok(Param(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn import(ctx: &Ctx<'_>, path: &Path, found: &mut Found) {
    if !exists(ctx.fs, path) {
        found
            .notes
            .push(ctx.note(path, "does not exist: imports nothing"));
        return;
    }
    let checked = files::check_imported(ctx.fs, path, Imported::AzureConfig);
    if !checked.problems.is_empty() {
        let subject = format!("Azure's script config {}", path.display());
        for p in &checked.problems {
            found
                .errors
                .push(ctx.error(p.message(&subject, path, checked.real.as_deref())));
        }
        return;
    }
    let text = match ctx.fs.read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            found
                .errors
                .push(ctx.error(format!("cannot read {}: {e}", path.display())));
            return;
        }
    };
    found.files.push(path.to_path_buf());
    let json = Json {
        file: path,
        text: &text,
    };
    let c: PluginConfig = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            found.errors.push(json.serde_error(&e));
            return;
        }
    };
    let mut errors = Vec::new();
    let plugin = c.plugin_name.as_deref().unwrap_or("ScriptRunner");
    if plugin.is_empty() || plugin.chars().any(char::is_control) {
        errors.push(json.at(
            "pluginName",
            format!(
                "pluginName {plugin:?} cannot name a hook: leave it ScriptRunner, as Azure asks"
            ),
        ));
    }
    let timeout_s = c.timeout.unwrap_or(DEFAULT_TIMEOUT_S);
    if timeout_s == 0 {
        errors.push(json.at(
            "timeoutInSeconds",
            "timeoutInSeconds must be above 0 (Azure's maximum is 1800)",
        ));
    }
    for (key, n) in [
        ("preScriptNoOfRetries", c.pre_retries),
        ("postScriptNoOfRetries", c.post_retries),
    ] {
        if n > MAX_RETRIES {
            errors.push(json.at(
                key,
                format!("{key} is {n}: quiesce retries at most {MAX_RETRIES} times"),
            ));
        }
    }
    for (key, loc) in [
        ("preScriptLocation", &c.pre_location),
        ("postScriptLocation", &c.post_location),
    ] {
        let p = Path::new(loc);
        if loc.is_empty() {
            errors.push(json.at(
                key,
                format!("{key} is empty: give the full path of the script (Azure refuses the backup without it)"),
            ));
        } else if loc.contains('\0') || !p.is_absolute() {
            errors.push(json.at(
                key,
                format!(
                    "{key} {loc:?} is not an absolute path: write the full path, starting with /"
                ),
            ));
        } else {
            let checked = files::check_imported(ctx.fs, p, Imported::ShScript);
            let subject = format!("{key} {loc}");
            for pr in &checked.problems {
                errors.push(json.at(key, pr.message(&subject, p, checked.real.as_deref())));
            }
        }
    }
    // The interpreter is run as root too: the rules of hook commands.
    errors.extend(
        ctx.check_command(
            &format!("the shell for Azure's scripts {SH}"),
            Path::new(SH),
        )
        .into_iter()
        .map(|m| ctx.error(m)),
    );
    if !errors.is_empty() {
        found.errors.extend(errors);
        return;
    }
    let mut note = ctx.note(path, "1 hook");
    let timeout_s = if timeout_s > MAX_TIMEOUT_S {
        note.remarks.push(format!(
            "timeoutInSeconds {timeout_s} is cut to {MAX_TIMEOUT_S}, as Azure cuts it"
        ));
        MAX_TIMEOUT_S
    } else {
        timeout_s
    };
    if c.poll.is_some() {
        note.remarks.push(
            "ScriptsExecutionPollTimeSeconds is ignored: quiesce waits for the script's exit"
                .into(),
        );
    }
    if c.legacy_timeout.is_some() {
        note.remarks.push(
            "timeout is ignored, as today's VMSnapshotLinux ignores it: timeoutInSeconds is the one read".into(),
        );
    }
    if !c.fs_freeze {
        found.freeze_off_by = Some(format!("fsFreezeEnabled is false in {}", path.display()));
        note.remarks.push(
            "fsFreezeEnabled is false: snapshots freeze nothing (crash-consistent at best)".into(),
        );
    }
    let argv = |loc: &str, params: &[Param]| {
        let mut v = vec![SH.to_owned(), loc.to_owned()];
        v.extend(params.iter().map(|p| p.0.clone()));
        v
    };
    found.hooks.push(Hook {
        name: format!("azure:{plugin}"),
        pre: Some(argv(&c.pre_location, &c.pre_params)),
        post: Some(argv(&c.post_location, &c.post_params)),
        timeout: Duration::from_secs(timeout_s),
        on_failure: if c.continue_on_failure {
            OnFailure::Continue
        } else {
            OnFailure::Abort
        },
        pre_retries: c.pre_retries,
        post_retries: c.post_retries,
        source: PathBuf::from(path),
        ..Hook::default()
    });
    found.notes.push(note);
}

/// The JSON text, for errors at their line and column.
struct Json<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Json<'_> {
    /// An error at the top-level `"key"` (1:1 when it is not written).
    fn at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = key_place(self.text, key).unwrap_or((1, 1));
        self.error(line, column, message)
    }

    fn error(&self, line: usize, column: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// serde_json's error at its place, its own " at line L column C" dropped.
    fn serde_error(&self, e: &serde_json::Error) -> ConfigError {
        let mut message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        if let Some(at) = message.find(&suffix) {
            message.replace_range(at..at + suffix.len(), "");
        }
        // An unknown field is shown at its key, not at the key's end where serde_json is.
        let key = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next());
        if let Some((line, column)) = key.and_then(|k| key_place(self.text, k)) {
            return self.error(line, column, message);
        }
        self.error(e.line().max(1), e.column().max(1), message)
    }
}

/// Line and column (1-based, in characters) of `"key"` followed by `:`.
fn key_place(text: &str, key: &str) -> Option<(usize, usize)> {
    let quoted = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = text[from..].find(&quoted) {
        let at = from + i;
        let rest = text[at + quoted.len()..].trim_start();
        if rest.starts_with(':') {
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Some((line, column));
        }
        from = at + quoted.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::key_place;

    #[test]
    fn places_of_keys() {
        let t = "{\n  \"a\" : 1,\n\t\"pre\": \"x\", \"b\":\"pre\"\n}";
        assert_eq!(key_place(t, "a"), Some((2, 3)));
        assert_eq!(key_place(t, "pre"), Some((3, 2)));
        assert_eq!(key_place(t, "b"), Some((3, 14)));
        assert_eq!(key_place(t, "c"), None);
    }
}
