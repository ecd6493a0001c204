//! VMware Tools' `backupScripts.d`, as open-vm-tools runs it (`services/plugins/vmbackup/
//! scriptOps.c`, `VmBackup_NewScriptOp` and `VmBackupRunNextScript`): the regular files directly
//! in the folder (`File_ListDirectory`, then `File_IsFile`: symlinks followed, no recursion,
//! hidden names included), sorted with `strcmp`, each run with `freeze` in that order; after the
//! freeze, `thaw` in reverse order, or `freezeFail` in reverse when the quiesce failed
//! (`VMBACKUP_MSTATE_SYNC_ERROR`). A failing `freeze` script fails the quiesce there
//! (`VMBACKUP_STATUS_ERROR`): `on_failure: abort`. open-vm-tools gives a script no timeout of its
//! own (the host's quiesce timeout covers the whole), so the hooks get quiesce's default.
//!
//! The legacy `/usr/sbin/pre-freeze-script` and `/usr/sbin/post-thaw-script` are still run by
//! the current source (`LEGACY_FREEZE_SCRIPT`, `LEGACY_THAW_SCRIPT`): when either exists they
//! take the first place, the freeze script getting `freeze` and the thaw script `thaw` or
//! `freezeFail`. They are imported the same way, as one hook `vmware:/usr/sbin/pre-freeze-script`
//! (named after the thaw script when only that one exists).
//!
//! Deliberate difference: open-vm-tools runs `freezeFail` only for the scripts before the one
//! whose `freeze` failed; here that one gets its post too (a post for every pre that ran).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{list_dir, Ctx, Found};
use crate::config::files::{self, Kind};
use crate::config::{Hook, OnFailure};

/// open-vm-tools' legacy freeze script, in its folder.
pub const LEGACY_FREEZE: &str = "pre-freeze-script";
/// open-vm-tools' legacy thaw script, in its folder.
pub const LEGACY_THAW: &str = "post-thaw-script";

pub(super) fn import(ctx: &Ctx<'_>, dir: &Path, legacy_dir: &Path, found: &mut Found) {
    let mut hooks = Vec::new();
    let mut remarks = Vec::new();
    let is_file = |p: &Path| matches!(files::follow(ctx.fs, p), Some(st) if st.kind == Kind::File);
    let freeze = legacy_dir.join(LEGACY_FREEZE);
    let thaw = legacy_dir.join(LEGACY_THAW);
    let (has_freeze, has_thaw) = (is_file(&freeze), is_file(&thaw));
    if has_freeze || has_thaw {
        let first = if has_freeze { &freeze } else { &thaw };
        let name = format!("vmware:{}", first.display());
        let mut ok = true;
        for (present, path) in [(has_freeze, &freeze), (has_thaw, &thaw)] {
            if !present {
                continue;
            }
            let problems = ctx.check_command(&format!("{name} ({})", path.display()), path);
            ok &= problems.is_empty();
            found
                .errors
                .extend(problems.into_iter().map(|m| ctx.error(m)));
        }
        if ok {
            let argv = |p: &Path, arg: &str| vec![p.to_string_lossy().into_owned(), arg.into()];
            hooks.push(Hook {
                name,
                pre: has_freeze.then(|| argv(&freeze, "freeze")),
                post: has_thaw.then(|| argv(&thaw, "thaw")),
                post_if_freeze_failed: has_thaw.then(|| argv(&thaw, "freezeFail")),
                on_failure: OnFailure::Abort,
                source: legacy_dir.to_path_buf(),
                ..Hook::default()
            });
        }
        remarks.push(format!(
            "open-vm-tools' legacy scripts, run first: {}",
            [(has_freeze, &freeze), (has_thaw, &thaw)]
                .iter()
                .filter(|(p, _)| *p)
                .map(|(_, f)| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let Some(names) = list_dir(ctx, dir, found) else {
        // The legacy scripts run without the folder too.
        if let Some(n) = found.notes.last_mut() {
            if n.key == ctx.key && !hooks.is_empty() {
                n.outcome = format!("does not exist; {}", super::count(hooks.len()));
            }
            n.remarks = remarks;
        }
        found.hooks.extend(hooks);
        return;
    };
    let mut note = ctx.note(dir, "");
    note.remarks = remarks;
    for raw in names {
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let path = dir.join(OsStr::from_bytes(&raw));
        match files::follow(ctx.fs, &path) {
            Some(st) if st.kind == Kind::File => {}
            Some(st) if st.kind == Kind::Dir => {
                note.skipped
                    .push((shown, "a directory (open-vm-tools does not recurse)".into()));
                continue;
            }
            Some(_) => {
                note.skipped.push((shown, "not a regular file".into()));
                continue;
            }
            None => {
                note.skipped.push((shown, "a dangling symlink".into()));
                continue;
            }
        }
        let Some((name, cmd)) = ctx.folder_script(found, "vmware", dir, &raw, &path) else {
            continue;
        };
        hooks.push(Hook {
            name,
            pre: Some(vec![cmd.clone(), "freeze".into()]),
            post: Some(vec![cmd.clone(), "thaw".into()]),
            post_if_freeze_failed: Some(vec![cmd, "freezeFail".into()]),
            on_failure: OnFailure::Abort,
            source: dir.to_path_buf(),
            ..Hook::default()
        });
    }
    note.outcome = super::count(hooks.len());
    found.hooks.extend(hooks);
    found.notes.push(note);
}
