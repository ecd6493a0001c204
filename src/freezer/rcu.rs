//! RCU grace periods expedited for exactly the freeze.
//!
//! `freeze_super()` takes the superblock's three percpu rw-semaphores in turn, and each
//! `percpu_down_write()` first waits for an RCU grace period (`rcu_sync_enter()`): 10 to 15 ms
//! each on an idle 2-vCPU guest, while every writer of that filesystem already waits. With
//! `/sys/kernel/rcu_expedited` at 1 those waits take microseconds, at the cost of an IPI to
//! every CPU per grace period for as long as the knob is on. The knob is global, so the
//! watchdog sets it only when it reads 0 and normal grace periods are not forced
//! (`/sys/kernel/rcu_normal` reads 0), records that it did in `state_dir` first, and puts it back
//! to 0 as soon as the last FIFREEZE returned (the core says when: [`super::core::Effect`]).
//! The record (kept by [`super::recovery`]) lets start-up recovery and `thaw-all` put it back
//! after a SIGKILL of the watchdog ([`restore`]).
//!
//! A knob someone else set to 1 is never touched. Whatever fails here, the freeze goes on at the
//! normal pace: expediting is a speed-up, never a condition.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::protocol::Rcu;

/// The two sysfs files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// `/sys/kernel/rcu_expedited`.
    pub expedited: PathBuf,
    /// `/sys/kernel/rcu_normal`.
    pub normal: PathBuf,
}

impl Knobs {
    /// The kernel's.
    pub fn system() -> Knobs {
        Knobs {
            expedited: "/sys/kernel/rcu_expedited".into(),
            normal: "/sys/kernel/rcu_normal".into(),
        }
    }
}

/// Reads a sysfs integer (`0\n`, `1\n`).
fn read(path: &Path) -> io::Result<u32> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(32)
        .read_to_string(&mut text)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} reads {:?}", path.display(), text.trim()),
        )
    })
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    // One write(2) of the whole value, as sysfs wants; no O_CREAT: a missing file is an error.
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Expedites RCU grace periods if nobody else did and the kernel lets us; returns what became
/// of them and, when they could not be expedited, why. `record` writes the record that we set
/// the knob, before we set it; `unrecord` removes it if the knob could not be set after all.
pub fn expedite(
    knobs: &Knobs,
    record: impl FnOnce() -> io::Result<()>,
    unrecord: impl FnOnce(),
) -> (Rcu, Option<String>) {
    let unavailable = |why: String| (Rcu::Unavailable, Some(why));
    match read(&knobs.normal) {
        Ok(0) => {}
        // Kernels without the file never force normal grace periods.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Ok(_) => {
            return unavailable(format!(
                "{} is set (normal RCU grace periods are forced on this machine)",
                knobs.normal.display()
            ))
        }
        Err(e) => return unavailable(format!("reading {}: {e}", knobs.normal.display())),
    }
    match read(&knobs.expedited) {
        Ok(0) => {}
        Ok(_) => return (Rcu::AlreadyExpedited, None),
        Err(e) => return unavailable(format!("reading {}: {e}", knobs.expedited.display())),
    }
    // Recorded first: a knob we set is always one that recovery can put back.
    if let Err(e) = record() {
        return unavailable(format!("cannot record it in state_dir: {e}"));
    }
    match write(&knobs.expedited, "1") {
        Ok(()) => (Rcu::Expedited, None),
        Err(e) => {
            unrecord();
            unavailable(format!("writing {}: {e}", knobs.expedited.display()))
        }
    }
}

/// Puts `rcu_expedited` back to 0 after [`expedite`] set it, then removes the record with
/// `unrecord`. On failure the record stays, for recovery.
pub fn relax(knobs: &Knobs, unrecord: impl FnOnce() -> io::Result<()>) -> Result<(), String> {
    write(&knobs.expedited, "0")
        .map_err(|e| format!("writing 0 to {}: {e}", knobs.expedited.display()))?;
    unrecord().map_err(|e| format!("removing its record from state_dir: {e}"))
}

/// After a watchdog that had expedited RCU died: puts the knob back to 0; returns whether it
/// still read 1.
pub fn restore(knobs: &Knobs) -> Result<bool, String> {
    let was_on = read(&knobs.expedited)
        .map_err(|e| format!("reading {}: {e}", knobs.expedited.display()))?
        != 0;
    if was_on {
        write(&knobs.expedited, "0")
            .map_err(|e| format!("writing 0 to {}: {e}", knobs.expedited.display()))?;
    }
    Ok(was_on)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Knobs in a temporary folder (the real ones are global).
    fn setup(expedited: &str, normal: Option<&str>) -> (tempfile::TempDir, Knobs) {
        let dir = tempfile::tempdir().unwrap();
        let knobs = Knobs {
            expedited: dir.path().join("rcu_expedited"),
            normal: dir.path().join("rcu_normal"),
        };
        std::fs::write(&knobs.expedited, expedited).unwrap();
        if let Some(n) = normal {
            std::fs::write(&knobs.normal, n).unwrap();
        }
        (dir, knobs)
    }

    /// The knob's value (a plain file keeps the newline a real sysfs file would not).
    fn knob(k: &Knobs) -> String {
        std::fs::read_to_string(&k.expedited)
            .unwrap()
            .trim()
            .to_string()
    }

    /// Expedites with a record kept in `recorded`.
    fn expedite_recorded(k: &Knobs, recorded: &Cell<bool>) -> (Rcu, Option<String>) {
        expedite(
            k,
            || {
                recorded.set(true);
                Ok(())
            },
            || recorded.set(false),
        )
    }

    #[test]
    fn expedited_with_a_record_then_relaxed_and_the_record_removed() {
        let (_d, k) = setup("0\n", Some("0\n"));
        let recorded = Cell::new(false);
        assert_eq!(expedite_recorded(&k, &recorded), (Rcu::Expedited, None));
        assert_eq!(knob(&k), "1");
        assert!(recorded.get());
        relax(&k, || {
            recorded.set(false);
            Ok(())
        })
        .unwrap();
        assert_eq!(knob(&k), "0");
        assert!(!recorded.get());
    }

    #[test]
    fn someone_elses_setting_is_never_touched() {
        let (_d, k) = setup("1\n", Some("0\n"));
        let recorded = Cell::new(false);
        assert_eq!(
            expedite_recorded(&k, &recorded),
            (Rcu::AlreadyExpedited, None)
        );
        assert_eq!(knob(&k), "1");
        assert!(!recorded.get());
    }

    #[test]
    fn forced_normal_grace_periods_are_respected() {
        let (_d, k) = setup("0\n", Some("1\n"));
        let recorded = Cell::new(false);
        let (rcu, why) = expedite_recorded(&k, &recorded);
        assert_eq!(rcu, Rcu::Unavailable);
        assert!(why.unwrap().contains("rcu_normal is set"));
        assert_eq!(knob(&k), "0");
        assert!(!recorded.get());
    }

    #[test]
    fn a_kernel_without_rcu_normal_is_fine_and_one_without_the_knob_is_unavailable() {
        let (_d, k) = setup("0\n", None);
        let recorded = Cell::new(false);
        assert_eq!(expedite_recorded(&k, &recorded).0, Rcu::Expedited);
        relax(&k, || Ok(())).unwrap();
        std::fs::remove_file(&k.expedited).unwrap();
        recorded.set(false);
        let (rcu, why) = expedite_recorded(&k, &recorded);
        assert_eq!(rcu, Rcu::Unavailable);
        assert!(why.unwrap().contains("rcu_expedited"));
        assert!(!recorded.get());
    }

    #[test]
    fn an_unrecordable_expedite_does_not_touch_the_knob() {
        let (_d, k) = setup("0\n", Some("0\n"));
        let (rcu, why) = expedite(&k, || Err(io::Error::other("no space left")), || {});
        assert_eq!(rcu, Rcu::Unavailable);
        assert!(why.unwrap().contains("state_dir"));
        assert_eq!(knob(&k), "0");
    }

    #[test]
    fn a_knob_that_cannot_be_written_is_unrecorded_again() {
        // A directory where the knob should be: it reads as an error, before any record.
        let (d, mut k) = setup("0\n", Some("0\n"));
        let recorded = Cell::new(false);
        k.expedited = d.path().join("missing");
        assert_eq!(expedite_recorded(&k, &recorded).0, Rcu::Unavailable);
        assert!(!recorded.get());
    }

    #[test]
    fn restore_puts_the_knob_back_and_is_idempotent() {
        let (_d, k) = setup("0\n", Some("0\n"));
        assert_eq!(expedite(&k, || Ok(()), || {}).0, Rcu::Expedited);
        // The watchdog is SIGKILLed here: the knob stays 1.
        assert_eq!(restore(&k), Ok(true));
        assert_eq!(knob(&k), "0");
        assert_eq!(restore(&k), Ok(false), "someone put it back already");
        assert_eq!(knob(&k), "0");
    }
}
