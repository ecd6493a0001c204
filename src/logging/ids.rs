//! The fixed `MESSAGE_ID` of each event kind, so that an operator can find every occurrence of
//! one kind with `journalctl MESSAGE_ID=…`. Generated once at random; never change a value:
//! saved queries and alerts depend on it.

/// A snapshot was accepted and started (pre hooks next).
pub const SNAPSHOT_STARTED: &str = "c8914a6124b444c1a6f7e0c195d5b1b9";
/// A snapshot reached its end state (`succeeded`, `failed` or `aborted`).
pub const SNAPSHOT_FINISHED: &str = "ff4225f9b6954a5183e5dbd95d847bd8";
/// One mount was frozen (FIFREEZE returned).
pub const FROZEN: &str = "614dea42e1654accab7f722560f897d0";
/// One mount was thawed.
pub const THAWED: &str = "b465e5d50bd5435ebf50397f344adec9";
/// The freeze deadline came before the host's thaw: the watchdog thawed by itself.
pub const DEADLINE_THAW: &str = "6e051d4eb39546589d2c8f098164a9d9";
/// A hook command failed (non-zero exit, signal, or could not run).
pub const HOOK_FAILED: &str = "c02e60851c654607b116f074be6b77fa";
/// A hook command ran past its timeout and its process tree was killed.
pub const HOOK_TIMED_OUT: &str = "3b1f274c3d754026a36dbaa0cae1487a";
/// A mount was already frozen by someone else (EBUSY): reported, never thawed by us.
pub const FOREIGN_FREEZE: &str = "784ad8d9f31849f7b88c75916e915ad8";
/// FIFREEZE failed on a mount for another reason.
pub const FREEZE_FAILED: &str = "cf8be334436445c0b99f655d1f40528c";
/// FITHAW failed on a mount: it may still be frozen (`quiesce thaw-all` retries).
pub const THAW_FAILED: &str = "c1080fec4faa453cb312cb843e5082df";
/// A new configuration was loaded (SIGHUP).
pub const CONFIG_RELOADED: &str = "01a9d60021df4917bc80b1e023c9ad28";
/// A new configuration was refused; the old one keeps running.
pub const CONFIG_RELOAD_REFUSED: &str = "1ad04584763a444ab59068e3a9ffaefc";
/// Log records were lost (the queue or the buffer kept while frozen was full).
pub const LOG_RECORDS_DROPPED: &str = "6859f40d277840ac8ea8c10f14798b28";

/// Every id with its constant's name, for the docs and the uniqueness test.
pub const ALL: &[(&str, &str)] = &[
    ("SNAPSHOT_STARTED", SNAPSHOT_STARTED),
    ("SNAPSHOT_FINISHED", SNAPSHOT_FINISHED),
    ("FROZEN", FROZEN),
    ("THAWED", THAWED),
    ("DEADLINE_THAW", DEADLINE_THAW),
    ("HOOK_FAILED", HOOK_FAILED),
    ("HOOK_TIMED_OUT", HOOK_TIMED_OUT),
    ("FOREIGN_FREEZE", FOREIGN_FREEZE),
    ("FREEZE_FAILED", FREEZE_FAILED),
    ("THAW_FAILED", THAW_FAILED),
    ("CONFIG_RELOADED", CONFIG_RELOADED),
    ("CONFIG_RELOAD_REFUSED", CONFIG_RELOAD_REFUSED),
    ("LOG_RECORDS_DROPPED", LOG_RECORDS_DROPPED),
];

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn ids_are_128_bit_lowercase_hex_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for (name, id) in ALL {
            assert_eq!(id.len(), 32, "{name}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{name}"
            );
            assert!(seen.insert(*id), "{name} repeats an id");
        }
    }
}
