//! The hook runner, black-box through `quiesce::hooks` with the built binary as the helper:
//! real scripts written at test time, real process trees, real signals.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quiesce::hooks::{quiesce_vars, run_hook, HookOutcome, HookSpec, Phase};
use tokio::sync::watch;

const QUIESCE: &str = env!("CARGO_BIN_EXE_quiesce");

/// Short, so the kill tests stay fast; the default (2 s) only changes the wait.
const GRACE: Duration = Duration::from_secs(1);
/// Scheduling and process start-up on a busy test machine.
const SLACK: Duration = Duration::from_millis(1500);
/// The timeout of a hook that must have started its processes before it is killed: long
/// enough for three forks and execs on a loaded machine (1 s was not, under heavy I/O).
const SETUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Writes an executable script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn spec(name: &str, argv: &[&str], timeout: Duration) -> HookSpec {
    let mut s = HookSpec::new(
        name,
        Phase::Pre,
        argv.iter().map(|a| a.to_string()).collect(),
        timeout,
    );
    s.kill_grace = GRACE;
    s
}

/// A receiver whose sender stays alive but never cancels.
fn never() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

async fn run(spec: &HookSpec) -> (HookOutcome, Duration) {
    let (_tx, rx) = never();
    let t = Instant::now();
    let outcome = run_hook(spec, Path::new(QUIESCE), rx).await;
    (outcome, t.elapsed())
}

/// Waits (async) until `path` holds a pid.
async fn read_pid(path: &Path) -> i32 {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < end, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The process no longer exists at all: dead and reaped.
fn gone(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Dead, possibly still a zombie (for processes whose reaper is not ours: init in a container
/// may not reap at all).
fn dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
            state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
        }
    }
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test]
async fn succeeds_with_env_args_and_stdin_dev_null() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(
        dir.path(),
        "env.sh",
        r#"#!/bin/sh
echo "id=$QUIESCE_SNAPSHOT_ID phase=$QUIESCE_PHASE hook=$QUIESCE_HOOK reason=$QUIESCE_THAW_REASON"
echo "custom=$CUSTOM_VAR path=$PATH"
echo "args=$#:$1|$2"
echo "stdin=$(readlink /proc/self/fd/0)"
if read line; then echo "stdin had data"; else echo "stdin eof"; fi
echo "pid=$$ pgrp=$(cut -d' ' -f5 /proc/$$/stat)"
grep -E '^Sig(Blk|Ign)' /proc/self/status
echo "to stderr" >&2
exit 0
"#,
    );
    let mut s = spec(
        "envcheck",
        &[hook.to_str().unwrap(), "two words", "x"],
        Duration::from_secs(10),
    );
    s.phase = Phase::Post;
    s.env = BTreeMap::from([
        ("CUSTOM_VAR".to_owned(), "custom value".to_owned()),
        // The contract's variables win over the hook's env.
        ("QUIESCE_PHASE".to_owned(), "spoofed".to_owned()),
    ]);
    s.vars = quiesce_vars("snap-123", Phase::Post, "envcheck", Some("host"));
    let (out, elapsed) = run(&s).await;
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.failure(), None);
    assert!(out.error.is_none());
    let o = &out.output;
    assert!(
        o.contains("id=snap-123 phase=post hook=envcheck reason=host\n"),
        "{o}"
    );
    let path = std::env::var("PATH").unwrap();
    assert!(
        o.contains(&format!("custom=custom value path={path}\n")),
        "{o}"
    );
    assert!(o.contains("args=2:two words|x\n"), "{o}");
    assert!(o.contains("stdin=/dev/null\n"), "{o}");
    assert!(o.contains("stdin eof\n"), "{o}");
    assert!(
        o.ends_with("to stderr\n"),
        "stdout and stderr in order: {o}"
    );
    // Its own process group: pgrp == pid.
    let line = o.lines().find(|l| l.starts_with("pid=")).unwrap();
    let (pid, pgrp) = line.split_once(' ').unwrap();
    assert_eq!(
        pid.trim_start_matches("pid="),
        pgrp.trim_start_matches("pgrp=")
    );
    // A clean signal state: nothing blocked (the helper blocks some for itself) and no
    // standard signal ignored (glibc keeps its internal 32 and 33 ignored).
    let field = |name: &str| {
        let line = o.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(field("SigBlk:"), 0, "{o}");
    assert_eq!(field("SigIgn:") & 0x7fff_ffff, 0, "{o}");
    assert_eq!(out.output_bytes, o.len() as u64);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(out.stray_processes, 0);
}

#[tokio::test]
async fn pre_hooks_get_no_thaw_reason_and_post_without_freeze_gets_none() {
    let pre = quiesce_vars("s", Phase::Pre, "h", Some("host"));
    assert!(pre.iter().all(|(k, _)| k != "QUIESCE_THAW_REASON"));
    let post = quiesce_vars("s", Phase::Post, "h", None);
    assert!(post.contains(&("QUIESCE_THAW_REASON".to_owned(), "none".to_owned())));
}

#[tokio::test]
async fn python_shebang_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(
        dir.path(),
        "hook.py",
        "#!/usr/bin/env python3\nimport sys, os\nprint('python', sys.version_info[0], os.environ['QUIESCE_PHASE'], sys.argv[1])\n",
    );
    let mut s = spec(
        "py",
        &[hook.to_str().unwrap(), "arg1"],
        Duration::from_secs(20),
    );
    s.vars = quiesce_vars("s", Phase::Pre, "py", None);
    let (out, _) = run(&s).await;
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(out.output, "python 3 pre arg1\n");
}

#[tokio::test]
async fn non_zero_exit_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(dir.path(), "fail.sh", "#!/bin/sh\necho failing\nexit 3\n");
    let (out, _) = run(&spec(
        "fail",
        &[hook.to_str().unwrap()],
        Duration::from_secs(10),
    ))
    .await;
    assert!(!out.succeeded());
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.signal, None);
    assert!(!out.timed_out && !out.cancelled && out.error.is_none());
    assert_eq!(out.output, "failing\n");
    assert_eq!(out.failure().unwrap(), "exited with code 3");
}

#[tokio::test]
async fn timeout_kills_a_grandchild_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let hook = script(
        dir.path(),
        "hang.sh",
        r#"#!/bin/sh
# The grandchild ignores SIGTERM (kept across exec) and must be SIGKILLed after the grace.
sh -c 'trap "" TERM; echo $$ > "$1"; exec sleep 300' grandchild "$1" &
echo started
sleep 300
"#,
    );
    let timeout = SETUP_TIMEOUT;
    let s = spec(
        "hang",
        &[hook.to_str().unwrap(), pidfile.to_str().unwrap()],
        timeout,
    );
    let (out, elapsed) = run(&s).await;
    let grandchild = read_pid(&pidfile).await;
    assert!(out.timed_out, "{out:?}");
    assert!(!out.succeeded());
    assert!(!out.cancelled);
    assert_eq!(out.exit_code, None);
    assert_eq!(
        out.signal,
        Some(Signal::SIGTERM as i32),
        "the hook itself died of SIGTERM"
    );
    assert!(out.output.contains("started"));
    assert!(
        out.signalled >= 3,
        "hook, its sleep, the grandchild: {out:?}"
    );
    assert_eq!(out.stray_processes, 0);
    assert!(gone(grandchild), "grandchild {grandchild} still exists");
    // The grandchild ignores SIGTERM, so the whole grace is spent before SIGKILL.
    assert!(elapsed >= timeout + GRACE, "{elapsed:?}");
    assert!(elapsed < timeout + GRACE + SLACK, "{elapsed:?}");
    assert!(out.failure().unwrap().starts_with("timed out"));
}

#[tokio::test]
async fn timeout_kills_a_process_that_escaped_with_setsid() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escaped.pid");
    let helperfile = dir.path().join("helper.pid");
    let hook = script(
        dir.path(),
        "escape.sh",
        r#"#!/bin/sh
echo $PPID > "$2"
# New session (so a new group), and its parent subshell exits at once: it is reparented.
(setsid sh -c 'trap "" TERM; echo $$ > "$1"; exec sleep 300' escaped "$1" &)
sleep 300
"#,
    );
    let timeout = SETUP_TIMEOUT;
    let s = spec(
        "escape",
        &[
            hook.to_str().unwrap(),
            pidfile.to_str().unwrap(),
            helperfile.to_str().unwrap(),
        ],
        timeout,
    );
    let (_tx, rx) = never();
    let t = Instant::now();
    // While the hook runs: the escaped process is outside the hook's group and session, and its
    // parent is the helper (the subreaper), not init.
    let probe = async {
        let escaped = read_pid(&pidfile).await;
        let helper = read_pid(&helperfile).await;
        let stat = fs::read_to_string(format!("/proc/{escaped}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let (pgrp, session) = (fields[2], fields[3]);
        assert_eq!(pgrp, escaped.to_string(), "own group");
        assert_eq!(session, escaped.to_string(), "own session");
        let end = Instant::now() + Duration::from_millis(500);
        while ppid(escaped) != Some(helper) && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ppid(escaped), Some(helper), "reparented to the helper");
        escaped
    };
    let (out, escaped) = tokio::join!(run_hook(&s, Path::new(QUIESCE), rx), probe);
    let elapsed = t.elapsed();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.stray_processes, 0);
    assert!(gone(escaped), "escaped process {escaped} still exists");
    assert!(elapsed < timeout + GRACE + SLACK, "{elapsed:?}");
}

#[tokio::test]
async fn ten_megabytes_of_output_keep_only_the_last_4096_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let total = 10 * 1024 * 1024;
    let hook = script(
        dir.path(),
        "loud.sh",
        &format!("#!/bin/sh\nyes 0123456789abcdef | head -c {total}\n"),
    );
    let (out, elapsed) = run(&spec(
        "loud",
        &[hook.to_str().unwrap()],
        Duration::from_secs(20),
    ))
    .await;
    assert!(out.succeeded(), "{:?}", out.failure());
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(total)
        .collect();
    assert_eq!(out.output.len(), 4096);
    assert_eq!(out.output.as_bytes(), &expected[total - 4096..]);
    assert_eq!(out.output_bytes, total as u64);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn a_file_without_execute_permission_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(dir.path(), "noexec.sh", "#!/bin/sh\nexit 0\n");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o644)).unwrap();
    let (out, _) = run(&spec(
        "noexec",
        &[hook.to_str().unwrap()],
        Duration::from_secs(5),
    ))
    .await;
    assert!(!out.succeeded());
    let err = out.error.as_deref().unwrap();
    // Refused by the check right before exec (issue 14), which names the file and the fix.
    assert!(err.contains("is not executable (mode 0644)"), "{err}");
    assert!(err.contains("noexec.sh"), "{err}");
    assert_eq!(out.exit_code, None);
    assert_eq!(out.failure().as_deref(), Some(err));
}

#[tokio::test]
async fn a_missing_file_fails_with_no_such_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sh");
    let (out, _) = run(&spec(
        "missing",
        &[missing.to_str().unwrap()],
        Duration::from_secs(5),
    ))
    .await;
    assert!(!out.succeeded());
    let err = out.error.as_deref().unwrap();
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(!err.contains("interpreter"), "{err}");
}

#[tokio::test]
async fn a_missing_interpreter_fails_with_the_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(dir.path(), "interp.sh", "#!/nonexistent/interp\nexit 0\n");
    let (out, _) = run(&spec(
        "interp",
        &[hook.to_str().unwrap()],
        Duration::from_secs(5),
    ))
    .await;
    assert!(!out.succeeded());
    let err = out.error.as_deref().unwrap();
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(err.contains("\"/nonexistent/interp\""), "{err}");
}

#[tokio::test]
async fn a_script_without_shebang_is_not_run_through_sh() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let hook = script(
        dir.path(),
        "bare.sh",
        &format!("touch {}\nexit 0\n", marker.display()),
    );
    let (out, _) = run(&spec(
        "bare",
        &[hook.to_str().unwrap()],
        Duration::from_secs(5),
    ))
    .await;
    assert!(!out.succeeded());
    let err = out.error.as_deref().unwrap();
    assert!(err.contains("Exec format error"), "{err}");
    assert!(!marker.exists());
}

#[tokio::test]
async fn cancellation_stops_the_hook_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    let hook = script(
        dir.path(),
        "sleepy.sh",
        "#!/bin/sh\nsleep 300 &\necho $! > \"$1\"\nwait\n",
    );
    let s = spec(
        "sleepy",
        &[hook.to_str().unwrap(), pidfile.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let (tx, rx) = watch::channel(false);
    let mut cancelled_at = None;
    let canceller = async {
        let pid = read_pid(&pidfile).await;
        cancelled_at = Some(Instant::now());
        tx.send(true).unwrap();
        pid
    };
    let (out, sleeper) = tokio::join!(run_hook(&s, Path::new(QUIESCE), rx), canceller);
    let after_cancel = cancelled_at.unwrap().elapsed();
    assert!(out.cancelled, "{out:?}");
    assert!(!out.timed_out);
    assert!(!out.succeeded());
    assert_eq!(out.signal, Some(Signal::SIGTERM as i32));
    assert!(gone(sleeper), "sleep {sleeper} still exists");
    // Everything dies of SIGTERM: no grace spent.
    assert!(
        after_cancel < Duration::from_millis(900),
        "{after_cancel:?}"
    );
    assert_eq!(out.failure().unwrap(), "cancelled");
}

#[tokio::test]
async fn an_already_cancelled_run_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let hook = script(
        dir.path(),
        "never.sh",
        &format!("#!/bin/sh\ntouch {}\n", marker.display()),
    );
    let (_tx, rx) = watch::channel(true);
    let out = run_hook(
        &spec("never", &[hook.to_str().unwrap()], Duration::from_secs(5)),
        Path::new(QUIESCE),
        rx,
    )
    .await;
    assert!(out.cancelled && !out.succeeded());
    assert!(!marker.exists());
}

#[tokio::test]
async fn dropping_the_run_stops_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    let hook = script(
        dir.path(),
        "dropped.sh",
        "#!/bin/sh\nsleep 300 &\necho $! > \"$1\"\nwait\n",
    );
    let s = spec(
        "dropped",
        &[hook.to_str().unwrap(), pidfile.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let (_tx, rx) = never();
    let run = run_hook(&s, Path::new(QUIESCE), rx);
    let r = tokio::time::timeout(Duration::from_millis(1500), async {
        tokio::select! {
            _ = run => panic!("the hook ended by itself"),
            pid = read_pid(&pidfile) => pid,
        }
    })
    .await;
    let sleeper = r.unwrap();
    // The run future is dropped now: the helper sees its stdin close and stops the tree.
    let end = Instant::now() + Duration::from_secs(3);
    while !gone(sleeper) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone(sleeper), "sleep {sleeper} survived the dropped run");
}

#[tokio::test]
async fn a_daemon_left_running_is_reported_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let hook = script(
        dir.path(),
        "daemon.sh",
        r#"#!/bin/sh
# Keeps the inherited output pipe open, as a careless daemon would.
sh -c 'echo $$ > "$1"; exec sleep 300' daemon "$1" &
while [ ! -s "$1" ]; do sleep 0.01; done
echo started the daemon
exit 0
"#,
    );
    let s = spec(
        "daemon",
        &[hook.to_str().unwrap(), pidfile.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let (out, elapsed) = run(&s).await;
    let daemon = read_pid(&pidfile).await;
    let alive = !dead(daemon);
    let _ = kill(Pid::from_raw(daemon), Signal::SIGKILL);
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(out.output, "started the daemon\n");
    assert_eq!(out.stray_processes, 1);
    assert_eq!(out.signalled, 0);
    assert!(alive, "the daemon was killed");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn a_helper_that_dies_is_a_failure_and_its_hook_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("hook.pid");
    let hook = script(
        dir.path(),
        "killer.sh",
        // After a moment: the helper has reported the hook's pid by then (right after spawn).
        "#!/bin/sh\necho $$ > \"$1\"\nsleep 0.3\nkill -9 $PPID\nsleep 300\n",
    );
    let s = spec(
        "killer",
        &[hook.to_str().unwrap(), pidfile.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let (out, elapsed) = run(&s).await;
    let hook_pid = read_pid(&pidfile).await;
    assert!(!out.succeeded());
    let err = out.error.as_deref().unwrap();
    assert!(err.contains("hook helper ended without a result"), "{err}");
    assert!(
        err.contains("SIGKILL") || err.contains("signal: 9"),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    // Orphaned to init, which may or may not reap here: dead is what counts.
    let end = Instant::now() + Duration::from_secs(2);
    while !dead(hook_pid) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        dead(hook_pid),
        "hook {hook_pid} survived its helper: {out:?} {:?}",
        fs::read_to_string(format!("/proc/{hook_pid}/stat"))
    );
}

#[tokio::test]
async fn a_script_held_open_for_writing_runs_once_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(dir.path(), "busy.sh", "#!/bin/sh\necho ran\n");
    // As while an editor or a forked process still has it open for writing: exec gets ETXTBSY.
    let writer = fs::OpenOptions::new().append(true).open(&hook).unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(writer);
    });
    let (out, took) = run(&spec(
        "busy",
        &[hook.to_str().unwrap()],
        Duration::from_secs(10),
    ))
    .await;
    release.await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(out.output, "ran\n");
    assert!(
        took >= Duration::from_millis(250),
        "it cannot have run before the release"
    );
}
