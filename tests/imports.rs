//! Hooks written for other agents (contract: `imports`), black-box: the built daemon on a loop
//! mount with real scripts in the layouts Azure Backup, qemu-ga and VMware Tools use, driven over
//! HTTP and over the qga channel. Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{scene, Daemon, Scene};
use common::qga::{qga_scene, Qga};
use common::*;
use serde_json::{json, Value};

const QUIESCE: &str = env!("CARGO_BIN_EXE_quiesce");

/// Writes an `sh` script with `mode`.
fn script(path: &Path, body: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A script that appends "NAME ARGS" to LOG, and to the mount's `hooklog` (a write that would
/// block, and so time out, if the mount were frozen), then runs `extra`.
fn logging(path: &Path, log: &Path, mount: &Path, extra: &str) {
    let name = path.file_name().unwrap().to_string_lossy();
    script(
        path,
        &format!(
            "echo \"{name} $*\" >> {log:?}\necho \"{name} $*\" >> {:?}\n{extra}",
            mount.join("hooklog")
        ),
        0o755,
    );
}

/// Appends `imports:` lines to the scene's config.
fn add_imports(s: &Scene, lines: &str) {
    let mut text = fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("imports:\n{lines}"));
    fs::write(&s.config, text).unwrap();
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// POSTs a snapshot with `body`, waits for `frozen` (or the end).
fn start(d: &Daemon, body: &str) -> Value {
    let (code, snap) = d.call("POST", "/v1/snapshots", Some(body));
    assert_eq!(code, 202, "{snap}");
    let id = snap["id"].as_str().unwrap().to_string();
    d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=60000"),
        None,
    )
    .1
}

fn thaw_and_wait(d: &Daemon, snap: &Value) -> Value {
    let id = snap["id"].as_str().unwrap();
    let (code, r) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some("{\"storage_snapshot\":\"taken\"}"),
    );
    assert_eq!(code, 200, "{r}");
    wait_done(d, id)
}

fn wait_done(d: &Daemon, id: &str) -> Value {
    d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=60000"),
        None,
    )
    .1
}

/// The report's hook runs as "NAME PHASE EXIT".
fn runs(snap: &Value) -> Vec<String> {
    snap["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{} {} {}",
                h["name"].as_str().unwrap(),
                h["phase"].as_str().unwrap(),
                h["exit_code"]
            )
        })
        .collect()
}

#[test]
fn a_qemu_ga_freeze_runs_fsfreeze_hook_d_before_the_fifreeze_and_thaw_after() {
    require_root();
    let (s, sock) = qga_scene("[]", "");
    let d_dir = s.dir.path().join("qemu/fsfreeze-hook.d");
    let log = s.dir.path().join("qemu.log");
    for name in ["20-app", "10-db"] {
        logging(&d_dir.join(name), &log, &s.fs.mount, "");
    }
    // What qemu's dispatcher skips: never run.
    for name in ["05-db.rpmnew", "06-db.dpkg-old", "07-x~", ".hidden"] {
        logging(&d_dir.join(name), &log, &s.fs.mount, "exit 1");
    }
    script(&d_dir.join("30-notexec"), "exit 1", 0o644);
    add_imports(&s, &format!("  qemu_hook_dir: {d_dir:?}\n"));
    let d = Daemon::start(&s.config);
    let mut q = Qga::connect(&sock);

    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-freeze\"}"),
        json!({"return": 1})
    );
    // Frozen now, and each `freeze` ran before: they wrote to the mount.
    assert!(is_frozen(&s.fs.mount));
    assert_eq!(read(&log), "10-db freeze\n20-app freeze\n");
    assert_eq!(
        q.call("{\"execute\":\"guest-fsfreeze-thaw\"}"),
        json!({"return": 1})
    );
    let (_, list) = d.call("GET", "/v1/snapshots", None);
    let id = list["snapshots"][0]["id"].as_str().unwrap().to_string();
    let done = wait_done(&d, &id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["consistency"], "application");
    // The thaws after the FITHAW (they wrote to the mount too), in reverse order.
    assert_eq!(
        read(&log),
        "10-db freeze\n20-app freeze\n20-app thaw\n10-db thaw\n"
    );
    assert_eq!(read(&s.fs.mount.join("hooklog")), read(&log));
    assert_eq!(
        runs(&done),
        [
            "qemu:10-db pre 0",
            "qemu:20-app pre 0",
            "qemu:20-app post 0",
            "qemu:10-db post 0"
        ]
    );
    assert!(done["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["timed_out"] == false));
}

#[test]
fn vmware_freezes_in_order_thaws_in_reverse_or_runs_freeze_fail() {
    require_root();
    let s = scene("30s", "[]");
    let dir = s.dir.path().join("vmware-tools/backupScripts.d");
    let log = s.dir.path().join("vmware.log");
    let fail_flag = s.dir.path().join("fail-b");
    logging(&dir.join("a-db"), &log, &s.fs.mount, "");
    logging(
        &dir.join("b-app"),
        &log,
        &s.fs.mount,
        &format!("[ \"$1\" = freeze ] && [ -e {fail_flag:?} ] && exit 3\nexit 0"),
    );
    fs::create_dir(dir.join("sub")).unwrap();
    add_imports(&s, &format!("  vmware_scripts_dir: {dir:?}\n"));
    let d = Daemon::start(&s.config);

    // The host's thaw: `thaw`, in reverse.
    let done = thaw_and_wait(&d, &start(&d, "{}"));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        read(&log),
        "a-db freeze\nb-app freeze\nb-app thaw\na-db thaw\n"
    );

    // The deadline thawed before the host: `freezeFail`.
    fs::write(&log, "").unwrap();
    let snap = start(&d, "{\"freeze_timeout_ms\": 300}");
    let done = wait_done(&d, snap["id"].as_str().unwrap());
    assert_eq!(done["thaw_reason"], "deadline", "{done}");
    assert_eq!(
        read(&log),
        "a-db freeze\nb-app freeze\nb-app freezeFail\na-db freezeFail\n"
    );

    // A failing `freeze` aborts, as in open-vm-tools: nothing frozen, every post `freezeFail`.
    fs::write(&log, "").unwrap();
    fs::write(&fail_flag, "").unwrap();
    let done = start(&d, "{}");
    let done = wait_done(&d, done["id"].as_str().unwrap());
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["consistency"], Value::Null);
    assert_eq!(done["mounts"][0]["frozen"], false);
    assert_eq!(
        read(&log),
        "a-db freeze\nb-app freeze\nb-app freezeFail\na-db freezeFail\n"
    );
    assert_eq!(
        runs(&done),
        [
            "vmware:a-db pre 0",
            "vmware:b-app pre 3",
            "vmware:b-app post 0",
            "vmware:a-db post 0"
        ]
    );
}

/// Azure's layout: the config (0600) and the scripts (0700) under DIR/azure.
fn azure_layout(s: &Scene, json: &str) -> PathBuf {
    let dir = s.dir.path().join("azure");
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("VMSnapshotScriptPluginConfig.json");
    fs::write(&config, json).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    config
}

#[test]
fn azure_retries_for_real_times_out_aborts_and_turns_freezing_off_on_reload() {
    require_root();
    let s = scene("30s", "[]");
    let dir = s.dir.path().join("azure");
    let log = s.dir.path().join("azure.log");
    let count = s.dir.path().join("count");
    // Fails twice, then succeeds: only real retries get it through. Not executable: Azure runs
    // it with sh.
    script(
        &dir.join("pre.sh"),
        &format!(
            "echo \"pre $*\" >> {log:?}\nn=$(cat {count:?} 2>/dev/null || echo 0)\necho $((n+1)) > {count:?}\n\
             [ \"$n\" -ge 2 ] || exit 5\n[ -e {:?} ] && exec sleep 300\nexit 0",
            s.dir.path().join("hang")
        ),
        0o600,
    );
    script(
        &dir.join("post.sh"),
        &format!("echo \"post $*\" >> {log:?}"),
        0o700,
    );
    let json = |retries: u32, timeout: u32, go_on: bool, freeze: bool| {
        format!(
            "{{\n  \"pluginName\": \"ScriptRunner\",\n  \"preScriptLocation\": {:?},\n  \"postScriptLocation\": {:?},\n  \
             \"preScriptParams\": [\"CACHE\", \"\"],\n  \"postScriptParams\": [\"x y\"],\n  \"preScriptNoOfRetries\": {retries},\n  \
             \"postScriptNoOfRetries\": 0,\n  \"timeoutInSeconds\": {timeout},\n  \"continueBackupOnFailure\": {go_on},\n  \
             \"fsFreezeEnabled\": {freeze},\n  \"ScriptsExecutionPollTimeSeconds\": 3\n}}\n",
            dir.join("pre.sh"),
            dir.join("post.sh")
        )
    };
    let config = azure_layout(&s, &json(2, 30, true, true));
    add_imports(&s, &format!("  azure_plugin_config: {config:?}\n"));
    let mut d = Daemon::start(&s.config);

    let done = thaw_and_wait(&d, &start(&d, "{}"));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["consistency"], "application", "{done}");
    assert_eq!(
        runs(&done),
        [
            "azure:ScriptRunner pre 5",
            "azure:ScriptRunner pre 5",
            "azure:ScriptRunner pre 0",
            "azure:ScriptRunner post 0"
        ]
    );
    assert_eq!(read(&log), "pre CACHE \npre CACHE \npre CACHE \npost x y\n");

    // A reload rereads the import: 1 s timeout, abort on failure; the hung pre is killed.
    fs::write(s.dir.path().join("hang"), "").unwrap();
    fs::write(&config, json(0, 1, false, true)).unwrap();
    d.signal("HUP");
    d.wait_log("configuration reloaded", Duration::from_secs(10));
    let snap = start(&d, "{}");
    let done = wait_done(&d, snap["id"].as_str().unwrap());
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["consistency"], Value::Null);
    let pre = &done["hooks"][0];
    assert_eq!(pre["timed_out"], true, "{done}");
    assert!(pre["duration_ms"].as_u64().unwrap() < 5000, "{done}");
    assert_eq!(
        done["hooks"][1]["phase"], "post",
        "a post for the pre that ran"
    );
    assert!(!is_frozen(&s.fs.mount));

    // fsFreezeEnabled false: the snapshot freezes nothing, crash-consistent at best.
    fs::remove_file(s.dir.path().join("hang")).unwrap();
    fs::write(&config, json(0, 30, true, false)).unwrap();
    d.signal("HUP");
    d.wait_log("freeze disabled", Duration::from_secs(10));
    let snap = start(&d, "{}");
    assert_eq!(snap["state"], "frozen", "{snap}");
    assert!(!is_frozen(&s.fs.mount));
    let done = thaw_and_wait(&d, &snap);
    assert_eq!(done["consistency"], "crash", "{done}");
    assert_eq!(done["warnings"][0]["reason"], "freeze_disabled", "{done}");
}

#[test]
fn bad_imports_are_refused_with_their_place_and_a_reload_keeps_the_running_config() {
    require_root();
    let s = scene("30s", "[]");
    let qdir = s.dir.path().join("fsfreeze-hook.d");
    let log = s.dir.path().join("q.log");
    logging(&qdir.join("10-db"), &log, &s.fs.mount, "");
    script(&qdir.join("20-x.dpkg-new"), "exit 1", 0o777);
    let config = azure_layout(&s, "{\"preScriptLocation\": \"/x\"}");
    fs::remove_file(&config).unwrap();
    add_imports(
        &s,
        &format!(
            "  qemu_hook_dir: {qdir:?}\n  azure_plugin_config: {config:?}\n  vmware_scripts_dir: /nonexistent-quiesce/backupScripts.d\n"
        ),
    );
    let (code, out, err) = run_status(
        QUIESCE,
        &["check-config", "--config", s.config.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        format!("  imports.azure_plugin_config: {}: does not exist: imports nothing", config.display()),
        format!("  imports.qemu_hook_dir: {}: 1 hook", qdir.display()),
        "    skipped 20-x.dpkg-new: a *.dpkg-new file, which qemu's dispatcher skips".to_string(),
        "  imports.vmware_scripts_dir: /nonexistent-quiesce/backupScripts.d: does not exist: imports nothing".to_string(),
        format!("  qemu:10-db  (from {})", qdir.display()),
        format!("    pre:  {} freeze", qdir.join("10-db").display()),
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} not in\n{out}");
    }
    let mut d = Daemon::start(&s.config);

    // Malformed JSON, then a group-writable script: each refused at its place, nothing changes.
    fs::write(&config, "{\n  \"preScriptLocation\": \"/x\",\n}\n").unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run_status(
        QUIESCE,
        &["check-config", "--config", s.config.to_str().unwrap()],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("{}:3:1: trailing comma", config.display())),
        "{err}"
    );
    fs::remove_file(&config).unwrap();
    fs::set_permissions(qdir.join("10-db"), fs::Permissions::from_mode(0o775)).unwrap();
    let (code, _, err) = run_status(
        QUIESCE,
        &["check-config", "--config", s.config.to_str().unwrap()],
    );
    assert_eq!(code, 1);
    let yaml = fs::read_to_string(&s.config).unwrap();
    let line = yaml
        .lines()
        .position(|l| l.starts_with("  qemu_hook_dir:"))
        .unwrap()
        + 1;
    assert!(
        err.starts_with(&format!(
            "{}:{line}:3: imports.qemu_hook_dir: qemu:10-db ({}) is writable by group or others (mode 0775)",
            s.config.display(),
            qdir.join("10-db").display()
        )),
        "{err}"
    );
    d.signal("HUP");
    d.wait_log("configuration reload refused", Duration::from_secs(10));
    // The running config still has its hook (mended first: the helper checks a script again
    // right before it runs it, and would refuse it as it stands).
    fs::set_permissions(qdir.join("10-db"), fs::Permissions::from_mode(0o755)).unwrap();
    let done = thaw_and_wait(&d, &start(&d, "{}"));
    assert_eq!(runs(&done), ["qemu:10-db pre 0", "qemu:10-db post 0"]);
    assert_eq!(read(&log), "10-db freeze\n10-db thaw\n");
}
