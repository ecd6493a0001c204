//! The storage stack: which target filesystems lie beneath which (loop backing files,
//! device-mapper and md slaves, partitions), and the freeze order that follows from it.

#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::mountinfo::{DevNum, MountInfo};

/// What the kernel says about block devices; a trait so the ordering logic is tested without sysfs.
pub trait Topology {
    /// Devices that `dev` is built directly on: for a partition, its whole disk; for dm/md, its slaves.
    fn slaves(&self, dev: DevNum) -> Vec<DevNum>;
    /// For a loop device, the device number (st_dev) of the filesystem that holds its backing file.
    fn loop_backing_fs(&self, dev: DevNum) -> Option<DevNum>;
}

/// The live topology, read from /sys (missing entries mean "nothing beneath").
#[derive(Debug, Clone, Copy, Default)]
pub struct Sysfs;

impl Topology for Sysfs {
    fn slaves(&self, dev: DevNum) -> Vec<DevNum> {
        slaves_in(Path::new("/sys"), dev)
    }

    fn loop_backing_fs(&self, dev: DevNum) -> Option<DevNum> {
        loop_backing_fs_in(Path::new("/sys"), dev)
    }
}

fn block_dir(sys: &Path, dev: DevNum) -> PathBuf {
    sys.join("dev/block").join(dev.to_string())
}

fn read_dev(path: &Path) -> Option<DevNum> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn slaves_in(sys: &Path, dev: DevNum) -> Vec<DevNum> {
    let dir = block_dir(sys, dev);
    let mut found: Vec<DevNum> = match std::fs::read_dir(dir.join("slaves")) {
        Ok(entries) => entries
            .filter_map(|e| read_dev(&e.ok()?.path().join("dev")))
            .collect(),
        Err(_) => Vec::new(),
    };
    // A partition's sysfs directory sits inside its disk's directory.
    if dir.join("partition").exists() {
        let disk = std::fs::canonicalize(&dir)
            .ok()
            .and_then(|p| read_dev(&p.parent()?.join("dev")));
        found.extend(disk);
    }
    // read_dir order is arbitrary; the walk and its tests should not depend on it.
    found.sort_unstable();
    found.dedup();
    found
}

fn loop_backing_fs_in(sys: &Path, dev: DevNum) -> Option<DevNum> {
    let raw = std::fs::read(block_dir(sys, dev).join("loop/backing_file")).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    // An unlinked backing file has no path left to stat; whatever now has that name is
    // not what the loop device reads.
    if raw.is_empty() || raw.ends_with(b" (deleted)") {
        return None;
    }
    let meta = std::fs::metadata(Path::new(OsStr::from_bytes(raw))).ok()?;
    Some(DevNum::from_dev_t(meta.dev()))
}

/// Freeze order and layering of the targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Order {
    /// indices into targets, in freeze order
    pub freeze_order: Vec<usize>,
    /// for each target index, the target indices that lie directly or indirectly beneath it (must be frozen after it, thawed before it)
    pub beneath: Vec<Vec<usize>>,
}

impl Order {
    /// Indices into targets in thaw order: the freeze order reversed.
    pub fn thaw_order(&self) -> Vec<usize> {
        self.freeze_order.iter().rev().copied().collect()
    }
}

/// Computes which targets lie beneath which and a freeze order that respects it.
///
/// `target_st_devs[j]` is the st_dev of target j's mount point when known (it differs
/// from the mountinfo device for btrfs subvolumes); a short slice counts as unknown.
pub fn order(
    targets: &[MountInfo],
    target_st_devs: &[Option<DevNum>],
    topo: &dyn Topology,
) -> Order {
    let n = targets.len();
    let st_dev = |j: usize| target_st_devs.get(j).copied().flatten();

    let direct: Vec<Vec<usize>> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let reached = backing_filesystems(t.dev, topo);
            (0..n)
                .filter(|&j| {
                    j != i
                        && (reached.contains(&targets[j].dev)
                            || st_dev(j).is_some_and(|d| reached.contains(&d)))
                })
                .collect()
        })
        .collect();

    // The walk already follows chains through non-targets, but a target reached by its
    // st_dev (a btrfs subvolume) is walked from its mountinfo device only here.
    let beneath: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            let mut seen = BTreeSet::new();
            let mut stack = direct[i].clone();
            while let Some(j) = stack.pop() {
                if j != i && seen.insert(j) {
                    stack.extend(&direct[j]);
                }
            }
            seen.into_iter().collect()
        })
        .collect();

    let freeze_order = topological_order(&beneath);
    Order {
        freeze_order,
        beneath,
    }
}

/// Every filesystem (st_dev) that holds a loop backing file somewhere below `dev`.
fn backing_filesystems(dev: DevNum, topo: &dyn Topology) -> HashSet<DevNum> {
    let mut reached = HashSet::new();
    let mut visited = HashSet::from([dev]);
    let mut stack = vec![dev];
    while let Some(d) = stack.pop() {
        for s in topo.slaves(d) {
            if visited.insert(s) {
                stack.push(s);
            }
        }
        if let Some(fs) = topo.loop_backing_fs(d) {
            reached.insert(fs);
            // The backing filesystem may itself sit on a loop device, and so on.
            if visited.insert(fs) {
                stack.push(fs);
            }
        }
    }
    reached
}

/// Kahn's algorithm, taking the highest ready index first so that unconstrained targets
/// freeze in reverse mount order; a cycle (which real stacks cannot form) is broken the
/// same way instead of leaving targets out.
fn topological_order(beneath: &[Vec<usize>]) -> Vec<usize> {
    let n = beneath.len();
    let mut above_count = vec![0usize; n];
    for below in beneath {
        for &j in below {
            above_count[j] += 1;
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| above_count[i] == 0).collect();
    let mut done = vec![false; n];
    let mut result = Vec::with_capacity(n);
    while result.len() < n {
        let next = match ready.pop_last() {
            Some(i) => i,
            None => match (0..n).rev().find(|&i| !done[i]) {
                Some(i) => i,
                None => break,
            },
        };
        done[next] = true;
        result.push(next);
        for &j in &beneath[next] {
            if !done[j] {
                above_count[j] -= 1;
                if above_count[j] == 0 {
                    ready.insert(j);
                }
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[derive(Default)]
    struct Fake {
        slaves: HashMap<DevNum, Vec<DevNum>>,
        loops: HashMap<DevNum, DevNum>,
        calls: Cell<usize>,
    }

    impl Fake {
        fn slave(mut self, dev: DevNum, on: &[DevNum]) -> Self {
            self.slaves.insert(dev, on.to_vec());
            self
        }

        fn loop_on(mut self, dev: DevNum, fs: DevNum) -> Self {
            self.loops.insert(dev, fs);
            self
        }
    }

    impl Topology for Fake {
        fn slaves(&self, dev: DevNum) -> Vec<DevNum> {
            self.calls.set(self.calls.get() + 1);
            self.slaves.get(&dev).cloned().unwrap_or_default()
        }

        fn loop_backing_fs(&self, dev: DevNum) -> Option<DevNum> {
            self.loops.get(&dev).copied()
        }
    }

    const fn d(major: u32, minor: u32) -> DevNum {
        DevNum::new(major, minor)
    }

    fn target(dev: DevNum, mount_point: &str) -> MountInfo {
        MountInfo {
            mount_id: 0,
            parent_id: 0,
            dev,
            root: "/".into(),
            mount_point: mount_point.into(),
            mount_options: vec!["rw".into()],
            fstype: "ext4".into(),
            source: "/dev/x".into(),
            super_options: vec!["rw".into()],
        }
    }

    fn order_of(targets: &[MountInfo], topo: &Fake) -> Order {
        order(targets, &vec![None; targets.len()], topo)
    }

    /// Every target precedes everything beneath it, and each index appears once.
    fn assert_consistent(o: &Order) {
        let mut sorted = o.freeze_order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..o.beneath.len()).collect::<Vec<_>>());
        let pos = |i: usize| o.freeze_order.iter().position(|&x| x == i).unwrap();
        for (i, below) in o.beneath.iter().enumerate() {
            for &j in below {
                if !o.beneath[j].contains(&i) {
                    assert!(pos(i) < pos(j), "{i} must freeze before {j}: {o:?}");
                }
            }
        }
    }

    #[test]
    fn independent_mounts_freeze_in_reverse_with_root_last() {
        let targets = [
            target(d(254, 1), "/"),
            target(d(254, 2), "/boot"),
            target(d(254, 15), "/boot/efi"),
            target(d(253, 0), "/home"),
        ];
        let topo = Fake::default()
            .slave(d(254, 1), &[d(254, 0)])
            .slave(d(254, 2), &[d(254, 0)])
            .slave(d(254, 15), &[d(254, 0)])
            .slave(d(253, 0), &[d(254, 3)])
            .slave(d(254, 3), &[d(254, 0)]);
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, vec![Vec::<usize>::new(); 4]);
        assert_eq!(o.freeze_order, [3, 2, 1, 0]);
        assert_eq!(o.thaw_order(), [0, 1, 2, 3]);
    }

    #[test]
    fn loop_on_a_file_in_another_target() {
        let targets = [
            target(d(254, 1), "/"),
            target(d(254, 16), "/data"),
            target(d(7, 0), "/mnt/img"),
            target(d(254, 32), "/logs"),
        ];
        let topo = Fake::default().loop_on(d(7, 0), d(254, 16));
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, [vec![], vec![], vec![1], vec![]]);
        assert_eq!(o.freeze_order, [3, 2, 1, 0]);
        assert_consistent(&o);
    }

    #[test]
    fn constraint_overrides_reverse_mount_order() {
        // /data is mounted after the image that lives on it (a remount, say).
        let targets = [
            target(d(254, 1), "/"),
            target(d(7, 0), "/mnt/img"),
            target(d(254, 16), "/data"),
        ];
        let topo = Fake::default().loop_on(d(7, 0), d(254, 16));
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, [vec![], vec![2], vec![]]);
        assert_eq!(o.freeze_order, [1, 2, 0]);
        assert_consistent(&o);
    }

    #[test]
    fn chain_of_three() {
        let targets = [
            target(d(254, 1), "/"),
            target(d(7, 0), "/outer"),
            target(d(7, 1), "/inner"),
        ];
        let topo = Fake::default()
            .loop_on(d(7, 0), d(254, 1))
            .loop_on(d(7, 1), d(7, 0));
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, [vec![], vec![0], vec![0, 1]]);
        assert_eq!(o.freeze_order, [2, 1, 0]);

        // The same stack listed in an order no real mount table has.
        let scrambled = [targets[2].clone(), targets[0].clone(), targets[1].clone()];
        let o = order_of(&scrambled, &topo);
        assert_eq!(o.beneath, [vec![1, 2], vec![], vec![1]]);
        assert_eq!(o.freeze_order, [0, 2, 1]);
        assert_consistent(&o);
    }

    #[test]
    fn dm_over_two_loops() {
        let targets = [
            target(d(254, 1), "/"),
            target(d(254, 16), "/srv"),
            target(d(253, 0), "/vol"),
            target(d(254, 32), "/other"),
        ];
        let topo = Fake::default()
            .slave(d(253, 0), &[d(7, 0), d(7, 1)])
            .loop_on(d(7, 0), d(254, 16))
            .loop_on(d(7, 1), d(254, 1));
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, [vec![], vec![], vec![0, 1], vec![]]);
        assert_eq!(o.freeze_order, [3, 2, 1, 0]);
        assert_consistent(&o);
    }

    #[test]
    fn partition_of_a_loop_device() {
        let targets = [target(d(254, 16), "/data"), target(d(259, 0), "/mnt/part")];
        let topo = Fake::default()
            .slave(d(259, 0), &[d(7, 0)])
            .loop_on(d(7, 0), d(254, 16))
            .slave(d(254, 16), &[d(254, 0)]);
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, [vec![], vec![0]]);
        assert_eq!(o.freeze_order, [1, 0]);
    }

    #[test]
    fn chain_through_a_filesystem_that_is_not_a_target() {
        // /t is a loop on a file in X (7:5, not frozen: excluded, say), and X is itself a
        // loop on a file in the target Y.
        let targets = [target(d(254, 1), "/y"), target(d(7, 6), "/t")];
        let topo = Fake::default()
            .loop_on(d(7, 6), d(7, 5))
            .loop_on(d(7, 5), d(254, 1));
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, [vec![], vec![0]]);
        assert_eq!(o.freeze_order, [1, 0]);
    }

    #[test]
    fn backing_fs_outside_the_targets_adds_nothing() {
        let targets = [target(d(254, 1), "/"), target(d(7, 0), "/mnt/img")];
        let topo = Fake::default().loop_on(d(7, 0), d(254, 99));
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, vec![Vec::<usize>::new(); 2]);
        assert_eq!(o.freeze_order, [1, 0]);
    }

    #[test]
    fn btrfs_subvolume_matched_by_st_dev() {
        // mountinfo says 0:40 for the btrfs mount, but files under it report 0:42.
        let targets = [
            target(d(0, 40), "/data"),
            target(d(7, 0), "/mnt/img"),
            target(d(7, 1), "/mnt/img2"),
        ];
        let topo = Fake::default()
            .loop_on(d(7, 0), d(0, 42))
            .loop_on(d(7, 1), d(0, 40));
        let o = order(&targets, &[Some(d(0, 42)), None, None], &topo);
        assert_eq!(o.beneath, [vec![], vec![0], vec![0]]);
        assert_eq!(o.freeze_order, [2, 1, 0]);
        // Without the st_dev only the mountinfo device matches; a short slice is fine.
        let o = order(&targets, &[], &topo);
        assert_eq!(o.beneath, [vec![], vec![], vec![0]]);
    }

    #[test]
    fn indirect_layering_through_a_btrfs_target() {
        // /inner's image is on /mid, matched by st_dev 0:42 only; what lies beneath /mid is
        // found from its mountinfo device 0:40, which the walk from 0:42 never visits.
        let targets = [
            target(d(254, 1), "/z"),
            target(d(0, 40), "/mid"),
            target(d(7, 1), "/inner"),
        ];
        let topo = Fake::default()
            .slave(d(0, 40), &[d(7, 0)])
            .loop_on(d(7, 0), d(254, 1))
            .loop_on(d(7, 1), d(0, 42));
        let o = order(&targets, &[None, Some(d(0, 42)), None], &topo);
        assert_eq!(o.beneath, [vec![], vec![0], vec![0, 1]]);
        assert_eq!(o.freeze_order, [2, 1, 0]);
    }

    #[test]
    fn cycles_terminate() {
        let targets = [
            target(d(7, 0), "/a"),
            target(d(7, 1), "/b"),
            target(d(254, 1), "/"),
        ];
        let topo = Fake::default()
            .loop_on(d(7, 0), d(7, 1))
            .loop_on(d(7, 1), d(7, 0))
            .slave(d(254, 1), &[d(253, 0)])
            .slave(d(253, 0), &[d(253, 1)])
            .slave(d(253, 1), &[d(253, 0), d(254, 1)]);
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, [vec![1], vec![0], vec![]]);
        assert_eq!(o.freeze_order, [2, 1, 0]);
        assert_consistent(&o);
        assert!(topo.calls.get() < 20);
    }

    #[test]
    fn self_loop_is_not_beneath_itself() {
        let targets = [target(d(7, 0), "/a")];
        let topo = Fake::default().loop_on(d(7, 0), d(7, 0));
        let o = order_of(&targets, &topo);
        assert_eq!(o.beneath, [Vec::<usize>::new()]);
        assert_eq!(o.freeze_order, [0]);
    }

    #[test]
    fn no_targets() {
        let o = order(&[], &[], &Fake::default());
        assert_eq!(o, Order::default());
    }

    /// A miniature /sys with the same symlink layout as the real one.
    struct FakeSys {
        dir: tempfile::TempDir,
    }

    impl FakeSys {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("dev/block")).unwrap();
            FakeSys { dir }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// Creates devices/<rel> with a dev file and the dev/block/M:m link to it.
        fn device(&self, rel: &str, dev: DevNum) -> PathBuf {
            let path = self.root().join("devices").join(rel);
            fs::create_dir_all(&path).unwrap();
            fs::write(path.join("dev"), format!("{dev}\n")).unwrap();
            symlink(&path, self.root().join("dev/block").join(dev.to_string())).unwrap();
            path
        }
    }

    #[test]
    fn sysfs_partition_and_slaves() {
        let sys = FakeSys::new();
        sys.device("pci0/virtio2/block/vda", d(254, 0));
        let vda1 = sys.device("pci0/virtio2/block/vda/vda1", d(254, 1));
        fs::write(vda1.join("partition"), "1\n").unwrap();
        let loop0 = sys.device("virtual/block/loop0", d(7, 0));
        let loop1 = sys.device("virtual/block/loop1", d(7, 1));
        let dm0 = sys.device("virtual/block/dm-0", d(253, 0));
        fs::create_dir(dm0.join("slaves")).unwrap();
        symlink(&loop1, dm0.join("slaves/loop1")).unwrap();
        symlink(&loop0, dm0.join("slaves/loop0")).unwrap();
        symlink(&vda1, dm0.join("slaves/vda1")).unwrap();

        assert_eq!(slaves_in(sys.root(), d(254, 1)), [d(254, 0)]);
        assert_eq!(slaves_in(sys.root(), d(254, 0)), []);
        assert_eq!(
            slaves_in(sys.root(), d(253, 0)),
            [d(7, 0), d(7, 1), d(254, 1)]
        );
        assert_eq!(slaves_in(sys.root(), d(1, 2)), []);
    }

    #[test]
    fn sysfs_loop_backing_file() {
        let sys = FakeSys::new();
        let image = sys.root().join("disk image.img");
        fs::write(&image, b"").unwrap();
        let expected = DevNum::from_dev_t(fs::metadata(&image).unwrap().dev());

        let loop0 = sys.device("virtual/block/loop0", d(7, 0));
        fs::create_dir(loop0.join("loop")).unwrap();
        let mut contents = image.as_os_str().as_bytes().to_vec();
        contents.push(b'\n');
        fs::write(loop0.join("loop/backing_file"), contents).unwrap();

        let loop1 = sys.device("virtual/block/loop1", d(7, 1));
        fs::create_dir(loop1.join("loop")).unwrap();
        let deleted = format!("{} (deleted)\n", image.display());
        fs::write(loop1.join("loop/backing_file"), deleted).unwrap();

        let loop2 = sys.device("virtual/block/loop2", d(7, 2));
        fs::create_dir(loop2.join("loop")).unwrap();
        fs::write(loop2.join("loop/backing_file"), "/nonexistent/file.img\n").unwrap();

        // An unbound loop device has no loop/ directory.
        sys.device("virtual/block/loop3", d(7, 3));

        assert_eq!(loop_backing_fs_in(sys.root(), d(7, 0)), Some(expected));
        assert_eq!(loop_backing_fs_in(sys.root(), d(7, 1)), None);
        assert_eq!(loop_backing_fs_in(sys.root(), d(7, 2)), None);
        assert_eq!(loop_backing_fs_in(sys.root(), d(7, 3)), None);
        assert_eq!(loop_backing_fs_in(sys.root(), d(1, 2)), None);
    }

    #[test]
    fn real_sysfs_unknown_device_is_empty() {
        let nowhere = d(4095, 1_048_575);
        assert_eq!(Sysfs.slaves(nowhere), []);
        assert_eq!(Sysfs.loop_backing_fs(nowhere), None);
    }
}
