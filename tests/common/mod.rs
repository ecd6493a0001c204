//! Shared fixtures for quiesce's integration tests.
//!
//! Every fixture works on loop devices backed by sparse image files inside a
//! scratch directory of its own (`scratch_dir()`), so tests can run in
//! parallel threads and never touch a real filesystem. The host's `/`,
//! `/work` and `/tmp` all live on the same disk: nothing here ever freezes a
//! filesystem other than a loop mount created by these fixtures
//! ([`LoopFs::fsfreeze`] checks that before it runs `fsfreeze -f`), and
//! [`is_frozen`] detects a freeze without freezing anything.
//!
//! Everything needs root (loop devices, mount, FIFREEZE): start each test
//! with [`require_root`], which fails the test (never skips it) otherwise.
//!
//! Only std and the dev-dependency `tempfile` are used; the system tools
//! (losetup, mkfs.ext4, mkfs.xfs, mount, umount, fsfreeze, e2fsck, dumpe2fs,
//! xfs_repair, xfs_logprint, blkid, findmnt, cp, sync, sh) are run with
//! `std::process::Command`.
//!
//! # Drop order
//!
//! Guards clean up in `Drop` (best effort, never panicking): declare them in
//! the order they were built, so Rust drops them in reverse:
//!
//! ```ignore
//! let dir = scratch_dir();                                      // dropped last
//! let outer = LoopFs::create(dir.path(), "outer", Fs::Ext4, 128);
//! // A stacked filesystem: its image lives inside `outer`'s mount.
//! let inner = LoopFs::create(&outer.mount, "inner", Fs::Xfs, 300); // dropped first
//! let w = Writer::start(&inner.path("file"));                    // dropped before inner
//! ```
//!
//! Never bind-mount anything from outside a scratch directory: if a guard were
//! dropped after its `TempDir`, the recursive removal would go through the
//! mount. [`bind_mount`] refuses such sources.

#![allow(dead_code)]

pub mod daemon;
pub mod freeze_cli;
pub mod qga;

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// The message [`require_root`] panics with.
pub const NEEDS_ROOT: &str =
    "this test needs root (loop devices, mount, FIFREEZE): run it as root, e.g. `sudo scripts/test.sh`";

/// Prefix of every scratch directory (and of the tmpfs source name), so
/// leftovers are easy to find: `findmnt | grep quiesce-test`.
pub const SCRATCH_PREFIX: &str = "quiesce-test-";

/// How long [`is_frozen`] lets its probe writer run before calling the
/// filesystem frozen.
pub const FROZEN_PROBE_WAIT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// Root, scratch directories, running commands
// ---------------------------------------------------------------------------

/// Panics with [`NEEDS_ROOT`] unless the effective uid is 0.
///
/// Tests that need loop devices must call this first: they fail, never skip,
/// without root.
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|e| panic!("cannot read /proc/self/status to check for root: {e}"));
    // "Uid:\treal\teffective\tsaved\tfs"
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|field| field.parse::<u32>().ok());
    match euid {
        Some(0) => {}
        Some(_) => panic!("{NEEDS_ROOT}"),
        None => panic!("cannot find the effective uid in /proc/self/status; {NEEDS_ROOT}"),
    }
}

/// A fresh scratch directory `/tmp/quiesce-test-XXXXXX`, removed when dropped.
///
/// Declare it before the fixtures created in it so that it is dropped after
/// them.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir_in("/tmp")
        .unwrap_or_else(|e| panic!("cannot create a scratch directory under /tmp: {e}"))
}

/// Finds `cmd` on PATH, then in the sbin directories that a non-login root
/// shell may lack on its PATH. Returns `cmd` unchanged if not found (the spawn
/// then reports the error).
fn resolve(cmd: &str) -> PathBuf {
    if cmd.contains('/') {
        return PathBuf::from(cmd);
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(PathBuf::from);
    for dir in std::env::split_paths(&path_var).chain(extra) {
        let candidate = dir.join(cmd);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(cmd)
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    let mut line = String::from(cmd);
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// Runs a command; `None` if it could not be started. Never panics.
fn try_run(cmd: &str, args: &[&str]) -> Option<(i32, String, String)> {
    let out = Command::new(resolve(cmd))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs a command and returns whether it exited 0. Never panics: for `Drop`.
fn quiet(cmd: &str, args: &[&str]) -> bool {
    matches!(try_run(cmd, args), Some((0, _, _)))
}

/// Runs `cmd args...` and returns `(exit code, stdout, stderr)`; the exit code
/// is -1 if the command was killed by a signal. Panics only if the command
/// cannot be started at all.
pub fn run_status(cmd: &str, args: &[&str]) -> (i32, String, String) {
    try_run(cmd, args).unwrap_or_else(|| {
        panic!(
            "cannot start `{}`: is `{cmd}` installed (PATH and /usr/sbin searched)?",
            command_line(cmd, args)
        )
    })
}

/// Runs `cmd args...` and returns its stdout; panics with the exit code,
/// stderr and stdout if it does not exit 0.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = run_status(cmd, args);
    if code != 0 {
        panic!(
            "`{}` failed with exit code {code}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
            command_line(cmd, args)
        );
    }
    stdout
}

/// The path as `&str`, for command arguments; panics on non-UTF-8 paths
/// (scratch paths are always UTF-8).
fn ps(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("path is not UTF-8: {}", path.display()))
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------
// Mount table and device helpers
// ---------------------------------------------------------------------------

/// Whether `path` is a mount point (`findmnt --mountpoint`). Never panics.
pub fn is_mounted(path: &Path) -> bool {
    match path.to_str() {
        Some(p) => quiet("findmnt", &["-n", "--mountpoint", p]),
        None => false,
    }
}

/// The filesystem type mounted at `path` (`findmnt -no FSTYPE`), if any.
pub fn mounted_fstype(path: &Path) -> Option<String> {
    let (code, out, _) = try_run("findmnt", &["-n", "-o", "FSTYPE", "--mountpoint", ps(path)])?;
    let fstype = out.lines().last()?.trim().to_string();
    (code == 0 && !fstype.is_empty()).then_some(fstype)
}

/// Loop devices whose backing file is `image` (`losetup -j`): empty once the
/// fixtures using it are dropped.
pub fn loop_devices_backing(image: &Path) -> Vec<PathBuf> {
    run("losetup", &["-l", "-n", "-O", "NAME", "-j", ps(image)])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Splits a `dev_t` (as in `st_dev` / `st_rdev`) into (major, minor), like
/// glibc's `major()` / `minor()`.
pub fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major, minor)
}

/// `"MAJ:MIN"` of the device that holds the filesystem of `path` (its
/// `st_dev`), as in /proc/self/mountinfo.
pub fn st_dev_major_minor(path: &Path) -> String {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    let (major, minor) = split_dev(meta.dev());
    format!("{major}:{minor}")
}

/// `fsfreeze -u MOUNT` ignoring every error (e.g. "not frozen"), and only if
/// `mount` is still the mount of the device `dev` (after an unmount the path
/// would name the root disk). Never panics.
fn thaw_own_quietly(mount: &Path, dev: u64) {
    let still_ours = fs::metadata(mount).is_ok_and(|m| m.dev() == dev);
    if let (true, Some(m)) = (still_ours, mount.to_str()) {
        let _ = quiet("fsfreeze", &["-u", m]);
    }
}

/// Unmounts `target`: a few tries 100 ms apart (a process that was blocked
/// on a frozen filesystem may still hold it briefly), then `umount -l`.
/// Never panics.
fn unmount_best_effort(target: &Path) {
    let Some(t) = target.to_str() else { return };
    for _ in 0..20 {
        if quiet("umount", &[t]) || !is_mounted(target) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("quiesce test fixtures: {t} still busy, unmounting lazily");
    let _ = quiet("umount", &["-l", t]);
}

/// `losetup -d`, retried a few times, then waits (at most 5 s) until the device
/// is really detached: the kernel detaches a device that something still has
/// open (a udev probe, writeback on a loaded machine) only at its last close,
/// and a fixture that is dropped must leave nothing behind. Never panics.
fn detach_best_effort(device: &Path) {
    let Some(d) = device.to_str() else { return };
    let mut detached = false;
    for _ in 0..5 {
        if quiet("losetup", &["-d", d]) {
            detached = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    if !detached {
        eprintln!("quiesce test fixtures: could not detach {d}");
        return;
    }
    // /sys/block/loopN/loop exists while the device is bound to a file.
    let Some(name) = device.file_name() else {
        return;
    };
    let bound = Path::new("/sys/block").join(name).join("loop");
    let deadline = Instant::now() + Duration::from_secs(5);
    while bound.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if bound.exists() {
        eprintln!("quiesce test fixtures: {d} still bound 5 s after losetup -d");
    }
}

/// Stops a child process: signal `sig` (`Some("TERM")`; `None` when the caller
/// has already asked it to end, e.g. by closing its stdin), wait at most
/// `within` for it to exit, then SIGKILL and reap it. Never panics.
pub fn stop_child(child: &mut Child, sig: Option<&str>, within: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(sig) = sig {
        let _ = run_status("kill", &[&format!("-{sig}"), &child.id().to_string()]);
    }
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "quiesce test fixtures: process {} did not end within {within:?}: SIGKILL",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Attaches `image` to a free loop device with `losetup -f --show
/// --direct-io=off` (retried: concurrent attaches can race).
fn attach_loop(image: &Path, read_only: bool) -> PathBuf {
    let mut args = vec!["-f", "--show", "--direct-io=off"];
    if read_only {
        args.push("-r");
    }
    args.push(ps(image));
    let mut last_error = String::new();
    for attempt in 1..=5u64 {
        let (code, stdout, stderr) = run_status("losetup", &args);
        let device = stdout.trim();
        if code == 0 && device.starts_with("/dev/") {
            return PathBuf::from(device);
        }
        last_error = format!("exit code {code}, stderr: {}", stderr.trim());
        thread::sleep(Duration::from_millis(100 * attempt));
    }
    panic!(
        "`{}` failed 5 times; last: {last_error}",
        command_line("losetup", &args)
    );
}

/// A loop device attached by these fixtures; detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    pub device: PathBuf,
}

impl LoopDevice {
    /// `losetup -f --show --direct-io=off [-r] IMAGE`.
    pub fn attach(image: &Path, read_only: bool) -> LoopDevice {
        LoopDevice {
            device: attach_loop(image, read_only),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        detach_best_effort(&self.device);
    }
}

// ---------------------------------------------------------------------------
// LoopFs
// ---------------------------------------------------------------------------

/// Filesystem type of a [`LoopFs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fs {
    Ext4,
    Xfs,
}

impl Fs {
    /// `"ext4"` / `"xfs"`, as in mount's `-t` and mountinfo.
    pub fn as_str(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }

    /// Smallest image [`LoopFs::create`] makes: mkfs.xfs refuses filesystems
    /// under 300 MB.
    pub fn min_size_mib(self) -> u64 {
        match self {
            Fs::Ext4 => 32,
            Fs::Xfs => 300,
        }
    }

    /// Both types, for tests that run over each.
    pub fn all() -> [Fs; 2] {
        [Fs::Ext4, Fs::Xfs]
    }
}

impl std::fmt::Display for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Mount points and `dev_t`s of the live [`LoopFs`]es of this process, so
/// that dropping a stacked filesystem can first thaw the filesystems its
/// image lives on.
static LIVE_LOOP_MOUNTS: Mutex<Vec<(PathBuf, u64)>> = Mutex::new(Vec::new());

fn live_loop_mounts() -> std::sync::MutexGuard<'static, Vec<(PathBuf, u64)>> {
    LIVE_LOOP_MOUNTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A filesystem on a loop device over a sparse image file, mounted read-write.
///
/// `create(dir, name, ..)` makes `dir/name.img` and mounts it at `dir/name`.
/// For a stacked filesystem (a loop image stored on another loop filesystem)
/// pass another `LoopFs`'s mount as `dir`:
/// `LoopFs::create(&outer.mount, "inner", Fs::Xfs, 300)`, and declare
/// `inner` after `outer` so it is dropped first.
///
/// Drop (best effort, never panics): thaws the filesystems of this process's
/// other `LoopFs`es that hold its image (outermost first; a thaw would
/// otherwise block on them), thaws itself, unmounts (retrying, then lazily)
/// and detaches the loop device.
#[derive(Debug)]
pub struct LoopFs {
    /// `dir/name.img`, the sparse backing file.
    pub image: PathBuf,
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// `dir/name`, where it is mounted.
    pub mount: PathBuf,
    pub fs: Fs,
    /// Size of the image (after raising it to [`Fs::min_size_mib`]).
    pub size_mib: u64,
    mounted: bool,
    /// `st_rdev` of `device`, recorded when mounted.
    rdev: u64,
}

impl LoopFs {
    /// Creates `dir/name.img` (sparse, `size_mib` MiB, raised to at least
    /// [`Fs::min_size_mib`]), attaches it with `losetup -f --show
    /// --direct-io=off`, makes the filesystem (`mkfs.ext4 -q -F` with eager
    /// inode-table and journal init, so no ext4lazyinit thread writes behind
    /// the test's back; `mkfs.xfs -q -f`) and mounts it at `dir/name`.
    /// Panics (after cleaning up) with the failing command's stderr.
    pub fn create(dir: &Path, name: &str, fs: Fs, size_mib: u64) -> LoopFs {
        assert!(
            !name.is_empty() && name != "." && name != ".." && !name.contains('/'),
            "LoopFs name must be a plain file name, got {name:?}"
        );
        let dir = fs::canonicalize(dir)
            .unwrap_or_else(|e| panic!("LoopFs directory {} is unusable: {e}", dir.display()));
        let size_mib = size_mib.max(fs.min_size_mib());
        let image = dir.join(format!("{name}.img"));
        let mount = dir.join(name);

        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&image)
            .unwrap_or_else(|e| panic!("cannot create image {}: {e}", image.display()));
        file.set_len(size_mib << 20)
            .unwrap_or_else(|e| panic!("cannot size image {}: {e}", image.display()));
        drop(file);

        let device = attach_loop(&image, false);
        // From here on Drop detaches the device if a later step panics.
        let mut me = LoopFs {
            image,
            device,
            mount,
            fs,
            size_mib,
            mounted: false,
            rdev: 0,
        };
        me.rdev = me.dev_t();
        let dev = ps(&me.device).to_string();
        match fs {
            Fs::Ext4 => run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-E",
                    "lazy_itable_init=0,lazy_journal_init=0",
                    &dev,
                ],
            ),
            Fs::Xfs => run("mkfs.xfs", &["-q", "-f", &dev]),
        };
        fs::create_dir_all(&me.mount)
            .unwrap_or_else(|e| panic!("cannot create mount point {}: {e}", me.mount.display()));
        run("mount", &["-t", fs.as_str(), &dev, ps(&me.mount)]);
        me.mounted = true;
        live_loop_mounts().push((me.mount.clone(), me.rdev));
        me
    }

    /// `self.mount.join(rel)`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mount.join(rel)
    }

    /// The loop device's raw `dev_t` (`st_rdev`); equals `st_dev` of every
    /// file in the filesystem.
    pub fn dev_t(&self) -> u64 {
        fs::metadata(&self.device)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", self.device.display()))
            .rdev()
    }

    /// `"MAJ:MIN"` of the loop device, as in /proc/self/mountinfo and
    /// `lsblk -no MAJ:MIN`.
    pub fn major_minor(&self) -> String {
        let (major, minor) = split_dev(self.dev_t());
        format!("{major}:{minor}")
    }

    /// `sync -f` on the mount (syncfs of this filesystem only).
    pub fn sync(&self) {
        run("sync", &["-f", ps(&self.mount)]);
    }

    /// Panics unless `self.mount` is, right now, the mount of this loop
    /// device: `fsfreeze` acts on whatever filesystem holds the path, and
    /// after an unmount that would be /tmp, i.e. the root disk.
    fn assert_own_mount(&self) {
        let mount_dev = fs::metadata(&self.mount)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", self.mount.display()))
            .dev();
        assert!(
            self.mounted && mount_dev == self.rdev,
            "refusing to run fsfreeze: {} is not (or no longer) the mount of {}",
            self.mount.display(),
            self.device.display()
        );
    }

    /// Freezes this filesystem with util-linux `fsfreeze -f`, after checking
    /// that the mount point really is this loop device (never / or /tmp).
    /// Drop thaws it again.
    pub fn fsfreeze(&self) {
        self.assert_own_mount();
        run("fsfreeze", &["-f", ps(&self.mount)]);
    }

    /// `fsfreeze -u` on this filesystem; panics if it fails (e.g. it was not
    /// frozen).
    pub fn fsunfreeze(&self) {
        self.assert_own_mount();
        run("fsfreeze", &["-u", ps(&self.mount)]);
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            // Thaw the filesystems our image lives on, outermost first:
            // thawing or unmounting us writes through the loop device.
            let mut holders: Vec<(PathBuf, u64)> = live_loop_mounts()
                .iter()
                .filter(|(m, _)| *m != self.mount && self.image.starts_with(m))
                .cloned()
                .collect();
            holders.sort_by_key(|(m, _)| m.components().count());
            for (holder, dev) in &holders {
                thaw_own_quietly(holder, *dev);
            }
            thaw_own_quietly(&self.mount, self.rdev);
            unmount_best_effort(&self.mount);
            let mut live = live_loop_mounts();
            if let Some(i) = live.iter().position(|(m, _)| *m == self.mount) {
                live.swap_remove(i);
            }
        }
        detach_best_effort(&self.device);
    }
}

// ---------------------------------------------------------------------------
// Extra mounts
// ---------------------------------------------------------------------------

/// An extra mount made by these fixtures: unmounted on drop (retrying, then
/// lazily), then its own loop device (if any) is detached.
#[derive(Debug)]
pub struct Mount {
    pub target: PathBuf,
    /// The loop device this fixture attached for the mount, if any.
    pub loop_device: Option<LoopDevice>,
}

impl Mount {
    /// `self.target.join(rel)`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.target.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount_best_effort(&self.target);
        // `loop_device` is dropped (detached) after this.
    }
}

fn inside_scratch_dir(path: &Path) -> bool {
    path.components().any(|c| match c {
        Component::Normal(name) => name.to_string_lossy().starts_with(SCRATCH_PREFIX),
        _ => false,
    })
}

/// `mount --bind SRC DST`. `dst` is created if missing (a directory, or an
/// empty file when `src` is not a directory). `src` must lie inside a
/// `quiesce-test-*` scratch directory (see the module docs).
pub fn bind_mount(src: &Path, dst: &Path) -> Mount {
    let src = fs::canonicalize(src)
        .unwrap_or_else(|e| panic!("bind mount source {} is unusable: {e}", src.display()));
    assert!(
        inside_scratch_dir(&src),
        "refusing to bind-mount {}: only paths inside a {SCRATCH_PREFIX}* scratch directory",
        src.display()
    );
    if !dst.exists() {
        if src.is_dir() {
            fs::create_dir_all(dst)
        } else {
            File::create(dst).map(drop)
        }
        .unwrap_or_else(|e| panic!("cannot create bind mount target {}: {e}", dst.display()));
    }
    run("mount", &["--bind", ps(&src), ps(dst)]);
    Mount {
        target: dst.to_path_buf(),
        loop_device: None,
    }
}

/// Mounts the filesystem in `src` (an image file or a block device) read-only
/// at `dst` (created if missing). The type comes from `blkid -p`. An image
/// file gets a read-only loop device of its own (detached on drop). The mount
/// never writes to the image: ext4 gets `ro,noload`, xfs `ro,norecovery,nouuid`
/// (nouuid: the original may be mounted too). A block device already mounted
/// read-write elsewhere cannot be mounted again read-only (EBUSY): copy the
/// image or use [`bind_mount`] plus a remount instead.
pub fn ro_mount_of(src: &Path, dst: &Path) -> Mount {
    let fstype = run("blkid", &["-p", "-o", "value", "-s", "TYPE", ps(src)])
        .trim()
        .to_string();
    assert!(
        !fstype.is_empty(),
        "blkid found no filesystem in {}",
        src.display()
    );
    let meta = fs::metadata(src).unwrap_or_else(|e| panic!("cannot stat {}: {e}", src.display()));
    let loop_device = if meta.file_type().is_block_device() {
        None
    } else {
        Some(LoopDevice::attach(src, true))
    };
    let device = loop_device
        .as_ref()
        .map_or(src.to_path_buf(), |l| l.device.clone());
    let options = match fstype.as_str() {
        "ext4" | "ext3" | "ext2" => "ro,noload",
        "xfs" => "ro,norecovery,nouuid",
        _ => "ro",
    };
    fs::create_dir_all(dst)
        .unwrap_or_else(|e| panic!("cannot create mount point {}: {e}", dst.display()));
    let (code, stdout, stderr) = run_status(
        "mount",
        &["-t", &fstype, "-o", options, ps(&device), ps(dst)],
    );
    if code != 0 {
        drop(loop_device); // detach before panicking
        panic!(
            "read-only mount of {} at {} failed with exit code {code}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
            src.display(),
            dst.display()
        );
    }
    Mount {
        target: dst.to_path_buf(),
        loop_device,
    }
}

/// Mounts a small tmpfs (source name `quiesce-test-tmpfs`) at `dst`
/// (created if missing).
pub fn tmpfs_mount(dst: &Path) -> Mount {
    fs::create_dir_all(dst)
        .unwrap_or_else(|e| panic!("cannot create mount point {}: {e}", dst.display()));
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=16m,mode=0755",
            "quiesce-test-tmpfs",
            ps(dst),
        ],
    );
    Mount {
        target: dst.to_path_buf(),
        loop_device: None,
    }
}

// ---------------------------------------------------------------------------
// Writers and freeze detection
// ---------------------------------------------------------------------------

/// A child process `sh -c 'printf probe > "$1"' sh PATH`: a create + write
/// that blocks (uninterruptibly) while the filesystem of PATH is frozen.
///
/// Drop: a writer that is still running is sent SIGKILL, which only takes
/// effect once its filesystem is thawed; a detached thread reaps it (Drop
/// never waits).
#[derive(Debug)]
pub struct Writer {
    child: Option<Child>,
    path: PathBuf,
    status: Option<ExitStatus>,
    stderr: String,
    remove_on_drop: bool,
}

impl Writer {
    /// Starts writing `probe` to `path`. The file is left in place.
    pub fn start(path: &Path) -> Writer {
        Self::spawn(path.to_path_buf(), false)
    }

    /// Starts a writer on a fresh, unique hidden file in `dir`
    /// (`.quiesce-probe-*`). The file is removed when the writer is dropped,
    /// or, if the writer is blocked then, once it finishes after the thaw.
    pub fn start_probe(dir: &Path) -> Writer {
        Self::spawn(
            dir.join(format!(".quiesce-probe-{}", unique_suffix())),
            true,
        )
    }

    fn spawn(path: PathBuf, remove_on_drop: bool) -> Writer {
        let child = Command::new(resolve("sh"))
            .arg("-c")
            .arg(r#"printf probe > "$1""#)
            .arg("sh")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn writer for {}: {e}", path.display()));
        Writer {
            child: Some(child),
            path,
            status: None,
            stderr: String::new(),
            remove_on_drop,
        }
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the writer has exited, polling every 10 ms for up to `d`.
    pub fn finished_within(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            if self.poll() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }

    fn poll(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut self.stderr);
                }
                self.status = Some(status);
                true
            }
            Ok(None) => false,
            Err(e) => panic!("cannot poll writer for {}: {e}", self.path.display()),
        }
    }

    /// `Some(true)` if it exited 0, `Some(false)` if it failed, `None` while it
    /// is running.
    pub fn exit_ok(&mut self) -> Option<bool> {
        self.poll();
        self.status.map(|s| s.success())
    }

    /// The writer's stderr (empty until it has finished).
    pub fn stderr(&self) -> &str {
        &self.stderr
    }

    /// Panics if the writer finishes within `d`.
    pub fn assert_blocked_for(&mut self, d: Duration) {
        if self.finished_within(d) {
            panic!(
                "writer finished although the filesystem should be frozen: {} ({}; stderr: {})",
                self.path.display(),
                self.status.expect("finished writer has a status"),
                self.stderr.trim()
            );
        }
    }

    /// Panics unless the writer finishes, successfully, within `d`.
    pub fn assert_finishes_within(&mut self, d: Duration) {
        if !self.finished_within(d) {
            panic!(
                "writer to {} still blocked after {d:?}: is the filesystem still frozen?",
                self.path.display()
            );
        }
        let status = self.status.expect("finished writer has a status");
        assert!(
            status.success(),
            "writer to {} failed ({status}): {}",
            self.path.display(),
            self.stderr.trim()
        );
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let finished = self.status.is_some() || matches!(child.try_wait(), Ok(Some(_)));
        if finished {
            if self.remove_on_drop {
                let _ = fs::remove_file(&self.path);
            }
            return;
        }
        // Blocked in the kernel: SIGKILL is acted on after the thaw. Reap it
        // (and remove the probe file) on a thread; never wait here.
        let _ = child.kill();
        let path = std::mem::take(&mut self.path);
        let remove = self.remove_on_drop;
        let _ = thread::Builder::new()
            .name("quiesce-test-writer-reaper".into())
            .spawn(move || {
                let _ = child.wait();
                if remove {
                    let _ = fs::remove_file(&path);
                }
            });
    }
}

/// Whether a create + write of a fresh file in `mount` (a directory on the
/// filesystem to test) stays blocked for `d`. Never freezes anything.
///
/// A write that fails quickly (e.g. a read-only filesystem) counts as not
/// blocked. When it blocks, the probe writer is left behind until the thaw:
/// it then creates its (empty) `.quiesce-probe-*` file, dies, and a
/// background thread removes the file, so such a file may briefly appear
/// after the thaw.
pub fn writer_blocks(mount: &Path, d: Duration) -> bool {
    assert!(
        mount.is_dir(),
        "writer_blocks: {} is not a directory",
        mount.display()
    );
    let mut probe = Writer::start_probe(mount);
    !probe.finished_within(d)
}

/// [`writer_blocks`] with [`FROZEN_PROBE_WAIT`] (300 ms): whether the
/// filesystem of `mount` is frozen, found without freezing anything (never
/// use `fsfreeze -f` to test this).
pub fn is_frozen(mount: &Path) -> bool {
    writer_blocks(mount, FROZEN_PROBE_WAIT)
}

// ---------------------------------------------------------------------------
// Data patterns
// ---------------------------------------------------------------------------

const BLOCK: usize = 4096;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Block `index` of the pattern: its index (little-endian u64) then
/// pseudo-random words derived from it, so no block is zero or a copy of
/// another.
fn pattern_block(index: u64, buf: &mut [u8; BLOCK]) {
    for (word, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let value = if word == 0 {
            index
        } else {
            splitmix64((index << 9) | word as u64)
        };
        chunk.copy_from_slice(&value.to_le_bytes());
    }
}

/// Writes `mib` MiB of the deterministic pattern to `path` (created or
/// truncated), without fsync: the data stays dirty in the page cache.
pub fn fill_dirty(path: &Path, mib: u64) {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("fill_dirty: cannot open {}: {e}", path.display()));
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut buf = [0u8; BLOCK];
    for index in 0..mib * (1 << 20) / BLOCK as u64 {
        pattern_block(index, &mut buf);
        out.write_all(&buf)
            .unwrap_or_else(|e| panic!("fill_dirty: cannot write {}: {e}", path.display()));
    }
    out.flush()
        .unwrap_or_else(|e| panic!("fill_dirty: cannot write {}: {e}", path.display()));
}

/// Checks that `path` holds exactly the `mib` MiB written by [`fill_dirty`];
/// the error says what differs.
pub fn verify_pattern(path: &Path, mib: u64) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    if len != mib << 20 {
        return Err(format!(
            "{} is {len} bytes, expected {} ({mib} MiB)",
            path.display(),
            mib << 20
        ));
    }
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut expected = [0u8; BLOCK];
    let mut actual = [0u8; BLOCK];
    for index in 0..len / BLOCK as u64 {
        input
            .read_exact(&mut actual)
            .map_err(|e| format!("cannot read {} block {index}: {e}", path.display()))?;
        pattern_block(index, &mut expected);
        if actual != expected {
            let found = u64::from_le_bytes(actual[..8].try_into().expect("8 bytes"));
            return Err(format!(
                "{}: block {index} (offset {}) differs from the pattern (its first word is {found:#x}{})",
                path.display(),
                index * BLOCK as u64,
                if actual.iter().all(|&b| b == 0) {
                    ", the block is all zeros"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// Whether `path` holds exactly the `mib` MiB written by [`fill_dirty`].
pub fn expected_pattern_ok(path: &Path, mib: u64) -> bool {
    match verify_pattern(path, mib) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("pattern check failed: {why}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Checking a copy of an image (what a VM snapshot would hold)
// ---------------------------------------------------------------------------

/// A copy of a filesystem image that passed the filesystem checker.
#[derive(Debug)]
pub struct CheckedCopy {
    /// The copy, in the `scratch` directory given to [`check_image_copy`].
    pub image: PathBuf,
    pub fs: Fs,
    /// Whether the copy as taken needed a journal/log replay: ext4's
    /// `needs_recovery` feature flag (cleared by a freeze, so a copy taken
    /// while frozen has it false), xfs's log state from `xfs_logprint -t`
    /// (xfs leaves the log dirty even when frozen; mounting replays it).
    pub needed_log_replay: bool,
    /// The checker's output (`e2fsck -fn` / `xfs_repair -n`).
    pub check_output: String,
}

impl CheckedCopy {
    /// Mounts the (checked, replayed) copy read-only at `at` on a loop device
    /// of its own; the guard unmounts and detaches it.
    pub fn mount_ro(&self, at: &Path) -> Mount {
        ro_mount_of(&self.image, at)
    }
}

/// Copies `image` (`cp --sparse=always`, so take it while the filesystem is
/// frozen or after a sync) into `scratch` and checks the copy:
/// - ext4: replays the journal if `needs_recovery` is set (`e2fsck -E
///   journal_only -y`, what a mount of the restored snapshot would do), then
///   `e2fsck -fn` must exit 0;
/// - xfs: attaches the copy to a loop device, mounts it (`nouuid`; replays
///   the log) and unmounts it, then `xfs_repair -n` on the device must exit 0.
///
/// Panics with the checker's output on failure. Never touches `image`.
pub fn check_image_copy(image: &Path, fs: Fs, scratch: &Path) -> CheckedCopy {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let base = format!("{stem}-copy-{}", unique_suffix());
    let copy = scratch.join(format!("{base}.img"));
    run("cp", &["--sparse=always", ps(image), ps(&copy)]);
    let c = ps(&copy);

    let (needed_log_replay, check_output) = match fs {
        Fs::Ext4 => {
            let header = run("dumpe2fs", &["-h", c]);
            let needs_recovery = header
                .lines()
                .find(|l| l.starts_with("Filesystem features:"))
                .is_some_and(|l| l.split_whitespace().any(|w| w == "needs_recovery"));
            if needs_recovery {
                let (code, out, err) = run_status("e2fsck", &["-E", "journal_only", "-y", c]);
                assert!(
                    code == 0 || code == 1,
                    "journal replay (`e2fsck -E journal_only -y`) on the copy of {} failed with exit code {code}\n{out}\n{err}",
                    image.display()
                );
            }
            let (code, out, err) = run_status("e2fsck", &["-fn", c]);
            let output = format!("{out}{err}");
            assert!(
                code == 0,
                "e2fsck -fn on the copy {} of {} failed with exit code {code}:\n{output}",
                copy.display(),
                image.display()
            );
            (needs_recovery, output)
        }
        Fs::Xfs => {
            let logprint = run("xfs_logprint", &["-t", c]);
            let dirty = logprint.contains("<DIRTY>");
            let device = LoopDevice::attach(&copy, false);
            let dev = ps(&device.device).to_string();
            let replay_dir = scratch.join(format!("{base}.replay"));
            fs::create_dir_all(&replay_dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", replay_dir.display()));
            {
                run(
                    "mount",
                    &["-t", "xfs", "-o", "nouuid", &dev, ps(&replay_dir)],
                );
                let replay_mount = Mount {
                    target: replay_dir.clone(),
                    loop_device: None,
                };
                run("umount", &[ps(&replay_dir)]);
                drop(replay_mount); // nothing left to unmount
            }
            let _ = fs::remove_dir(&replay_dir);
            let (code, out, err) = run_status("xfs_repair", &["-n", &dev]);
            let output = format!("{out}{err}");
            assert!(
                code == 0,
                "xfs_repair -n on the copy {} of {} failed with exit code {code}:\n{output}",
                copy.display(),
                image.display()
            );
            drop(device);
            (dirty, output)
        }
    };
    CheckedCopy {
        image: copy,
        fs,
        needed_log_replay,
        check_output,
    }
}
