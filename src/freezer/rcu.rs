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
//! The record lets start-up recovery and `thaw-all` put it back after a SIGKILL of the watchdog.
//!
//! A knob someone else set to 1 is never touched. Whatever fails here, the freeze goes on at the
//! normal pace: expediting is a speed-up, never a condition.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use super::protocol::Rcu;
use super::recovery::{Records, Recovery};

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

/// Reads a sysfs integer (`0\n`, `1\n`); a file that does not exist reads as 0 for
/// `rcu_normal` (kernels without it never force normal grace periods).
fn read(path: &std::path::Path) -> io::Result<u32> {
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

fn write(path: &std::path::Path, value: &str) -> io::Result<()> {
    // One write(2) of the whole value, as sysfs wants; no O_CREAT: a missing file is an error.
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Expedites RCU grace periods if nobody else did and the kernel lets us; returns what became
/// of them and, when they could not be expedited, why. `pid` and `unix_ms` go in the record.
pub fn expedite(knobs: &Knobs, records: &Records, pid: u32, unix_ms: u64) -> (Rcu, Option<String>) {
    let unavailable = |why: String| (Rcu::Unavailable, Some(why));
    match read(&knobs.normal) {
        Ok(0) => {}
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
    if let Err(e) = records.write_rcu(pid, unix_ms) {
        return unavailable(format!("cannot record it in state_dir: {e}"));
    }
    match write(&knobs.expedited, "1") {
        Ok(()) => (Rcu::Expedited, None),
        Err(e) => {
            let _ = records.remove_rcu();
            unavailable(format!("writing {}: {e}", knobs.expedited.display()))
        }
    }
}

/// Puts `rcu_expedited` back to 0 after [`expedite`] set it, then removes the record. On failure
/// the record stays, for recovery.
pub fn relax(knobs: &Knobs, records: &Records) -> Result<(), String> {
    write(&knobs.expedited, "0")
        .map_err(|e| format!("writing 0 to {}: {e}", knobs.expedited.display()))?;
    records
        .remove_rcu()
        .map_err(|e| format!("removing its record from state_dir: {e}"))
}

/// After a watchdog that had expedited RCU died: puts the knob back to 0 and removes the record.
pub fn recover(knobs: &Knobs, records: &Records) -> Recovery {
    let was_on = match read(&knobs.expedited) {
        Ok(v) => v != 0,
        Err(e) => {
            return Recovery::RcuFailed {
                error: format!("reading {}: {e}", knobs.expedited.display()),
            }
        }
    };
    let restored = if was_on {
        write(&knobs.expedited, "0")
            .map_err(|e| format!("writing 0 to {}: {e}", knobs.expedited.display()))
    } else {
        Ok(())
    };
    match restored.and_then(|()| records.remove_rcu().map_err(|e| e.to_string())) {
        Ok(()) => Recovery::RcuRelaxed { was_on },
        Err(error) => Recovery::RcuFailed { error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knobs in a temporary folder (the real ones are global), and records beside them.
    fn setup(expedited: &str, normal: Option<&str>) -> (tempfile::TempDir, Knobs, Records) {
        let dir = tempfile::tempdir().unwrap();
        let knobs = Knobs {
            expedited: dir.path().join("rcu_expedited"),
            normal: dir.path().join("rcu_normal"),
        };
        std::fs::write(&knobs.expedited, expedited).unwrap();
        if let Some(n) = normal {
            std::fs::write(&knobs.normal, n).unwrap();
        }
        let state = dir.path().join("state");
        let records = Records::new(&state);
        records.ensure_dir().unwrap();
        (dir, knobs, records)
    }

    /// The knob's value (a plain file keeps the newline a real sysfs file would not).
    fn knob(k: &Knobs) -> String {
        std::fs::read_to_string(&k.expedited)
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn expedited_with_a_record_then_relaxed_and_the_record_removed() {
        let (_d, k, r) = setup("0\n", Some("0\n"));
        assert_eq!(expedite(&k, &r, 7, 1), (Rcu::Expedited, None));
        assert_eq!(knob(&k), "1");
        assert!(r.rcu_recorded().unwrap());
        relax(&k, &r).unwrap();
        assert_eq!(knob(&k), "0");
        assert!(!r.rcu_recorded().unwrap());
    }

    #[test]
    fn someone_elses_setting_is_never_touched() {
        let (_d, k, r) = setup("1\n", Some("0\n"));
        assert_eq!(expedite(&k, &r, 7, 1), (Rcu::AlreadyExpedited, None));
        assert_eq!(knob(&k), "1");
        assert!(!r.rcu_recorded().unwrap());
    }

    #[test]
    fn forced_normal_grace_periods_are_respected() {
        let (_d, k, r) = setup("0\n", Some("1\n"));
        let (rcu, why) = expedite(&k, &r, 7, 1);
        assert_eq!(rcu, Rcu::Unavailable);
        assert!(why.unwrap().contains("rcu_normal is set"));
        assert_eq!(knob(&k), "0");
        assert!(!r.rcu_recorded().unwrap());
    }

    #[test]
    fn a_kernel_without_rcu_normal_is_fine_and_one_without_the_knob_is_unavailable() {
        let (_d, k, r) = setup("0\n", None);
        assert_eq!(expedite(&k, &r, 7, 1).0, Rcu::Expedited);
        relax(&k, &r).unwrap();
        std::fs::remove_file(&k.expedited).unwrap();
        let (rcu, why) = expedite(&k, &r, 7, 1);
        assert_eq!(rcu, Rcu::Unavailable);
        assert!(why.unwrap().contains("rcu_expedited"));
        assert!(!r.rcu_recorded().unwrap());
    }

    #[test]
    fn an_unrecordable_expedite_does_not_touch_the_knob() {
        let (d, k, _) = setup("0\n", Some("0\n"));
        // state_dir is a file: no record can be written there.
        let bad = d.path().join("not-a-dir");
        std::fs::write(&bad, "").unwrap();
        let (rcu, why) = expedite(&k, &Records::new(&bad), 7, 1);
        assert_eq!(rcu, Rcu::Unavailable);
        assert!(why.unwrap().contains("state_dir"), "why");
        assert_eq!(knob(&k), "0");
    }

    #[test]
    fn recovery_puts_the_knob_back_and_is_idempotent() {
        let (_d, k, r) = setup("0\n", Some("0\n"));
        assert_eq!(expedite(&k, &r, 7, 1).0, Rcu::Expedited);
        // The watchdog is SIGKILLed here: the knob stays 1, the record says it was ours.
        assert_eq!(recover(&k, &r), Recovery::RcuRelaxed { was_on: true });
        assert_eq!(knob(&k), "0");
        assert!(!r.rcu_recorded().unwrap());
        // Someone put it back already: only the record goes.
        r.write_rcu(7, 1).unwrap();
        assert_eq!(recover(&k, &r), Recovery::RcuRelaxed { was_on: false });
        assert!(!r.rcu_recorded().unwrap());
    }

    #[test]
    fn thaw_recorded_relaxes_only_with_a_record() {
        // Without a record of ours, recovery never reads or writes the (real) knob.
        let (d, _k, r) = setup("0\n", Some("0\n"));
        let out = super::super::recovery::thaw_recorded(&d.path().join("state")).unwrap();
        assert!(out.is_empty(), "{out:?}");
        assert!(!r.rcu_recorded().unwrap());
    }
}
