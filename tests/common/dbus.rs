//! A private D-Bus system bus (Debian's `dbus-daemon`, package `dbus-daemon`) and mock logind
//! and systemd services on it (included by tests/dbus.rs with `#[path]`), for the inhibitor and hook-scope tests.
//!
//! The mocks run on a thread of their own with their own tokio runtime. The systemd mock does
//! real cgroup work on the cgroup v2 hierarchy (found in /proc/self/mountinfo): a directory per
//! scope under a test-owned parent, `cgroup.procs` for `PIDs=`, `cgroup.kill` for `KillUnit`
//! with SIGKILL and for `StopUnit`, and it drops scopes that have emptied, as systemd does.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue};

/// Nanoseconds since the epoch (hook scripts write `date +%s%N`, the same clock).
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A `dbus-daemon` with a config of its own, listening on a socket in a scratch directory;
/// killed on drop.
pub struct PrivateBus {
    child: Child,
    /// The address to put in `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts it and waits for its address.
    pub fn start() -> PrivateBus {
        let dir = crate::common::scratch_dir();
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start dbus-daemon (apt-get install dbus-daemon): {e}")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address: {line:?}"
        );
        PrivateBus {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One inhibitor lock handed out by the logind mock.
#[derive(Debug, Clone)]
pub struct Lock {
    pub what: String,
    pub who: String,
    pub why: String,
    pub mode: String,
    pub taken_ns: u128,
    /// When the client's end was closed (the mock's end of the pipe saw end-of-file).
    pub released_ns: Option<u128>,
}

struct Logind {
    locks: Arc<Mutex<Vec<Lock>>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Logind {
    fn inhibit(
        &self,
        what: String,
        who: String,
        why: String,
        mode: String,
    ) -> zbus::fdo::Result<OwnedFd> {
        // std's pipe is close-on-exec: no process this test starts keeps the lock open.
        let (mut reader, writer) =
            std::io::pipe().map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let index = {
            let mut locks = self.locks.lock().unwrap();
            locks.push(Lock {
                what,
                who,
                why,
                mode,
                taken_ns: now_ns(),
                released_ns: None,
            });
            locks.len() - 1
        };
        let locks = self.locks.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            locks.lock().unwrap()[index].released_ns = Some(now_ns());
        });
        Ok(std::os::fd::OwnedFd::from(writer).into())
    }
}

/// One scope unit created through the systemd mock.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    pub mode: String,
    pub pids: Vec<u32>,
    pub description: String,
    pub collect_mode: Option<String>,
    pub slice: Option<String>,
    /// Its cgroup directory.
    pub cgroup: PathBuf,
    /// `(whom, signal)` of each KillUnit.
    pub kills: Vec<(String, i32)>,
    /// A service's `ExecStart`: `(path, argv, ignore_failure)` of each command.
    pub exec_start: Vec<(String, Vec<String>, bool)>,
    /// A service's `Environment`.
    pub environment: Vec<String>,
    /// A service's `KillMode`.
    pub kill_mode: Option<String>,
    /// Which of `StandardInputFileDescriptor`, `StandardOutputFileDescriptor`,
    /// `StandardErrorFileDescriptor` came, as fds.
    pub std_fds: Vec<String>,
    pub stopped: bool,
    /// Dropped: stopped, or emptied and collected.
    pub gone: bool,
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
    UnitExists(String),
    Failed(String),
}

struct Systemd {
    units: Arc<Mutex<Vec<Unit>>>,
    base: PathBuf,
    /// Refuse services (`ExecStart=`), as a systemd too old for the fd properties would.
    refuse_services: Arc<AtomicBool>,
}

fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Kills everything in `cgroup`, waits (at most 2 s) until it is empty and removes it.
async fn kill_and_remove(cgroup: &Path) {
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    let end = Instant::now() + Duration::from_secs(2);
    while populated(cgroup) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = std::fs::remove_dir(cgroup);
}

/// Sets close-on-exec on every fd of this process above stderr.
fn cloexec_all() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: only borrowed for the fcntl call; an fd closed meanwhile gives EBADF.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

fn fd_prop(props: &[(String, OwnedValue)], key: &str) -> Option<std::os::fd::OwnedFd> {
    let v = props.iter().find(|(k, _)| k == key)?.1.try_clone().ok()?;
    let fd = zbus::zvariant::Fd::try_from(v).ok()?;
    std::os::fd::OwnedFd::try_from(fd).ok()
}

fn string_prop(props: &[(String, OwnedValue)], key: &str) -> Option<String> {
    props
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| String::try_from(v.try_clone().ok()?).ok())
}

impl Systemd {
    fn live(&self, name: &str) -> Option<Unit> {
        self.units
            .lock()
            .unwrap()
            .iter()
            .find(|u| u.name == name && !u.gone)
            .cloned()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Unit)) {
        let mut units = self.units.lock().unwrap();
        if let Some(u) = units.iter_mut().find(|u| u.name == name && !u.gone) {
            f(u);
        }
    }
}

fn unit_path(n: usize) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/u{n}")).unwrap()
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Systemd {
    fn start_transient_unit(
        &self,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedValue)>,
        _aux: Vec<(String, Vec<(String, OwnedValue)>)>,
    ) -> Result<OwnedObjectPath, SdError> {
        if self.live(&name).is_some() {
            return Err(SdError::UnitExists(format!("Unit {name} already exists.")));
        }
        let pids: Vec<u32> = properties
            .iter()
            .find(|(k, _)| k == "PIDs")
            .and_then(|(_, v)| Vec::<u32>::try_from(v.try_clone().ok()?).ok())
            .unwrap_or_default();
        if properties.iter().any(|(k, _)| k == "ExecStart")
            && self.refuse_services.load(Ordering::Relaxed)
        {
            return Err(SdError::Failed(
                "Unknown assignment: StandardInputFileDescriptor".into(),
            ));
        }
        let mut pids = pids;
        let exec_start: Vec<(String, Vec<String>, bool)> = properties
            .iter()
            .find(|(k, _)| k == "ExecStart")
            .and_then(|(_, v)| {
                <Vec<(String, Vec<String>, bool)>>::try_from(v.try_clone().ok()?).ok()
            })
            .unwrap_or_default();
        let environment: Vec<String> = properties
            .iter()
            .find(|(k, _)| k == "Environment")
            .and_then(|(_, v)| Vec::<String>::try_from(v.try_clone().ok()?).ok())
            .unwrap_or_default();
        let fd_keys = [
            "StandardInputFileDescriptor",
            "StandardOutputFileDescriptor",
            "StandardErrorFileDescriptor",
        ];
        let fds: Vec<Option<std::os::fd::OwnedFd>> =
            fd_keys.iter().map(|k| fd_prop(&properties, k)).collect();
        let std_fds: Vec<String> = fd_keys
            .iter()
            .zip(&fds)
            .filter(|(_, f)| f.is_some())
            .map(|(k, _)| k.to_string())
            .collect();
        let cgroup = self.base.join(&name);
        std::fs::create_dir(&cgroup).map_err(|e| SdError::Failed(format!("mkdir: {e}")))?;
        if let Some((path, argv, _)) = exec_start.first() {
            // A service: run ExecStart with the passed fds as its stdio, with the unit's
            // Environment (and a PATH, as systemd gives one), in the unit's cgroup.
            let mut cmd = Command::new(path);
            cmd.arg0(&argv[0]).args(&argv[1..]).env_clear().env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
            for kv in &environment {
                if let Some((k, v)) = kv.split_once('=') {
                    cmd.env(k, v);
                }
            }
            // systemd closes every other fd in a service; here, fds zbus received without
            // close-on-exec (the originals of the three) would leak into the helper and its hook,
            // and keep the runner's pipes open past the helper's end.
            cloexec_all();
            let mut fds = fds.into_iter();
            let mut stdio = || match fds.next().flatten() {
                Some(fd) => Stdio::from(fd),
                None => Stdio::null(),
            };
            cmd.stdin(stdio()).stdout(stdio()).stderr(stdio());
            let cg = cgroup.clone();
            // systemd makes every service's main process a session (and group) leader.
            cmd.process_group(0);
            let mut child = cmd
                .spawn()
                .map_err(|e| SdError::Failed(format!("spawning {path}: {e}")))?;
            // The helper waits for its go byte, which comes after this call returns.
            std::fs::write(cg.join("cgroup.procs"), child.id().to_string())
                .map_err(|e| SdError::Failed(format!("moving {}: {e}", child.id())))?;
            pids.push(child.id());
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        for pid in pids.iter().filter(|_| exec_start.is_empty()) {
            // Synchronous here; real systemd moves the pids when the start job runs.
            std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
                .map_err(|e| SdError::Failed(format!("moving {pid}: {e}")))?;
        }
        let mut units = self.units.lock().unwrap();
        units.push(Unit {
            name: name.clone(),
            mode,
            pids,
            description: string_prop(&properties, "Description").unwrap_or_default(),
            collect_mode: string_prop(&properties, "CollectMode"),
            slice: string_prop(&properties, "Slice"),
            cgroup,
            kills: Vec::new(),
            exec_start,
            environment,
            kill_mode: string_prop(&properties, "KillMode"),
            std_fds,
            stopped: false,
            gone: false,
        });
        Ok(
            OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{}", units.len()))
                .unwrap(),
        )
    }

    async fn kill_unit(&self, name: String, whom: String, signal: i32) -> Result<(), SdError> {
        // Recorded even when the scope was already collected: the helper's own kill may empty
        // it first, and what the test checks is that the runner asked for the cgroup kill.
        if let Some(u) = self
            .units
            .lock()
            .unwrap()
            .iter_mut()
            .rev()
            .find(|u| u.name == name)
        {
            u.kills.push((whom.clone(), signal));
        }
        let unit = self
            .live(&name)
            .ok_or_else(|| SdError::NoSuchUnit(format!("Unit {name} not loaded.")))?;
        if whom == "main" {
            let sig = nix::sys::signal::Signal::try_from(signal)
                .map_err(|e| SdError::Failed(format!("signal {signal}: {e}")))?;
            if let Some(pid) = unit.pids.first() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), sig);
            }
        } else if signal == libc::SIGKILL {
            let _ = std::fs::write(unit.cgroup.join("cgroup.kill"), "1");
        } else {
            let procs =
                std::fs::read_to_string(unit.cgroup.join("cgroup.procs")).unwrap_or_default();
            let sig = nix::sys::signal::Signal::try_from(signal)
                .map_err(|e| SdError::Failed(format!("signal {signal}: {e}")))?;
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
        Ok(())
    }

    async fn stop_unit(&self, name: String, _mode: String) -> Result<OwnedObjectPath, SdError> {
        let unit = self
            .live(&name)
            .ok_or_else(|| SdError::NoSuchUnit(format!("Unit {name} not loaded.")))?;
        kill_and_remove(&unit.cgroup).await;
        self.update(&name, |u| {
            u.stopped = true;
            u.gone = true;
        });
        Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/stop").unwrap())
    }

    fn get_unit(&self, name: String) -> Result<OwnedObjectPath, SdError> {
        let units = self.units.lock().unwrap();
        match units.iter().position(|u| u.name == name && !u.gone) {
            Some(i) => Ok(unit_path(i)),
            None => Err(SdError::NoSuchUnit(format!("Unit {name} not loaded."))),
        }
    }
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` or, in a hybrid layout, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in info.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = left.split_whitespace().nth(4) {
                return PathBuf::from(mp);
            }
        }
    }
    panic!("no cgroup2 hierarchy is mounted (see /proc/self/mountinfo)");
}

/// Mock services on a bus; stopped on drop (and the systemd mock's cgroups removed).
pub struct Mocks {
    pub locks: Arc<Mutex<Vec<Lock>>>,
    pub units: Arc<Mutex<Vec<Unit>>>,
    /// Set: the systemd mock refuses transient services (scopes still work).
    pub refuse_services: Arc<AtomicBool>,
    /// The parent of the systemd mock's scope cgroups.
    pub cgroup_base: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mocks {
    /// Serves `org.freedesktop.login1` and/or `org.freedesktop.systemd1` on `bus`.
    pub fn serve(bus: &PrivateBus, logind: bool, systemd: bool) -> Mocks {
        static N: AtomicU64 = AtomicU64::new(0);
        let locks = Arc::new(Mutex::new(Vec::new()));
        let units = Arc::new(Mutex::new(Vec::new()));
        let base = cgroup2_root().join(format!(
            "quiesce-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        if systemd {
            std::fs::create_dir(&base)
                .unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e}", base.display()));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<(), String>>();
        let address = bus.address.clone();
        let (l, u, b) = (locks.clone(), units.clone(), base.clone());
        let refuse_services = Arc::new(AtomicBool::new(false));
        let r = refuse_services.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let conns = async {
                    let mut conns = Vec::new();
                    if logind {
                        conns.push(
                            zbus::connection::Builder::address(address.as_str())?
                                .name("org.freedesktop.login1")?
                                .serve_at("/org/freedesktop/login1", Logind { locks: l })?
                                .build()
                                .await?,
                        );
                    }
                    if systemd {
                        conns.push(
                            zbus::connection::Builder::address(address.as_str())?
                                .name("org.freedesktop.systemd1")?
                                .serve_at(
                                    "/org/freedesktop/systemd1",
                                    Systemd {
                                        units: u.clone(),
                                        base: b,
                                        refuse_services: r,
                                    },
                                )?
                                .build()
                                .await?,
                        );
                    }
                    Ok::<_, zbus::Error>(conns)
                };
                let _conns = match conns.await {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                // systemd drops a scope once its last process is gone.
                let collect = async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let empty: Vec<PathBuf> = u
                            .lock()
                            .unwrap()
                            .iter_mut()
                            .filter(|x| !x.gone && !populated(&x.cgroup))
                            .map(|x| {
                                x.gone = true;
                                x.cgroup.clone()
                            })
                            .collect();
                        for dir in empty {
                            let _ = std::fs::remove_dir(dir);
                        }
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    () = collect => {}
                }
            });
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the mock services did not start")
            .unwrap_or_else(|e| panic!("mock services: {e}"));
        Mocks {
            locks,
            units,
            refuse_services,
            cgroup_base: base,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The locks handed out so far.
    pub fn locks(&self) -> Vec<Lock> {
        self.locks.lock().unwrap().clone()
    }

    /// The scopes created so far.
    pub fn units(&self) -> Vec<Unit> {
        self.units.lock().unwrap().clone()
    }
}

impl Drop for Mocks {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(dir) = std::fs::read_dir(&self.cgroup_base) {
            for e in dir.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                    let end = Instant::now() + Duration::from_secs(2);
                    while populated(&e.path()) && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup_base);
    }
}
