//! Which mounts are candidates for freezing, and why the others are skipped.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::mountinfo::{DevNum, MountInfo};

/// The configured selection rules (the `freeze.*` settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// When non-empty, only these mount points may be frozen.
    pub include_mounts: Vec<PathBuf>,
    /// Mount points never to freeze.
    pub exclude_mounts: Vec<PathBuf>,
    /// Filesystem types never to freeze (exact names, e.g. `xfs`, `fuse.sshfs`).
    pub exclude_fstypes: Vec<String>,
}

/// Why a mount is not frozen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The mount or its superblock is read-only.
    ReadOnly,
    /// A network or FUSE filesystem: FIFREEZE is unsupported or would block on a server.
    Network { fstype: String },
    /// A pseudo, memory or read-only-by-design filesystem: nothing to make consistent.
    Pseudo { fstype: String },
    /// An anonymous device number and a source that is not a block device node.
    NotBlockBacked,
    /// Listed in `freeze.exclude_mounts`.
    Excluded,
    /// Its type is listed in `freeze.exclude_fstypes`.
    ExcludedFstype { fstype: String },
    /// `freeze.include_mounts` is set and does not list it.
    NotIncluded,
    /// Another mount of the same superblock is frozen instead.
    Duplicate { of: PathBuf },
    /// Another mount of the same superblock is excluded, which excludes the filesystem.
    ExcludedFilesystem { of: PathBuf },
    /// A later mount on the same path hides it.
    Shadowed,
    /// The snapshot request lists mounts and not this one.
    NotRequested,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::ReadOnly => f.write_str("read-only"),
            SkipReason::Network { fstype } => write!(f, "network filesystem ({fstype})"),
            SkipReason::Pseudo { fstype } => {
                write!(f, "pseudo or memory filesystem ({fstype})")
            }
            SkipReason::NotBlockBacked => f.write_str("not backed by a block device"),
            SkipReason::Excluded => f.write_str("in freeze.exclude_mounts"),
            SkipReason::ExcludedFstype { fstype } => {
                write!(f, "fstype {fstype} in freeze.exclude_fstypes")
            }
            SkipReason::NotIncluded => f.write_str("not in freeze.include_mounts"),
            SkipReason::ExcludedFilesystem { of } => {
                write!(f, "same filesystem as {}, which is excluded", of.display())
            }
            SkipReason::Duplicate { of } => write!(
                f,
                "same filesystem as {} (bind mount or duplicate)",
                of.display()
            ),
            SkipReason::Shadowed => f.write_str("hidden by a later mount on the same path"),
            SkipReason::NotRequested => f.write_str("not in the request's mounts"),
        }
    }
}

/// The outcome of [`select`]: what to freeze and what was left out, both in mountinfo order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Mounts to freeze, one per filesystem.
    pub targets: Vec<MountInfo>,
    /// Every other mount, with the first rule that excluded it.
    pub skipped: Vec<(MountInfo, SkipReason)>,
}

/// A configuration or request that the selection cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// A configured or requested path is relative.
    #[error("{setting}: {} is not an absolute path", .path.display())]
    NotAbsolute {
        /// Where the path came from (`freeze.include_mounts`, ..., or the request).
        setting: &'static str,
        path: PathBuf,
    },
    /// A requested path is not the mount point of a freezable filesystem.
    #[error("{}", not_a_candidate(.path, .reason.as_ref()))]
    NotACandidate {
        path: PathBuf,
        /// Why that mount was skipped; `None` when no mount has that mount point.
        reason: Option<SkipReason>,
    },
}

fn not_a_candidate(path: &Path, reason: Option<&SkipReason>) -> String {
    match reason {
        Some(reason) => format!("{} cannot be frozen: {reason}", path.display()),
        None => format!("{} is not a mount point", path.display()),
    }
}

/// Sorted for `binary_search`; a unit test keeps it sorted.
const NETWORK_FSTYPES: &[&str] = &[
    "9p",
    "afs",
    "ceph",
    "cifs",
    "fuse",
    "fuseblk",
    "glusterfs",
    "lustre",
    "nfs",
    "nfs4",
    "smb3",
    "smbfs",
    "virtiofs",
];

/// Sorted for `binary_search`; a unit test keeps it sorted.
const PSEUDO_FSTYPES: &[&str] = &[
    "aufs",
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "cramfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "erofs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nfsd",
    "nsfs",
    "overlay",
    "pipefs",
    "proc",
    "pstore",
    "ramfs",
    "romfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "sockfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "udf",
    "zonefs",
];

fn is_network_fstype(fstype: &str) -> bool {
    // FUSE mounts show as "fuse.<subtype>" (and "fuseblk.<subtype>" when a helper sets one).
    NETWORK_FSTYPES.binary_search(&fstype).is_ok()
        || fstype.starts_with("fuse.")
        || fstype.starts_with("fuseblk.")
}

fn is_pseudo_fstype(fstype: &str) -> bool {
    PSEUDO_FSTYPES.binary_search(&fstype).is_ok()
}

/// Whether `source` names a block device node (follows symlinks, so /dev/mapper names work).
pub fn is_block_device_node(source: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    // A relative source ("tmpfs", "tank/data") would be looked up in the current directory.
    Path::new(source).is_absolute()
        && std::fs::metadata(source).is_ok_and(|m| m.file_type().is_block_device())
}

/// Applies shadowing, `rules`, the built-in type, read-only and block checks, per-superblock
/// deduplication and then `requested`, reporting for each skipped mount the first that matched.
pub fn select(
    mounts: &[MountInfo],
    rules: &Rules,
    requested: Option<&[PathBuf]>,
    is_block_device: &dyn Fn(&str) -> bool,
) -> Result<Selection, SelectError> {
    check_absolute("freeze.include_mounts", &rules.include_mounts)?;
    check_absolute("freeze.exclude_mounts", &rules.exclude_mounts)?;
    if let Some(requested) = requested {
        check_absolute("the request's mounts", requested)?;
    }

    // Path equality and hashing are by component, so "/data/" and "/data" are one key.
    let mut last_on_path: HashMap<&Path, usize> = HashMap::new();
    for (i, m) in mounts.iter().enumerate() {
        last_on_path.insert(&m.mount_point, i);
    }

    let mut verdicts: Vec<Option<SkipReason>> = mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if last_on_path[m.mount_point.as_path()] != i {
                Some(SkipReason::Shadowed)
            } else {
                rule_reason(m, rules, is_block_device)
            }
        })
        .collect();

    exclude_whole_filesystems(mounts, &mut verdicts);
    mark_duplicates(mounts, &mut verdicts);

    if let Some(requested) = requested {
        for path in requested {
            let Some(&i) = last_on_path.get(path.as_path()) else {
                return Err(SelectError::NotACandidate {
                    path: path.clone(),
                    reason: None,
                });
            };
            if let Some(reason) = &verdicts[i] {
                return Err(SelectError::NotACandidate {
                    path: path.clone(),
                    reason: Some(reason.clone()),
                });
            }
        }
        for (m, verdict) in mounts.iter().zip(verdicts.iter_mut()) {
            if verdict.is_none() && !requested.contains(&m.mount_point) {
                *verdict = Some(SkipReason::NotRequested);
            }
        }
    }

    let mut selection = Selection::default();
    for (m, verdict) in mounts.iter().zip(verdicts) {
        match verdict {
            None => selection.targets.push(m.clone()),
            Some(reason) => selection.skipped.push((m.clone(), reason)),
        }
    }
    Ok(selection)
}

fn check_absolute(setting: &'static str, paths: &[PathBuf]) -> Result<(), SelectError> {
    match paths.iter().find(|p| !p.is_absolute()) {
        Some(path) => Err(SelectError::NotAbsolute {
            setting,
            path: path.clone(),
        }),
        None => Ok(()),
    }
}

/// Rules 2 to 7, which look at one mount alone.
fn rule_reason(
    m: &MountInfo,
    rules: &Rules,
    is_block_device: &dyn Fn(&str) -> bool,
) -> Option<SkipReason> {
    let fstype = || m.fstype.clone();
    if rules.exclude_mounts.contains(&m.mount_point) {
        Some(SkipReason::Excluded)
    } else if rules.exclude_fstypes.contains(&m.fstype) {
        Some(SkipReason::ExcludedFstype { fstype: fstype() })
    } else if !rules.include_mounts.is_empty() && !rules.include_mounts.contains(&m.mount_point) {
        Some(SkipReason::NotIncluded)
    } else if is_network_fstype(&m.fstype) {
        Some(SkipReason::Network { fstype: fstype() })
    } else if is_pseudo_fstype(&m.fstype) {
        Some(SkipReason::Pseudo { fstype: fstype() })
    } else if m.is_read_only() {
        Some(SkipReason::ReadOnly)
    } else if m.dev.major == 0 && !is_block_device(&m.source) {
        // Checked last and only for anonymous devices: it may touch the filesystem, and a
        // real major is proof enough even when the source ("/dev/root") has no node.
        Some(SkipReason::NotBlockBacked)
    } else {
        None
    }
}

/// An excluded mount excludes its filesystem: FIFREEZE acts on the superblock, so freezing a
/// bind mount of an excluded mount point would freeze the excluded filesystem all the same.
fn exclude_whole_filesystems(mounts: &[MountInfo], verdicts: &mut [Option<SkipReason>]) {
    let excluded: HashMap<DevNum, PathBuf> = mounts
        .iter()
        .zip(verdicts.iter())
        .filter(|(_, v)| {
            matches!(
                v,
                Some(SkipReason::Excluded | SkipReason::ExcludedFstype { .. })
            )
        })
        .map(|(m, _)| (m.dev, m.mount_point.clone()))
        .collect();
    for (m, verdict) in mounts.iter().zip(verdicts.iter_mut()) {
        if verdict.is_none() {
            if let Some(of) = excluded.get(&m.dev) {
                *verdict = Some(SkipReason::ExcludedFilesystem { of: of.clone() });
            }
        }
    }
}

/// Rule 8: FIFREEZE works per superblock, and a second freeze of one fails with EBUSY.
fn mark_duplicates(mounts: &[MountInfo], verdicts: &mut [Option<SkipReason>]) {
    // Prefer the mount of the whole filesystem, then the shortest path, then mountinfo order.
    let preference = |i: usize| {
        let m = &mounts[i];
        (m.root != Path::new("/"), m.mount_point.as_os_str().len(), i)
    };
    let mut kept: HashMap<DevNum, usize> = HashMap::new();
    for (i, m) in mounts.iter().enumerate() {
        if verdicts[i].is_some() {
            continue;
        }
        kept.entry(m.dev)
            .and_modify(|k| {
                if preference(i) < preference(*k) {
                    *k = i;
                }
            })
            .or_insert(i);
    }
    for (i, m) in mounts.iter().enumerate() {
        if verdicts[i].is_none() && kept[&m.dev] != i {
            verdicts[i] = Some(SkipReason::Duplicate {
                of: mounts[kept[&m.dev]].mount_point.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freezer::mountinfo;
    use std::cell::Cell;

    const DEBIAN_VM: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mountinfo/debian-vm.txt"
    ));

    fn mount(
        dev: (u32, u32),
        root: &str,
        mount_point: &str,
        fstype: &str,
        source: &str,
    ) -> MountInfo {
        MountInfo {
            mount_id: 0,
            parent_id: 0,
            dev: DevNum::new(dev.0, dev.1),
            root: root.into(),
            mount_point: mount_point.into(),
            mount_options: vec!["rw".into(), "relatime".into()],
            fstype: fstype.into(),
            source: source.into(),
            super_options: vec!["rw".into()],
        }
    }

    fn ext4(dev: (u32, u32), mount_point: &str) -> MountInfo {
        mount(dev, "/", mount_point, "ext4", "/dev/vdx")
    }

    fn no_block_devices(_: &str) -> bool {
        false
    }

    fn run(mounts: &[MountInfo], rules: &Rules) -> Selection {
        select(mounts, rules, None, &no_block_devices).unwrap()
    }

    fn target_points(s: &Selection) -> Vec<&Path> {
        s.targets.iter().map(|m| m.mount_point.as_path()).collect()
    }

    fn reason_for<'a>(s: &'a Selection, mount_point: &str) -> &'a SkipReason {
        let matching: Vec<_> = s
            .skipped
            .iter()
            .filter(|(m, _)| m.mount_point == Path::new(mount_point))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{mount_point} skipped {} times",
            matching.len()
        );
        &matching[0].1
    }

    fn paths(ps: &[&str]) -> Vec<PathBuf> {
        ps.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn lists_are_sorted() {
        for list in [NETWORK_FSTYPES, PSEUDO_FSTYPES] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
        }
    }

    #[test]
    fn debian_vm() {
        let mounts = mountinfo::parse(DEBIAN_VM).unwrap();
        let s = run(&mounts, &Rules::default());
        assert_eq!(target_points(&s), ["/", "/boot", "/boot/efi", "/home"]);
        assert_eq!(s.targets.len() + s.skipped.len(), mounts.len());
        let fstype = |t: &str| t.to_owned();
        assert_eq!(
            reason_for(&s, "/srv/nfs"),
            &SkipReason::Network {
                fstype: fstype("nfs4")
            }
        );
        assert_eq!(
            reason_for(&s, "/mnt/remote"),
            &SkipReason::Network {
                fstype: fstype("fuse.sshfs")
            }
        );
        assert_eq!(
            reason_for(&s, "/var/lib/docker/overlay2/4f1c2a9e0b7d/merged"),
            &SkipReason::Pseudo {
                fstype: fstype("overlay")
            }
        );
        assert_eq!(
            reason_for(&s, "/snap/core22/1380"),
            &SkipReason::Pseudo {
                fstype: fstype("squashfs")
            }
        );
        assert_eq!(
            reason_for(&s, "/run"),
            &SkipReason::Pseudo {
                fstype: fstype("tmpfs")
            }
        );
        assert_eq!(
            reason_for(&s, "/sys/fs/cgroup"),
            &SkipReason::Pseudo {
                fstype: fstype("cgroup2")
            }
        );
        // Two mounts on /proc/sys/fs/binfmt_misc: the autofs trigger is hidden.
        let binfmt: Vec<_> = s
            .skipped
            .iter()
            .filter(|(m, _)| m.mount_point == Path::new("/proc/sys/fs/binfmt_misc"))
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(
            binfmt,
            [
                SkipReason::Shadowed,
                SkipReason::Pseudo {
                    fstype: fstype("binfmt_misc")
                }
            ]
        );
        // Every pseudo filesystem in the table is recognised before the block-device check.
        assert!(!s
            .skipped
            .iter()
            .any(|(_, r)| *r == SkipReason::NotBlockBacked));
    }

    #[test]
    fn shadowed_comes_first() {
        let mounts = [
            mount((0, 40), "/", "/data", "tmpfs", "tmpfs"),
            ext4((254, 1), "/data"),
            ext4((254, 2), "/data/"),
        ];
        let s = run(&mounts, &Rules::default());
        assert_eq!(s.targets, [mounts[2].clone()]);
        assert_eq!(s.skipped[0].1, SkipReason::Shadowed);
        assert_eq!(s.skipped[1].1, SkipReason::Shadowed);
    }

    #[test]
    fn shadowing_a_block_fs_with_tmpfs_hides_both() {
        let mounts = [
            ext4((254, 1), "/data"),
            mount((0, 40), "/", "/data", "tmpfs", "tmpfs"),
        ];
        let s = run(&mounts, &Rules::default());
        assert!(s.targets.is_empty());
        assert_eq!(s.skipped[0].1, SkipReason::Shadowed);
        assert_eq!(
            s.skipped[1].1,
            SkipReason::Pseudo {
                fstype: "tmpfs".into()
            }
        );
    }

    #[test]
    fn exclude_mounts_normalises_trailing_slashes() {
        let mounts = [
            ext4((254, 1), "/"),
            ext4((254, 2), "/data"),
            ext4((254, 3), "/srv/"),
        ];
        let rules = Rules {
            exclude_mounts: paths(&["/data/", "/srv"]),
            ..Rules::default()
        };
        let s = run(&mounts, &rules);
        assert_eq!(target_points(&s), ["/"]);
        assert_eq!(reason_for(&s, "/data"), &SkipReason::Excluded);
        assert_eq!(reason_for(&s, "/srv"), &SkipReason::Excluded);
    }

    #[test]
    fn exclude_mounts_is_exact_not_a_prefix() {
        let mounts = [
            ext4((254, 1), "/data"),
            ext4((254, 2), "/data/sub"),
            ext4((254, 3), "/database"),
        ];
        let rules = Rules {
            exclude_mounts: paths(&["/data"]),
            ..Rules::default()
        };
        let s = run(&mounts, &rules);
        assert_eq!(target_points(&s), ["/data/sub", "/database"]);
    }

    #[test]
    fn exclude_mounts_before_exclude_fstypes() {
        let mounts = [
            mount((254, 1), "/", "/data", "xfs", "/dev/vdb"),
            mount((254, 2), "/", "/logs", "xfs", "/dev/vdc"),
        ];
        let rules = Rules {
            exclude_mounts: paths(&["/data"]),
            exclude_fstypes: vec!["xfs".into()],
            ..Rules::default()
        };
        let s = run(&mounts, &rules);
        assert!(s.targets.is_empty());
        assert_eq!(reason_for(&s, "/data"), &SkipReason::Excluded);
        assert_eq!(
            reason_for(&s, "/logs"),
            &SkipReason::ExcludedFstype {
                fstype: "xfs".into()
            }
        );
    }

    #[test]
    fn exclusions_come_before_the_builtin_rules() {
        let mounts = [
            mount((0, 40), "/", "/run", "tmpfs", "tmpfs"),
            mount((0, 41), "/", "/srv/nfs", "nfs4", "server:/export"),
        ];
        let rules = Rules {
            exclude_mounts: paths(&["/run"]),
            exclude_fstypes: vec!["nfs4".into()],
            ..Rules::default()
        };
        let s = run(&mounts, &rules);
        assert_eq!(reason_for(&s, "/run"), &SkipReason::Excluded);
        assert_eq!(
            reason_for(&s, "/srv/nfs"),
            &SkipReason::ExcludedFstype {
                fstype: "nfs4".into()
            }
        );
    }

    #[test]
    fn include_mounts_filters_but_does_not_force() {
        let mounts = [
            ext4((254, 1), "/"),
            ext4((254, 2), "/data"),
            mount((0, 40), "/", "/scratch", "tmpfs", "tmpfs"),
            ext4((254, 3), "/logs"),
        ];
        let rules = Rules {
            include_mounts: paths(&["/data/", "/scratch", "/logs"]),
            exclude_mounts: paths(&["/logs"]),
            ..Rules::default()
        };
        let s = run(&mounts, &rules);
        assert_eq!(target_points(&s), ["/data"]);
        assert_eq!(reason_for(&s, "/"), &SkipReason::NotIncluded);
        assert_eq!(
            reason_for(&s, "/scratch"),
            &SkipReason::Pseudo {
                fstype: "tmpfs".into()
            }
        );
        // Exclusion wins over inclusion.
        assert_eq!(reason_for(&s, "/logs"), &SkipReason::Excluded);
    }

    #[test]
    fn not_included_comes_before_the_builtin_rules() {
        let mounts = [
            ext4((254, 1), "/"),
            mount((0, 40), "/", "/run", "tmpfs", "tmpfs"),
        ];
        let rules = Rules {
            include_mounts: paths(&["/"]),
            ..Rules::default()
        };
        let s = run(&mounts, &rules);
        assert_eq!(reason_for(&s, "/run"), &SkipReason::NotIncluded);
    }

    #[test]
    fn network_filesystems() {
        let types = [
            "nfs",
            "nfs4",
            "cifs",
            "smb3",
            "smbfs",
            "ceph",
            "glusterfs",
            "9p",
            "afs",
            "lustre",
            "virtiofs",
            "fuse",
            "fuseblk",
            "fuse.sshfs",
            "fuse.gvfsd-fuse",
            "fuseblk.ntfs",
        ];
        for fstype in types {
            // Block-backed by every other measure, so only the network rule can skip it.
            let m = mount((254, 9), "/", "/mnt/x", fstype, "/dev/vdz");
            let s = select(&[m], &Rules::default(), None, &|_| true).unwrap();
            assert_eq!(
                s.skipped[0].1,
                SkipReason::Network {
                    fstype: fstype.into()
                },
                "{fstype}"
            );
        }
        // fusectl is the FUSE control filesystem, not a FUSE mount.
        assert!(!is_network_fstype("fusectl"));
        assert!(is_pseudo_fstype("fusectl"));
        assert!(!is_network_fstype("nfsd"));
        assert!(!is_network_fstype("fuse2"));
    }

    #[test]
    fn pseudo_filesystems() {
        for &fstype in PSEUDO_FSTYPES {
            let m = mount((254, 9), "/", "/mnt/x", fstype, "/dev/vdz");
            let s = select(&[m], &Rules::default(), None, &|_| true).unwrap();
            assert_eq!(
                s.skipped[0].1,
                SkipReason::Pseudo {
                    fstype: fstype.into()
                },
                "{fstype}"
            );
        }
        for fstype in ["ext4", "xfs", "btrfs", "vfat", "f2fs", "jfs", "zfs"] {
            assert!(!is_pseudo_fstype(fstype), "{fstype}");
            assert!(!is_network_fstype(fstype), "{fstype}");
        }
    }

    #[test]
    fn network_and_pseudo_come_before_read_only() {
        let mut nfs = mount((0, 41), "/", "/srv/nfs", "nfs", "server:/export");
        nfs.mount_options = vec!["ro".into()];
        let mut snap = mount((7, 0), "/", "/snap/x/1", "squashfs", "/dev/loop0");
        snap.super_options = vec!["ro".into()];
        let s = run(&[nfs, snap], &Rules::default());
        assert_eq!(
            reason_for(&s, "/srv/nfs"),
            &SkipReason::Network {
                fstype: "nfs".into()
            }
        );
        assert_eq!(
            reason_for(&s, "/snap/x/1"),
            &SkipReason::Pseudo {
                fstype: "squashfs".into()
            }
        );
    }

    #[test]
    fn read_only_superblock_not_mount() {
        // As the daemon sees / under ProtectSystem=strict: a read-only mount of a writable
        // filesystem. It is a target.
        let mut ro_mount = ext4((254, 1), "/a");
        ro_mount.mount_options = vec!["ro".into(), "relatime".into()];
        let mut ro_super = ext4((254, 2), "/b");
        ro_super.super_options = vec!["ro".into(), "errors=continue".into()];
        let s = run(
            &[ro_mount, ro_super, ext4((254, 3), "/c")],
            &Rules::default(),
        );
        assert_eq!(target_points(&s), ["/a", "/c"]);
        assert_eq!(reason_for(&s, "/b"), &SkipReason::ReadOnly);
    }

    #[test]
    fn read_only_comes_before_not_block_backed() {
        let mut m = mount((0, 50), "/", "/tank", "zfs", "tank");
        m.super_options = vec!["ro".into()];
        let s = run(&[m], &Rules::default());
        assert_eq!(s.skipped[0].1, SkipReason::ReadOnly);
    }

    #[test]
    fn block_backing() {
        let calls = Cell::new(0);
        let is_block = |source: &str| {
            calls.set(calls.get() + 1);
            source == "/dev/vdb"
        };
        let mounts = [
            // A real major is enough, even when /dev/root has no node.
            mount((254, 1), "/", "/", "ext4", "/dev/root"),
            // btrfs: anonymous device, block device source.
            mount((0, 45), "/", "/data", "btrfs", "/dev/vdb"),
            // zfs dataset: anonymous device, no block device source.
            mount((0, 46), "/", "/tank", "zfs", "tank/data"),
            mount((0, 47), "/", "/run", "tmpfs", "tmpfs"),
        ];
        let s = select(&mounts, &Rules::default(), None, &is_block).unwrap();
        assert_eq!(target_points(&s), ["/", "/data"]);
        assert_eq!(reason_for(&s, "/tank"), &SkipReason::NotBlockBacked);
        // Consulted only for the two anonymous devices that survived the other rules.
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn bind_mount_of_a_subtree_is_a_duplicate_even_when_first() {
        let mounts = [
            ext4((254, 1), "/"),
            mount((254, 2), "/www", "/srv/www", "ext4", "/dev/vdb"),
            mount((254, 2), "/", "/data", "ext4", "/dev/vdb"),
        ];
        let s = run(&mounts, &Rules::default());
        assert_eq!(target_points(&s), ["/", "/data"]);
        assert_eq!(
            reason_for(&s, "/srv/www"),
            &SkipReason::Duplicate { of: "/data".into() }
        );
    }

    #[test]
    fn duplicates_prefer_the_shortest_mount_point_then_the_first() {
        let mounts = [
            mount((254, 2), "/", "/mnt/long/path", "ext4", "/dev/vdb"),
            mount((254, 2), "/", "/d1", "ext4", "/dev/vdb"),
            mount((254, 2), "/", "/d2", "ext4", "/dev/vdb"),
        ];
        let s = run(&mounts, &Rules::default());
        assert_eq!(target_points(&s), ["/d1"]);
        let of_d1 = SkipReason::Duplicate { of: "/d1".into() };
        assert_eq!(reason_for(&s, "/mnt/long/path"), &of_d1);
        assert_eq!(reason_for(&s, "/d2"), &of_d1);
    }

    #[test]
    fn duplicates_without_a_whole_filesystem_mount() {
        let mounts = [
            mount((254, 2), "/a", "/srv/first", "ext4", "/dev/vdb"),
            mount((254, 2), "/b", "/x", "ext4", "/dev/vdb"),
        ];
        let s = run(&mounts, &Rules::default());
        assert_eq!(target_points(&s), ["/x"]);
        assert_eq!(
            reason_for(&s, "/srv/first"),
            &SkipReason::Duplicate { of: "/x".into() }
        );
    }

    #[test]
    fn duplicates_are_counted_after_the_other_rules() {
        // Only candidates compete: a mount left out by include_mounts does not make the other
        // mount of the same filesystem a duplicate, and it is reported with its own reason.
        let mounts = [
            mount((254, 2), "/sub", "/srv", "ext4", "/dev/vdb"),
            mount((254, 2), "/", "/view", "ext4", "/dev/vdb"),
        ];
        let rules = Rules {
            include_mounts: paths(&["/srv"]),
            ..Rules::default()
        };
        let s = run(&mounts, &rules);
        assert_eq!(target_points(&s), ["/srv"]);
        assert_eq!(reason_for(&s, "/view"), &SkipReason::NotIncluded);
    }

    #[test]
    fn a_read_only_bind_of_a_writable_filesystem_is_one_of_its_mounts() {
        // ProtectSystem=strict, ProtectHome=read-only: the daemon's own view of a filesystem is
        // a read-only mount; it is frozen once, through the mount of the whole filesystem.
        let mut ro_bind = mount((254, 2), "/", "/ro-view", "ext4", "/dev/vdb");
        ro_bind.mount_options = vec!["ro".into()];
        let mut home = mount((254, 2), "/", "/home", "ext4", "/dev/vdb");
        home.mount_options = vec!["ro".into(), "nosuid".into()];
        let s = run(&[ro_bind, home], &Rules::default());
        assert_eq!(target_points(&s), ["/home"]);
        assert!(matches!(
            reason_for(&s, "/ro-view"),
            SkipReason::Duplicate { .. }
        ));
    }

    #[test]
    fn excluding_a_mount_excludes_its_filesystem_everywhere() {
        // FIFREEZE acts on the superblock: a bind of an excluded mount must not freeze it.
        let mounts = [
            mount((254, 2), "/", "/data", "ext4", "/dev/vdb"),
            mount((254, 2), "/sub", "/srv", "ext4", "/dev/vdb"),
            mount((254, 3), "/", "/vfat-bind", "vfat", "/dev/vdc"),
            mount((254, 4), "/", "/other", "ext4", "/dev/vdd"),
        ];
        let rules = Rules {
            exclude_mounts: paths(&["/data"]),
            exclude_fstypes: vec!["vfat".into()],
            ..Rules::default()
        };
        let s = run(&mounts, &rules);
        assert_eq!(target_points(&s), ["/other"]);
        assert_eq!(reason_for(&s, "/data"), &SkipReason::Excluded);
        assert_eq!(
            reason_for(&s, "/srv"),
            &SkipReason::ExcludedFilesystem { of: "/data".into() }
        );
    }

    #[test]
    fn shadowed_mount_does_not_compete_as_a_duplicate() {
        let mounts = [
            mount((254, 2), "/", "/a", "ext4", "/dev/vdb"),
            mount((254, 2), "/sub", "/longer", "ext4", "/dev/vdb"),
            ext4((254, 3), "/a"),
        ];
        let s = run(&mounts, &Rules::default());
        assert_eq!(target_points(&s), ["/longer", "/a"]);
        assert_eq!(s.skipped, [(mounts[0].clone(), SkipReason::Shadowed)]);
    }

    #[test]
    fn targets_keep_mountinfo_order() {
        let mounts = [
            ext4((254, 5), "/z"),
            ext4((254, 1), "/"),
            mount((0, 40), "/", "/run", "tmpfs", "tmpfs"),
            ext4((254, 3), "/a"),
        ];
        let s = run(&mounts, &Rules::default());
        assert_eq!(target_points(&s), ["/z", "/", "/a"]);
    }

    fn request(mounts: &[MountInfo], requested: &[&str]) -> Result<Selection, SelectError> {
        select(
            mounts,
            &Rules::default(),
            Some(&paths(requested)),
            &no_block_devices,
        )
    }

    #[test]
    fn requested_subset() {
        let mounts = mountinfo::parse(DEBIAN_VM).unwrap();
        let s = request(&mounts, &["/home/", "/boot"]).unwrap();
        assert_eq!(target_points(&s), ["/boot", "/home"]);
        assert_eq!(reason_for(&s, "/"), &SkipReason::NotRequested);
        assert_eq!(reason_for(&s, "/boot/efi"), &SkipReason::NotRequested);
        // Mounts skipped for other reasons keep them.
        assert_eq!(
            reason_for(&s, "/run"),
            &SkipReason::Pseudo {
                fstype: "tmpfs".into()
            }
        );
    }

    #[test]
    fn requested_mount_that_is_skipped() {
        let mounts = mountinfo::parse(DEBIAN_VM).unwrap();
        let err = request(&mounts, &["/", "/srv/nfs"]).unwrap_err();
        assert_eq!(
            err,
            SelectError::NotACandidate {
                path: "/srv/nfs".into(),
                reason: Some(SkipReason::Network {
                    fstype: "nfs4".into()
                }),
            }
        );
        assert_eq!(
            err.to_string(),
            "/srv/nfs cannot be frozen: network filesystem (nfs4)"
        );
    }

    #[test]
    fn requested_path_that_is_not_a_mount_point() {
        let mounts = mountinfo::parse(DEBIAN_VM).unwrap();
        let err = request(&mounts, &["/home/alice"]).unwrap_err();
        assert_eq!(
            err,
            SelectError::NotACandidate {
                path: "/home/alice".into(),
                reason: None,
            }
        );
        assert_eq!(err.to_string(), "/home/alice is not a mount point");
    }

    #[test]
    fn requested_duplicate_or_excluded() {
        let mounts = [
            mount((254, 2), "/", "/data", "ext4", "/dev/vdb"),
            mount((254, 2), "/sub", "/srv", "ext4", "/dev/vdb"),
        ];
        assert_eq!(
            request(&mounts, &["/srv"]).unwrap_err(),
            SelectError::NotACandidate {
                path: "/srv".into(),
                reason: Some(SkipReason::Duplicate { of: "/data".into() }),
            }
        );
        let rules = Rules {
            exclude_mounts: paths(&["/data"]),
            ..Rules::default()
        };
        let err = select(&mounts, &rules, Some(&paths(&["/data"])), &no_block_devices).unwrap_err();
        assert_eq!(
            err,
            SelectError::NotACandidate {
                path: "/data".into(),
                reason: Some(SkipReason::Excluded),
            }
        );
    }

    #[test]
    fn requested_path_reports_the_visible_mount() {
        // The hidden ext4 is not what the path reaches; the tmpfs on top is.
        let mounts = [
            ext4((254, 1), "/data"),
            mount((0, 40), "/", "/data", "tmpfs", "tmpfs"),
        ];
        assert_eq!(
            request(&mounts, &["/data"]).unwrap_err(),
            SelectError::NotACandidate {
                path: "/data".into(),
                reason: Some(SkipReason::Pseudo {
                    fstype: "tmpfs".into()
                }),
            }
        );
        // And when the visible one is a candidate, the request succeeds.
        let mounts = [
            mount((0, 40), "/", "/data", "tmpfs", "tmpfs"),
            ext4((254, 1), "/data"),
        ];
        let s = request(&mounts, &["/data"]).unwrap();
        assert_eq!(s.targets, [mounts[1].clone()]);
    }

    #[test]
    fn empty_request_freezes_nothing() {
        let mounts = [ext4((254, 1), "/")];
        let s = request(&mounts, &[]).unwrap();
        assert!(s.targets.is_empty());
        assert_eq!(s.skipped[0].1, SkipReason::NotRequested);
    }

    #[test]
    fn relative_paths_are_rejected() {
        let mounts = [ext4((254, 1), "/")];
        let err = select(
            &mounts,
            &Rules {
                include_mounts: paths(&["/", "data"]),
                ..Rules::default()
            },
            None,
            &no_block_devices,
        )
        .unwrap_err();
        assert_eq!(
            err,
            SelectError::NotAbsolute {
                setting: "freeze.include_mounts",
                path: "data".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "freeze.include_mounts: data is not an absolute path"
        );
        let err = select(
            &mounts,
            &Rules {
                exclude_mounts: paths(&["./x"]),
                ..Rules::default()
            },
            None,
            &no_block_devices,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            SelectError::NotAbsolute {
                setting: "freeze.exclude_mounts",
                ..
            }
        ));
        let err = request(&mounts, &["/", ""]).unwrap_err();
        assert!(matches!(
            err,
            SelectError::NotAbsolute {
                setting: "the request's mounts",
                ..
            }
        ));
    }

    #[test]
    fn display_texts() {
        let cases = [
            (SkipReason::ReadOnly, "read-only"),
            (
                SkipReason::Network {
                    fstype: "nfs4".into(),
                },
                "network filesystem (nfs4)",
            ),
            (
                SkipReason::Pseudo {
                    fstype: "tmpfs".into(),
                },
                "pseudo or memory filesystem (tmpfs)",
            ),
            (SkipReason::NotBlockBacked, "not backed by a block device"),
            (SkipReason::Excluded, "in freeze.exclude_mounts"),
            (
                SkipReason::ExcludedFstype {
                    fstype: "xfs".into(),
                },
                "fstype xfs in freeze.exclude_fstypes",
            ),
            (SkipReason::NotIncluded, "not in freeze.include_mounts"),
            (
                SkipReason::Duplicate { of: "/data".into() },
                "same filesystem as /data (bind mount or duplicate)",
            ),
            (
                SkipReason::Shadowed,
                "hidden by a later mount on the same path",
            ),
            (SkipReason::NotRequested, "not in the request's mounts"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn serialized_form() {
        assert_eq!(
            serde_json::to_value(SkipReason::Network {
                fstype: "nfs4".into()
            })
            .unwrap(),
            serde_json::json!({"kind": "network", "fstype": "nfs4"})
        );
        assert_eq!(
            serde_json::to_value(SkipReason::NotBlockBacked).unwrap(),
            serde_json::json!({"kind": "not_block_backed"})
        );
        assert_eq!(
            serde_json::to_value(SkipReason::Duplicate { of: "/data".into() }).unwrap(),
            serde_json::json!({"kind": "duplicate", "of": "/data"})
        );
    }

    #[test]
    fn block_device_node_probe() {
        assert!(!is_block_device_node("tmpfs"));
        assert!(!is_block_device_node("/proc/self/mountinfo"));
        assert!(!is_block_device_node("/nonexistent/device"));
    }
}
