//! D-Bus integration against a private `dbus-daemon` with mock logind and systemd services:
//! the inhibitor lock spans a snapshot's hooks, hooks run as transient services (the helper
//! started by the mock with the fds passed over D-Bus) whose cgroup is killed,
//! and a machine without a bus (or without the services) runs snapshots as before, without
//! delay. The daemon under test gets the bus through `DBUS_SYSTEM_BUS_ADDRESS`. Nothing is
//! frozen (`freeze.enabled: false`). Needs root (cgroups, root-owned hooks); fails without it.

#[path = "common/dbus.rs"]
mod bus;
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bus::{Mocks, PrivateBus};
use common::daemon::Daemon;
use common::{require_root, scratch_dir};
use serde_json::Value;

/// A hook script (root-owned, 0755, in the root-only scratch directory).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A script that logs "HOOK PHASE start|end NANOS" to `log` around `body`.
fn timed_script(dir: &Path, name: &str, log: &Path, body: &str) -> PathBuf {
    let stamp = |what: &str| {
        format!(
            "echo \"$QUIESCE_HOOK $QUIESCE_PHASE {what} $(date +%s%N)\" >> {}",
            log.display()
        )
    };
    script(
        dir,
        name,
        &format!("{}\n{body}\n{}", stamp("start"), stamp("end")),
    )
}

/// Writes a config with freezing disabled and `hooks` (YAML list items, already indented).
fn config(dir: &Path, hooks: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    fs::write(
        &path,
        format!(
            "{}state_dir: {:?}\nfreeze:\n  enabled: false\n  include_mounts: [/nonexistent-quiesce]\nhooks:\n{hooks}",
            common::daemon::unix_listen_none(dir),
            dir.join("state")
        ),
    )
    .unwrap();
    path
}

fn hook_yaml(name: &str, pre: &Path, post: &Path, timeout: &str, on_failure: &str) -> String {
    format!(
        "  - name: {name}\n    pre: [{}]\n    post: [{}]\n    timeout: {timeout}\n    on_failure: {on_failure}\n",
        pre.display(),
        post.display()
    )
}

/// The daemon with `DBUS_SYSTEM_BUS_ADDRESS=address`.
fn daemon(config: &Path, address: &str) -> Daemon {
    let var = format!("DBUS_SYSTEM_BUS_ADDRESS={address}");
    let mut d = Daemon::spawn(&["env", &var], config);
    d.addr = d.listening();
    d
}

/// Starts a snapshot; returns its id.
fn create(d: &Daemon) -> String {
    let (status, snap) = d.call("POST", "/v1/snapshots", Some("{}"));
    assert_eq!(status, 202, "{snap}");
    snap["id"].as_str().unwrap().to_string()
}

fn wait(d: &Daemon, id: &str, what: &str) -> Value {
    let (status, snap) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait={what}&timeout_ms=20000"),
        None,
    );
    assert_eq!(status, 200, "{snap}");
    snap
}

/// A whole snapshot: create, wait frozen, thaw (`taken`), wait done; returns the final report.
fn snapshot(d: &Daemon) -> Value {
    let id = create(d);
    wait(d, &id, "frozen");
    let (status, snap) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!(status, 200, "{snap}");
    wait(d, &id, "done")
}

/// (first start, last end) in the log of [`timed_script`]s.
fn hook_span(log: &Path) -> (u128, u128, usize) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let (mut first, mut last, mut runs) = (u128::MAX, 0, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let t: u128 = f[3].parse().unwrap();
        match f[2] {
            "start" => {
                first = first.min(t);
                runs += 1;
            }
            _ => last = last.max(t),
        }
    }
    (first, last, runs)
}

/// The one lock taken, once released (waits up to 5 s for the release).
fn released_lock(mocks: &Mocks) -> bus::Lock {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let locks = mocks.locks();
        assert!(locks.len() <= 1, "one lock per snapshot, got {locks:#?}");
        if let Some(l) = locks.first().filter(|l| l.released_ns.is_some()) {
            return l.clone();
        }
        assert!(
            Instant::now() < end,
            "the inhibitor lock was {}: {locks:#?}",
            if locks.is_empty() {
                "never taken (is dbus::logind::inhibit held around the snapshot task?)"
            } else {
                "not released within 5 s of the end of the snapshot"
            }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_lock_spans(lock: &bus::Lock, id: &str, log: &Path, runs: usize) {
    let (first, last, seen) = hook_span(log);
    assert_eq!(
        seen,
        runs,
        "hook runs: {}",
        fs::read_to_string(log).unwrap()
    );
    assert_eq!(
        (lock.what.as_str(), lock.who.as_str(), lock.mode.as_str()),
        ("shutdown:sleep", "quiesce", "block")
    );
    assert!(lock.why.contains(id), "{lock:?}");
    assert!(
        lock.taken_ns < first,
        "lock taken {} ms after the first pre hook started",
        (lock.taken_ns - first) / 1_000_000
    );
    let released = lock.released_ns.unwrap();
    assert!(
        released > last,
        "lock released {} ms before the last post hook ended",
        (last - released) / 1_000_000
    );
}

#[test]
fn the_inhibitor_spans_the_first_pre_hook_to_the_last_post_hook() {
    require_root();
    let dir = scratch_dir();
    let log = dir.path().join("hooks.log");
    let leftover = dir.path().join("leftover.pid");
    let a = timed_script(dir.path(), "a.sh", &log, "sleep 0.1");
    // The post hook leaves a process running: it must not inherit (and keep) the lock.
    let b = timed_script(
        dir.path(),
        "b.sh",
        &log,
        &format!(
            "sleep 0.1\n[ \"$QUIESCE_PHASE\" = post ] && {{ sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {}; }}\ntrue",
            leftover.display()
        ),
    );
    let cfg = config(
        dir.path(),
        &(hook_yaml("a", &a, &a, "5s", "continue") + &hook_yaml("b", &b, &b, "5s", "continue")),
    );
    let bus = PrivateBus::start();
    let mocks = Mocks::serve(&bus, true, false);
    let d = daemon(&cfg, &bus.address);
    let snap = snapshot(&d);
    // Killed when the test ends, pass or fail, and only then: until then it would hold a
    // leaked lock open.
    let _leftover = KillOnDrop(read_pid(&leftover));
    assert_eq!(snap["state"], "succeeded", "{snap}");
    assert_eq!(snap["errors"], serde_json::json!([]), "{snap}");
    let lock = released_lock(&mocks);
    assert_lock_spans(&lock, snap["id"].as_str().unwrap(), &log, 4);
}

#[test]
fn the_inhibitor_is_released_after_the_post_hooks_when_a_pre_hook_aborts() {
    require_root();
    let dir = scratch_dir();
    let log = dir.path().join("hooks.log");
    let ok = timed_script(dir.path(), "ok.sh", &log, "sleep 0.1");
    let fail = timed_script(
        dir.path(),
        "fail.sh",
        &log,
        "sleep 0.1\n[ \"$QUIESCE_PHASE\" = pre ] && exit 3\ntrue",
    );
    let cfg = config(
        dir.path(),
        &(hook_yaml("ok", &ok, &ok, "5s", "continue")
            + &hook_yaml("fail", &fail, &fail, "5s", "abort")),
    );
    let bus = PrivateBus::start();
    let mocks = Mocks::serve(&bus, true, false);
    let d = daemon(&cfg, &bus.address);
    let id = create(&d);
    let snap = wait(&d, &id, "done");
    assert_eq!(snap["state"], "failed", "{snap}");
    let lock = released_lock(&mocks);
    let (_, _, runs) = hook_span(&log);
    assert!(runs >= 3, "{}", fs::read_to_string(&log).unwrap());
    assert_lock_spans(&lock, &id, &log, runs);
}

#[test]
fn the_inhibitor_is_released_after_the_post_hooks_on_daemon_shutdown() {
    require_root();
    let dir = scratch_dir();
    let log = dir.path().join("hooks.log");
    let slow = timed_script(dir.path(), "slow.sh", &log, "sleep 0.5");
    let cfg = config(
        dir.path(),
        &hook_yaml("slow", &slow, &slow, "5s", "continue"),
    );
    let bus = PrivateBus::start();
    let mocks = Mocks::serve(&bus, true, false);
    let mut d = daemon(&cfg, &bus.address);
    let id = create(&d);
    wait(&d, &id, "frozen");
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    let lock = released_lock(&mocks);
    assert_lock_spans(&lock, &id, &log, 2);
}

/// SIGKILLs a process the test made when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = common::run_status("kill", &["-9", &self.0.to_string()]);
    }
}

/// Whether `pid` is gone or a zombie.
fn dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_dead(pid: i32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while !dead(pid) {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn read_pid(path: &Path) -> i32 {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < end, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pre hook that records its helper's pid and its cgroup, starts a daemonized grandchild
/// (double fork, setsid) that records its pid and cgroup, then runs `then`.
fn forking_hook(dir: &Path, then: &str) -> PathBuf {
    let d = dir.display();
    script(
        dir,
        "fork.sh",
        &format!(
            "[ \"$QUIESCE_PHASE\" = post ] && exit 0\n\
             echo $PPID > {d}/helper.pid\n\
             cat /proc/self/cgroup > {d}/hook.cgroup\n\
             sh -c 'setsid sh -c \"echo \\$\\$ > {d}/gc.pid; cat /proc/self/cgroup > {d}/gc.cgroup; exec sleep 300\" </dev/null >/dev/null 2>&1 &'\n\
             while [ ! -s {d}/gc.cgroup ]; do sleep 0.01; done\n\
             {then}"
        ),
    )
}

/// The unit the mock created for `hook`'s `phase` run of snapshot `id`.
fn unit_of(mocks: &Mocks, id: &str, hook: &str, phase: &str) -> bus::Unit {
    let name = format!("quiesce-hook-{id}-{hook}-{phase}.service");
    mocks
        .units()
        .into_iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("no service {name}: {:#?}", mocks.units()))
}

fn wait_gone(mocks: &Mocks, name: &str) -> bus::Unit {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let u = mocks.units().into_iter().find(|u| u.name == name).unwrap();
        if u.gone || Instant::now() > end {
            return u;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_timed_out_hook_is_killed_through_its_service_with_its_daemonized_grandchild() {
    require_root();
    let dir = scratch_dir();
    let hook = forking_hook(dir.path(), "sleep 300");
    let cfg = config(
        dir.path(),
        &hook_yaml("fork", &hook, &hook, "1s", "continue"),
    );
    let bus = PrivateBus::start();
    let mocks = Mocks::serve(&bus, false, true);
    let d = daemon(&cfg, &bus.address);
    let snap = snapshot(&d);
    let id = snap["id"].as_str().unwrap();
    assert_eq!(snap["hooks"][0]["timed_out"], true, "{snap}");

    let unit = unit_of(&mocks, id, "fork", "pre");
    let helper = read_pid(&dir.path().join("helper.pid"));
    assert_eq!(unit.pids, vec![helper as u32], "{unit:#?}");
    assert_eq!(unit.mode, "fail");
    assert_eq!(unit.collect_mode.as_deref(), Some("inactive-or-failed"));
    assert!(unit.description.contains(id), "{unit:#?}");
    assert_eq!(unit.kill_mode.as_deref(), Some("process"), "{unit:#?}");
    // Both the hook and its escaped grandchild were born in the service's cgroup.
    for f in ["hook.cgroup", "gc.cgroup"] {
        let cg = fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(
            cg.lines().any(|l| l.ends_with(&format!("/{}", unit.name))),
            "{f}: {cg}"
        );
    }
    let gc = read_pid(&dir.path().join("gc.pid"));
    assert!(
        wait_dead(gc, Duration::from_secs(3)),
        "grandchild {gc} survived"
    );
    let unit = wait_gone(&mocks, &unit.name);
    assert_eq!(unit.kills, vec![("all".to_string(), 9)], "{unit:#?}");
    assert!(unit.gone, "{unit:#?}");
    assert!(
        !unit.cgroup.exists(),
        "{} still exists",
        unit.cgroup.display()
    );
    // The post run (exits at once) had a service too, dropped once empty, without a kill.
    let post = wait_gone(&mocks, &unit_of(&mocks, id, "fork", "post").name);
    assert!(post.gone && post.kills.is_empty(), "{post:#?}");
}

#[test]
fn a_lost_helper_does_not_leave_the_hooks_daemonized_grandchild_behind() {
    require_root();
    let dir = scratch_dir();
    // The hook kills its own helper: only the cgroup still reaches the setsid grandchild.
    let hook = forking_hook(dir.path(), "kill -9 $PPID\nsleep 300");
    let cfg = config(
        dir.path(),
        &hook_yaml("lost", &hook, &hook, "10s", "continue"),
    );
    let bus = PrivateBus::start();
    let mocks = Mocks::serve(&bus, false, true);
    let d = daemon(&cfg, &bus.address);
    let t = Instant::now();
    let snap = snapshot(&d);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let id = snap["id"].as_str().unwrap();
    let out = snap["hooks"][0]["output"].as_str().unwrap();
    assert!(out.contains("hook helper ended without a result"), "{snap}");
    let gc = read_pid(&dir.path().join("gc.pid"));
    let alive = !wait_dead(gc, Duration::from_secs(3));
    if alive {
        let _ = common::run_status("kill", &["-9", &gc.to_string()]);
    }
    assert!(!alive, "the grandchild {gc} survived its lost helper");
    let unit = wait_gone(&mocks, &unit_of(&mocks, id, "lost", "pre").name);
    assert!(unit.kills.contains(&("all".to_string(), 9)), "{unit:#?}");
    assert!(unit.gone && !unit.cgroup.exists(), "{unit:#?}");
}

/// A hook run as a transient service: what was sent (ExecStart: the helper with the hook's
/// command; Environment: the hook's env and the QUIESCE_* variables, not on any command line;
/// the three stdio fds) and what came back (output, exit code) through the passed pipes.
#[test]
fn a_hook_runs_as_a_transient_service_with_its_fds_and_environment() {
    require_root();
    let dir = scratch_dir();
    let d_ = dir.path().display();
    let hook = script(
        dir.path(),
        "svc.sh",
        &format!(
            "echo \"phase=$QUIESCE_PHASE hook=$QUIESCE_HOOK secret=$DB_SECRET\"\n\
             echo to-stderr >&2\n\
             cat /proc/self/cgroup > {d_}/$QUIESCE_PHASE.cgroup\n\
             [ \"$QUIESCE_PHASE\" = post ] && exit 3\n\
             exit 0"
        ),
    );
    let cfg = config(
        dir.path(),
        &format!(
            "{}    env: {{DB_SECRET: s3cr3t}}\n",
            hook_yaml("svc", &hook, &hook, "10s", "continue")
        ),
    );
    let bus = PrivateBus::start();
    let mocks = Mocks::serve(&bus, false, true);
    let d = daemon(&cfg, &bus.address);
    let snap = snapshot(&d);
    let id = snap["id"].as_str().unwrap();
    assert_eq!(snap["state"], "succeeded", "{snap}");
    assert_eq!(snap["consistency"], "crash", "{snap}");
    let hooks = snap["hooks"].as_array().unwrap();
    let pre = &hooks[0];
    assert_eq!(pre["exit_code"], 0, "{snap}");
    let out = pre["output"].as_str().unwrap();
    assert!(out.contains("phase=pre hook=svc secret=s3cr3t"), "{out}");
    assert!(out.contains("to-stderr"), "{out}");
    let post = &hooks[1];
    assert_eq!(post["phase"], "post", "{snap}");
    assert_eq!(post["exit_code"], 3, "{snap}");
    assert!(snap["warnings"].to_string().contains("svc"), "{snap}");

    let unit = unit_of(&mocks, id, "svc", "pre");
    assert_eq!(unit.mode, "fail");
    assert_eq!(
        unit.std_fds,
        [
            "StandardInputFileDescriptor",
            "StandardOutputFileDescriptor",
            "StandardErrorFileDescriptor"
        ],
        "{unit:#?}"
    );
    let (path, argv, ignore) = &unit.exec_start[0];
    assert_eq!(unit.exec_start.len(), 1, "{unit:#?}");
    assert!(!ignore);
    assert!(
        Path::new(path).is_absolute() && !path.starts_with("/proc"),
        "{path}"
    );
    assert_eq!(argv[0], *path);
    assert_eq!(argv[1], "hook-exec");
    assert!(argv.contains(&"--wait-go".to_string()), "{argv:?}");
    assert!(argv.contains(&"--cancel-on-eof".to_string()), "{argv:?}");
    assert!(argv.contains(&"--timeout-ms=10000".to_string()), "{argv:?}");
    assert_eq!(argv.last().unwrap(), &hook.display().to_string());
    // Values only in the Environment property, never on a command line.
    assert!(!argv.iter().any(|a| a.contains("s3cr3t")), "{argv:?}");
    for kv in [
        "DB_SECRET=s3cr3t".to_string(),
        format!("QUIESCE_SNAPSHOT_ID={id}"),
        "QUIESCE_PHASE=pre".to_string(),
        "QUIESCE_HOOK=svc".to_string(),
    ] {
        assert!(
            unit.environment.contains(&kv),
            "{kv}: {:?}",
            unit.environment
        );
    }
    let post_unit = unit_of(&mocks, id, "svc", "post");
    assert!(
        post_unit
            .environment
            .iter()
            .any(|kv| kv.starts_with("QUIESCE_THAW_REASON=")),
        "{:?}",
        post_unit.environment
    );
    // The hook ran in the unit's cgroup, and both units ended without a kill.
    let cg = fs::read_to_string(dir.path().join("pre.cgroup")).unwrap();
    assert!(
        cg.lines().any(|l| l.ends_with(&format!("/{}", unit.name))),
        "{cg}"
    );
    for name in [&unit.name, &post_unit.name] {
        let u = wait_gone(&mocks, name);
        assert!(u.gone && u.kills.is_empty(), "{u:#?}");
    }
}

/// A pre hook cancelled by the daemon's stop: its service's main process gets SIGTERM
/// (`KillUnit(main)`), the helper stops the hook, the run reports `cancelled`.
#[test]
fn a_cancelled_hook_is_stopped_through_kill_unit() {
    require_root();
    let dir = scratch_dir();
    let d_ = dir.path().display();
    let hook = script(
        dir.path(),
        "slow.sh",
        &format!(
            "[ \"$QUIESCE_PHASE\" = post ] && exit 0\necho $$ > {d_}/hook.pid\nexec sleep 300"
        ),
    );
    let cfg = config(
        dir.path(),
        &hook_yaml("slow", &hook, &hook, "60s", "continue"),
    );
    let bus = PrivateBus::start();
    let mocks = Mocks::serve(&bus, false, true);
    let mut d = daemon(&cfg, &bus.address);
    let id = create(&d);
    let hook_pid = read_pid(&dir.path().join("hook.pid"));
    let t = Instant::now();
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        wait_dead(hook_pid, Duration::from_secs(3)),
        "hook {hook_pid} survived"
    );
    let unit = wait_gone(&mocks, &unit_of(&mocks, &id, "slow", "pre").name);
    assert!(
        unit.kills.contains(&("main".to_string(), libc::SIGTERM)),
        "{unit:#?}"
    );
    assert!(unit.gone, "{unit:#?}");
}

/// A systemd that refuses the transient service (too old for the fd properties): the hook runs
/// directly, as before, in a transient scope around its helper, killed through it at the
/// timeout.
#[test]
fn a_refused_service_falls_back_to_the_direct_path_in_a_scope() {
    require_root();
    let dir = scratch_dir();
    let hook = forking_hook(dir.path(), "sleep 300");
    let cfg = config(dir.path(), &hook_yaml("fb", &hook, &hook, "1s", "continue"));
    let bus = PrivateBus::start();
    let mocks = Mocks::serve(&bus, false, true);
    mocks
        .refuse_services
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let d = daemon(&cfg, &bus.address);
    let snap = snapshot(&d);
    let id = snap["id"].as_str().unwrap();
    assert_eq!(snap["hooks"][0]["timed_out"], true, "{snap}");
    let name = format!("quiesce-hook-{id}-fb-pre.scope");
    let unit = mocks
        .units()
        .into_iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("no scope {name}: {:#?}", mocks.units()));
    let helper = read_pid(&dir.path().join("helper.pid"));
    assert_eq!(unit.pids, vec![helper as u32], "{unit:#?}");
    assert!(unit.exec_start.is_empty(), "{unit:#?}");
    let gc = read_pid(&dir.path().join("gc.pid"));
    assert!(
        wait_dead(gc, Duration::from_secs(3)),
        "grandchild {gc} survived"
    );
    let unit = wait_gone(&mocks, &name);
    assert_eq!(unit.kills, vec![("all".to_string(), 9)], "{unit:#?}");
}

/// A snapshot with one trivial hook; checks it ran through the process-group path, that the
/// report is clean, and returns the daemon's log and the time the snapshot took.
fn degraded_snapshot(address: &str) -> (String, Duration) {
    let dir = scratch_dir();
    let d = dir.path().display().to_string();
    let hook = script(
        dir.path(),
        "h.sh",
        &format!("cat /proc/self/cgroup > {d}/$QUIESCE_PHASE.cgroup"),
    );
    let cfg = config(
        dir.path(),
        &(hook_yaml("h1", &hook, &hook, "5s", "continue")
            + &hook_yaml("h2", &hook, &hook, "5s", "continue")),
    );
    let mut daemon = daemon(&cfg, address);
    let t = Instant::now();
    let first = snapshot(&daemon);
    let took = t.elapsed();
    // The next snapshot asks again (dbus may have started meanwhile): still clean and quick.
    let second = snapshot(&daemon);
    for snap in [&first, &second] {
        assert_eq!(snap["state"], "succeeded", "{snap}");
        assert_eq!(snap["errors"], serde_json::json!([]), "{snap}");
        // Only the one that `freeze.enabled: false` always brings.
        let warnings = snap["warnings"].as_array().unwrap();
        assert!(
            warnings.iter().all(|w| w["reason"] == "freeze_disabled"),
            "{snap}"
        );
        assert_eq!(snap["hooks"].as_array().unwrap().len(), 4, "{snap}");
        for h in snap["hooks"].as_array().unwrap() {
            assert_eq!(h["exit_code"], 0, "{snap}");
        }
    }
    for phase in ["pre", "post"] {
        let cg = fs::read_to_string(dir.path().join(format!("{phase}.cgroup"))).unwrap();
        assert!(!cg.contains("quiesce-hook-"), "{cg}");
    }
    daemon.signal("TERM");
    let (code, log) = daemon.exit(Duration::from_secs(10));
    assert_eq!(code, 0, "{log}");
    (log, took)
}

#[test]
fn without_a_bus_snapshots_run_as_before_without_delay() {
    require_root();
    let dir = scratch_dir();
    let address = format!("unix:path={}/no-such-socket", dir.path().display());
    let (log, took) = degraded_snapshot(&address);
    assert!(took < Duration::from_millis(1500), "{took:?}\n{log}");
    assert_eq!(log.matches("no D-Bus system bus").count(), 1, "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn a_bus_without_logind_or_systemd_runs_snapshots_as_before_without_delay() {
    require_root();
    let bus = PrivateBus::start();
    let (log, took) = degraded_snapshot(&bus.address);
    assert!(took < Duration::from_millis(1500), "{took:?}\n{log}");
    assert_eq!(
        log.matches("org.freedesktop.systemd1 is not available")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}
