//! The hook helper, `quiesce hook-exec`: one short-lived process per hook run.
//!
//! It runs before any logger or runtime exists and stays single-threaded, so that blocking the
//! signals below affects every thread and `waitpid(-1)` can only ever see the hook's tree: it
//! becomes a child subreaper, starts the hook, waits for the hook's exit, the timeout or a
//! cancellation, stops the whole tree if needed, and prints its result as one JSON line on
//! stdout. It writes nothing else to stderr, which carries the hook's output.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::spawn::{
    posix_spawn, posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags,
};
use nix::sys::prctl;
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, Pid};

use super::procfs;
use super::protocol::{HelperEvent, HelperReport};

/// How long SIGKILLed processes may take to disappear (one stuck in uninterruptible IO may
/// not): then the helper reports them as strays instead of hanging the snapshot.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often, and how far apart, a spawn that failed with ETXTBSY is tried again.
const ETXTBSY_RETRIES: u32 = 50;
const ETXTBSY_PAUSE: Duration = Duration::from_millis(20);
/// How often the kill pass repeats, to catch children forked by processes not yet dead.
const KILL_PASS: Duration = Duration::from_millis(20);

/// What `quiesce hook-exec` is to do (its command line is `commands::args::HookExecArgs`).
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Stop the hook's process tree this many milliseconds after it started.
    pub timeout_ms: u64,
    /// Time between SIGTERM and SIGKILL when the tree is stopped.
    pub grace_ms: u64,
    /// Treat end-of-file on stdin as a cancellation (the runner holds the pipe's other end).
    pub cancel_on_eof: bool,
    /// Start the hook only once a `g` byte arrives on stdin.
    pub wait_go: bool,
    /// The hook's executable and its arguments.
    pub argv: Vec<OsString>,
}

/// Entry point of `quiesce hook-exec`; returns the process exit code (0 once the result line
/// is written, whatever the hook did).
pub fn main(args: &ExecOptions) -> i32 {
    let report = run(args);
    emit(&HelperEvent::Finished(report));
    0
}

/// Writes one JSON line on stdout; a runner that is gone is not an error worth dying for.
fn emit(event: &HelperEvent) {
    let line = serde_json::to_string(event).unwrap_or_default();
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// Why the wait for the hook ended.
enum WaitEnd {
    Exited,
    TimedOut,
    Cancelled,
}

fn run(args: &ExecOptions) -> HelperReport {
    let mut report = HelperReport::default();
    let setup = || -> Result<(SignalFd, File), String> {
        // Blocked before the hook exists, so no SIGCHLD or cancellation can be missed. The hook
        // must not inherit this mask (std's Command would pass it on): see `spawn`.
        let mask = helper_signals();
        mask.thread_block()
            .map_err(|e| format!("hook helper: blocking signals: {e}"))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("hook helper: signalfd: {e}"))?;
        prctl::set_child_subreaper(true)
            .map_err(|e| format!("hook helper: cannot become a child subreaper: {e}"))?;
        let null = File::open("/dev/null").map_err(|e| format!("hook helper: /dev/null: {e}"))?;
        Ok((sigfd, null))
    };
    let (sigfd, null) = match setup() {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    if args.argv.is_empty() {
        report.error = Some("hook helper: empty command".to_owned());
        return report;
    }

    // Before the hook exists: whatever cgroup this process is moved to meanwhile, the hook and
    // all it forks are born in.
    if args.wait_go && !wait_for_go(&sigfd) {
        report.cancelled = true;
        report.error = Some("cancelled before it started".to_owned());
        return report;
    }

    let start = Instant::now();
    let hook = match spawn(&args.argv, &null) {
        Ok(pid) => pid,
        Err(e) => {
            report.error = Some(e);
            report.duration_us = start.elapsed().as_micros() as u64;
            return report;
        }
    };
    drop(null);
    emit(&HelperEvent::Started { pid: hook.as_raw() });

    let mut tree = Tree {
        me: getpid(),
        hook,
        status: None,
        signalled: HashSet::new(),
    };
    let stdin = io::stdin();
    let watch = args.cancel_on_eof.then(|| stdin.as_fd());
    let deadline = start + Duration::from_millis(args.timeout_ms);
    let end = wait_for_hook(&mut tree, &sigfd, watch, deadline);
    match end {
        WaitEnd::Exited => {
            // Processes the hook left running on purpose (a service a post hook started) are
            // not ours to kill: they are only counted, and outlive this helper.
            tree.reap();
        }
        WaitEnd::TimedOut | WaitEnd::Cancelled => {
            report.timed_out = matches!(end, WaitEnd::TimedOut);
            report.cancelled = matches!(end, WaitEnd::Cancelled);
            stop_tree(&mut tree, &sigfd, Duration::from_millis(args.grace_ms));
        }
    }
    report.duration_us = start.elapsed().as_micros() as u64;
    match tree.status {
        Some(Status::Code(c)) => report.exit_code = Some(c),
        Some(Status::Signal(s)) => report.signal = Some(s),
        None => {}
    }
    report.signalled = tree.signalled.len();
    report.stray_processes = tree.alive().len();
    report
}

/// The signals the helper takes through its signalfd instead of their default action.
fn helper_signals() -> SigSet {
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(sig);
    }
    mask
}

/// Starts the hook: argv executed directly (the kernel handles `#!`; no shell fallback on
/// ENOEXEC), stdin /dev/null, stdout onto stderr, a new process group, the helper's
/// environment, an empty signal mask and every signal at its default action (the agent may run
/// with some ignored, e.g. SIGPIPE under systemd, and ignored signals survive exec).
fn spawn(argv: &[OsString], null: &File) -> Result<Pid, String> {
    let program = &argv[0];
    let fail = |what: &str, e: Errno| format!("hook helper: {what}: {e}");
    let cstr =
        |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL byte"));
    let args = argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).map_err(|_| "environment contains a NUL byte".to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut actions = PosixSpawnFileActions::init().map_err(|e| fail("spawn actions", e))?;
    actions
        .add_dup2(null.as_raw_fd(), 0)
        .and_then(|_| actions.add_dup2(2, 1))
        .map_err(|e| fail("spawn actions", e))?;
    let mut attr = PosixSpawnAttr::init().map_err(|e| fail("spawn attributes", e))?;
    let mut defaults = SigSet::empty();
    for sig in Signal::iterator().filter(|s| ![Signal::SIGKILL, Signal::SIGSTOP].contains(s)) {
        defaults.add(sig);
    }
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .and_then(|_| attr.set_pgroup(Pid::from_raw(0)))
    .and_then(|_| attr.set_sigmask(&SigSet::empty()))
    .and_then(|_| attr.set_sigdefault(&defaults))
    .map_err(|e| fail("spawn attributes", e))?;

    // Like a shell and std's Command: a bare name is looked up in PATH, a path is used as is.
    let spawn = || {
        if program.as_bytes().contains(&b'/') {
            posix_spawn(args[0].as_c_str(), &actions, &attr, &args, &env)
        } else {
            posix_spawnp(&args[0], &actions, &attr, &args, &env)
        }
    };
    // A script someone is writing this very moment (an editor saving it, a package upgrade, a
    // process that forked while holding it open for writing) refuses to run with ETXTBSY for
    // a moment: try again for up to a second before calling the hook broken.
    let mut spawned = spawn();
    for _ in 0..ETXTBSY_RETRIES {
        if spawned != Err(Errno::ETXTBSY) {
            break;
        }
        std::thread::sleep(ETXTBSY_PAUSE);
        spawned = spawn();
    }
    spawned.map_err(|e| exec_error(program, &io::Error::from(e)))
}

/// How the hook's main process ended.
#[derive(Clone, Copy)]
enum Status {
    Code(i32),
    Signal(i32),
}

/// The helper's view of the hook's process tree.
struct Tree {
    me: Pid,
    hook: Pid,
    status: Option<Status>,
    signalled: HashSet<i32>,
}

impl Tree {
    /// Reaps every child that has ended; false once no child (hence no descendant) is left.
    fn reap(&mut self) -> bool {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(WaitStatus::Exited(pid, code)) if pid == self.hook => {
                    self.status = Some(Status::Code(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.hook => {
                    self.status = Some(Status::Signal(sig as i32))
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Live descendants (zombies excluded: they are dead and only wait to be reaped).
    fn alive(&self) -> Vec<procfs::ProcEntry> {
        let mut found = procfs::descendants(self.me.as_raw(), &procfs::scan());
        found.retain(|p| !p.zombie);
        found
    }

    /// Sends `sig` to the hook's group and to every live descendant, found by parent chain
    /// (which catches those that left the group: as the subreaper, this process inherits them).
    fn signal_all(&mut self, sig: Signal) {
        let alive = self.alive();
        // The group id is the hook's pid; it cannot be reused while the hook is unreaped or any
        // member lives, so only then is it safe to signal the group as a whole.
        if self.status.is_none() || alive.iter().any(|p| p.pgrp == self.hook.as_raw()) {
            let _ = killpg(self.hook, sig);
        }
        for p in alive {
            if kill(Pid::from_raw(p.pid), sig).is_ok() && sig != Signal::SIGCONT {
                self.signalled.insert(p.pid);
            }
        }
    }
}

/// Waits until the hook's main process exits, the deadline passes, or a cancellation comes.
fn wait_for_hook(
    tree: &mut Tree,
    sigfd: &SignalFd,
    mut watch: Option<BorrowedFd<'_>>,
    deadline: Instant,
) -> WaitEnd {
    loop {
        tree.reap();
        if tree.status.is_some() {
            return WaitEnd::Exited;
        }
        let now = Instant::now();
        if now >= deadline {
            return WaitEnd::TimedOut;
        }
        let wake = wait_events(sigfd, &mut watch, deadline - now);
        if wake.cancel {
            return WaitEnd::Cancelled;
        }
    }
}

/// Blocks until the runner's go byte (`g`) arrives on stdin: true; false on end-of-file, an
/// unreadable stdin or a cancelling signal. Other bytes are ignored.
fn wait_for_go(sigfd: &SignalFd) -> bool {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    loop {
        let mut fds = [
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(fd, PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        let (signalled, readable) = (ready(&fds[0]), ready(&fds[1]));
        if signalled {
            while let Ok(Some(info)) = sigfd.read_signal() {
                if [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]
                    .iter()
                    .any(|s| *s as i32 == info.ssi_signo as i32)
                {
                    return false;
                }
            }
        }
        if readable {
            let mut byte = [0u8; 1];
            match nix::unistd::read(fd, &mut byte) {
                Ok(0) => return false,
                Ok(_) if byte[0] == b'g' => return true,
                Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }
}

/// SIGTERM to everything, a grace, then SIGKILL until nothing is left (or `KILL_WAIT` passed).
fn stop_tree(tree: &mut Tree, sigfd: &SignalFd, grace: Duration) {
    tree.signal_all(Signal::SIGTERM);
    // A stopped process would only see its SIGTERM once continued.
    tree.signal_all(Signal::SIGCONT);
    let grace_end = Instant::now() + grace;
    loop {
        if !tree.reap() {
            return;
        }
        let now = Instant::now();
        if now >= grace_end {
            break;
        }
        wait_events(sigfd, &mut None, grace_end - now);
    }
    let kill_end = Instant::now() + KILL_WAIT;
    loop {
        // Repeated: a process can fork between the /proc scan and its own SIGKILL.
        tree.signal_all(Signal::SIGKILL);
        if !tree.reap() || Instant::now() >= kill_end {
            return;
        }
        wait_events(sigfd, &mut None, KILL_PASS);
    }
}

/// What woke the helper up.
struct Wake {
    cancel: bool,
}

/// Sleeps until a signal arrives, the watched stdin reaches end-of-file, or `timeout` passes.
fn wait_events(sigfd: &SignalFd, watch: &mut Option<BorrowedFd<'_>>, timeout: Duration) -> Wake {
    let mut wake = Wake { cancel: false };
    // Rounded up, so a wait never ends just before its deadline and spins.
    let ms = timeout.as_micros().div_ceil(1000).min(1_000) as u16;
    let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
    if let Some(fd) = watch {
        fds.push(PollFd::new(*fd, PollFlags::POLLIN));
    }
    match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) | Err(_) => return wake,
        Ok(_) => {}
    }
    let stdin_ready = fds
        .get(1)
        .and_then(|f| f.revents())
        .is_some_and(|r| !r.is_empty());
    drop(fds);
    while let Ok(Some(info)) = sigfd.read_signal() {
        let signo = info.ssi_signo as i32;
        if [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]
            .iter()
            .any(|s| *s as i32 == signo)
        {
            wake.cancel = true;
        }
    }
    if stdin_ready {
        let mut buf = [0u8; 256];
        let fd = watch.expect("polled stdin");
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => wake.cancel = true,
            Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            // An unreadable stdin says nothing about the runner: stop watching it.
            Err(_) => *watch = None,
        }
    }
    wake
}

/// The exec error as the operator needs it: the OS error, and the likely cause when the file
/// exists but "No such file or directory" came back (a missing `#!` interpreter).
fn exec_error(program: &OsStr, err: &io::Error) -> String {
    let path = Path::new(program);
    let mut msg = format!("cannot execute {}: {err}", path.display());
    match err.raw_os_error() {
        Some(libc::ENOENT) if path.is_file() => match shebang_interpreter(path) {
            Some(interp) => msg.push_str(&format!(" (its #! interpreter {interp:?} is missing)")),
            None => msg.push_str(" (the file exists: its ELF interpreter is missing)"),
        },
        Some(libc::ENOEXEC) => {
            msg.push_str(" (not a format the kernel runs: a script needs a #! line)")
        }
        _ => {}
    }
    msg
}

/// The interpreter named on the file's `#!` line, shown with `{:?}` so a stray `\r` (DOS line
/// endings) is visible.
fn shebang_interpreter(path: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let n = File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let interp = line
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t'])
        .next()?;
    (!interp.is_empty()).then(|| interp.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shebang_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "#! /nonexistent/interp -x\r\necho\n").unwrap();
        assert_eq!(
            shebang_interpreter(&p).as_deref(),
            Some("/nonexistent/interp")
        );
        std::fs::write(&p, "#!/bin/sh\r\n").unwrap();
        assert_eq!(shebang_interpreter(&p).as_deref(), Some("/bin/sh\r"));
        std::fs::write(&p, "echo\n").unwrap();
        assert_eq!(shebang_interpreter(&p), None);
    }
}
