//! qemu-ga's `fsfreeze-hook.d`, as qemu's shipped dispatcher (`scripts/qemu-guest-agent/
//! fsfreeze-hook`) runs it: every name of the folder that `"$FSFREEZE_D"/*` yields (hidden names
//! left out), minus the backup and package-manager leftovers its `is_ignored_file` skips, minus
//! what is not executable (`[ -x "$file" ] || continue`), each with `freeze` before the freeze
//! and `thaw` after. The dispatcher ignores a script's exit status, so a failure here is
//! `on_failure: continue`; it has no timeout, so the hooks get quiesce's default. Deliberate
//! differences: the thaws run in reverse order (the dispatcher runs them in the same order), and
//! every script whose `freeze` ran gets its `thaw`, also when the freeze failed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{list_dir, Ctx, Found};
use crate::config::files::{self, Kind};
use crate::config::{Hook, OnFailure};

/// The dispatcher's `is_ignored_file` patterns (all suffixes of the name).
pub const IGNORED_SUFFIXES: [&str; 14] = [
    "~",
    ".bak",
    ".orig",
    ".rpmnew",
    ".rpmorig",
    ".rpmsave",
    ".sample",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-tmp",
    ".dpkg-dist",
    ".dpkg-bak",
    ".dpkg-backup",
    ".dpkg-remove",
];

pub(super) fn import(ctx: &Ctx<'_>, dir: &Path, found: &mut Found) {
    let Some(names) = list_dir(ctx, dir, found) else {
        return;
    };
    let mut note = ctx.note(dir, "");
    let mut hooks = Vec::new();
    for raw in names {
        // A glob's `*` does not match a leading dot.
        if raw.first() == Some(&b'.') {
            continue;
        }
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if let Some(suffix) = IGNORED_SUFFIXES
            .iter()
            .find(|s| raw.ends_with(s.as_bytes()))
        {
            note.skipped.push((
                shown,
                format!("a *{suffix} file, which qemu's dispatcher skips"),
            ));
            continue;
        }
        let path = dir.join(OsStr::from_bytes(&raw));
        match files::follow(ctx.fs, &path) {
            Some(st) if st.kind == Kind::File && st.mode & 0o111 != 0 => {}
            Some(st) if st.kind == Kind::Dir => {
                note.skipped.push((shown, "a directory".into()));
                continue;
            }
            Some(st) if st.kind == Kind::File => {
                note.skipped.push((
                    shown,
                    format!(
                        "not executable (mode {:04o}), which qemu's dispatcher skips",
                        st.mode
                    ),
                ));
                continue;
            }
            Some(_) => {
                note.skipped.push((shown, "not a regular file".into()));
                continue;
            }
            None => {
                note.skipped.push((
                    shown,
                    "a dangling symlink, which qemu's dispatcher skips".into(),
                ));
                continue;
            }
        }
        let Some((name, cmd)) = ctx.folder_script(found, "qemu", dir, &raw, &path) else {
            continue;
        };
        hooks.push(Hook {
            name,
            pre: Some(vec![cmd.clone(), "freeze".into()]),
            post: Some(vec![cmd, "thaw".into()]),
            on_failure: OnFailure::Continue,
            source: dir.to_path_buf(),
            ..Hook::default()
        });
    }
    note.outcome = super::count(hooks.len());
    found.hooks.extend(hooks);
    found.notes.push(note);
}
