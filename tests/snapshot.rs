//! A whole snapshot in-process: the lifecycle wired to real hook scripts and real freezes of
//! loop-mounted filesystems. Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use quiesce::config::Config;
use quiesce::snapshot::lifecycle::{Consistency, Refusal, Requested, State, ThawReason};
use quiesce::snapshot::model::Snapshot;
use quiesce::snapshot::{self, Context, Control, ControlMsg, Request};
use tokio::sync::{mpsc, oneshot, watch};

const QUIESCE: &str = env!("CARGO_BIN_EXE_quiesce");

/// A hook script that appends "NAME PHASE THAW_REASON" to the log (outside the frozen mounts),
/// then runs `extra` shell code.
fn hook_script(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.sh"));
    let log = dir.join("hooks.log");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$QUIESCE_HOOK $QUIESCE_PHASE ${{QUIESCE_THAW_REASON:--}} $QUIESCE_SNAPSHOT_ID\" >> {}\n{extra}\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Setup {
    dir: tempfile::TempDir,
    hooks_dir: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = scratch_dir();
        let hooks_dir = dir.path().join("hooks");
        fs::create_dir(&hooks_dir).unwrap();
        Setup { dir, hooks_dir }
    }

    /// Loads a config with `hooks_yaml` (a YAML list) restricted to `mounts`.
    fn context(&self, mounts: &[&Path], hooks_yaml: &str, timeout: &str) -> Context {
        let list: Vec<String> = mounts.iter().map(|p| format!("{p:?}")).collect();
        let path = self.dir.path().join("config.yaml");
        fs::write(
            &path,
            format!(
                "listen: \"unix:{}\"\nstate_dir: {:?}\nauth: {{mode: none}}\nfreeze:\n  timeout: {timeout}\n  include_mounts: [{}]\nhooks: {hooks_yaml}\n",
                self.dir.path().join("api.sock").display(),
                self.dir.path().join("state"),
                list.join(", ")
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        Context {
            config: Arc::new(config),
            exe: PathBuf::from(QUIESCE),
            callback_key: None,
        }
    }

    fn log(&self) -> Vec<String> {
        fs::read_to_string(self.hooks_dir.join("hooks.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect()
    }
}

/// A running snapshot, driven like the HTTP layer will drive it.
struct Running {
    controls: mpsc::Sender<ControlMsg>,
    report: watch::Receiver<Snapshot>,
    task: tokio::task::JoinHandle<Snapshot>,
}

fn start(ctx: &Context, requested: Requested) -> Running {
    let request = Request {
        id: "snap-1".into(),
        request_id: None,
        channel: quiesce::snapshot::model::Channel::Http,
        requested,
        freeze_timeout: None,
        mounts: None,
        callback_url: None,
        preflush: true,
    };
    let prepared = snapshot::prepare(ctx, request).expect("request accepted");
    let (tx, rx) = mpsc::channel(8);
    let (report_tx, report) = watch::channel(snapshot::initial_snapshot(&prepared));
    let task = tokio::spawn(snapshot::run(ctx.clone(), prepared, rx, report_tx));
    Running {
        controls: tx,
        report,
        task,
    }
}

impl Running {
    async fn wait_for(&mut self, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let r = tokio::time::timeout(Duration::from_secs(60), self.report.wait_for(|s| pred(s)))
            .await
            .expect("snapshot did not reach the expected state in time")
            .expect("snapshot task alive");
        r.clone()
    }

    async fn send(&self, control: Control) -> Result<(), Refusal> {
        let (tx, rx) = oneshot::channel();
        self.controls
            .send(ControlMsg {
                control,
                reply: Some(tx),
            })
            .await
            .unwrap();
        rx.await.unwrap()
    }

    async fn end(self) -> Snapshot {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("snapshot ended in time")
            .unwrap()
    }
}

fn two_hooks(s: &Setup) -> String {
    let a = hook_script(&s.hooks_dir, "a", "");
    let b = hook_script(&s.hooks_dir, "b", "");
    format!(
        "[{{name: a, pre: [{a:?}, pre], post: [{a:?}, post]}}, {{name: b, pre: [{b:?}], post: [{b:?}]}}]"
    )
}

#[tokio::test]
async fn application_consistent_cycle_runs_hooks_in_order_around_a_real_freeze() {
    require_root();
    let s = Setup::new();
    let fs1 = LoopFs::create(s.dir.path(), "ext", Fs::Ext4, 32);
    let fs2 = LoopFs::create(s.dir.path(), "xfs", Fs::Xfs, 300);
    fill_dirty(&fs1.path("data"), 8);
    let ctx = s.context(&[&fs1.mount, &fs2.mount], &two_hooks(&s), "30s");
    let mut run = start(&ctx, Requested::Application);
    let frozen = run.wait_for(|s| s.state == State::Frozen).await;
    assert_eq!(frozen.consistency, Some(Consistency::Application));
    assert!(frozen.mounts.iter().all(|m| m.frozen), "{frozen:?}");
    assert!(frozen.frozen_at.is_some() && frozen.freeze_deadline.is_some());
    Writer::start_probe(&fs1.mount).assert_blocked_for(Duration::from_millis(200));
    let copy = check_image_copy(&fs1.image, Fs::Ext4, s.dir.path());
    verify_pattern(&copy.mount_ro(&s.dir.path().join("copy")).path("data"), 8).unwrap();

    // The thaw is answered once every mount is thawed.
    run.send(Control::HostThaw { taken: true }).await.unwrap();
    let after = run.report.borrow().clone();
    assert!(after.mounts.iter().all(|m| !m.frozen), "{after:?}");
    assert!(after.thawed_at.is_some());
    Writer::start_probe(&fs1.mount).assert_finishes_within(Duration::from_secs(2));

    let end = run.end().await;
    assert_eq!(end.state, State::Succeeded);
    assert_eq!(end.consistency, Some(Consistency::Application));
    assert_eq!(end.thaw_reason, Some(ThawReason::Host));
    assert!(end.frozen_ms.is_some() && end.finished_at.is_some());
    assert_eq!(
        s.log(),
        ["a pre -", "b pre -", "b post host", "a post host"],
        "pre in order, post in reverse, with the thaw reason"
    );
    assert_eq!(end.hooks.len(), 4);
    assert!(end.hooks.iter().all(|h| h.exit_code == Some(0)));
    assert!(end.errors.is_empty(), "{:?}", end.errors);
}

#[tokio::test]
async fn abort_while_frozen_thaws_and_runs_the_post_hooks() {
    require_root();
    let s = Setup::new();
    let fs1 = LoopFs::create(s.dir.path(), "a", Fs::Ext4, 32);
    let ctx = s.context(&[&fs1.mount], &two_hooks(&s), "30s");
    let mut run = start(&ctx, Requested::Application);
    run.wait_for(|s| s.state == State::Frozen).await;
    run.send(Control::Abort).await.unwrap();
    // Answered once nothing is frozen.
    assert!(run.report.borrow().mounts.iter().all(|m| !m.frozen));
    Writer::start_probe(&fs1.mount).assert_finishes_within(Duration::from_secs(2));
    let end = run.end().await;
    assert_eq!(
        (end.state, end.consistency, end.thaw_reason),
        (State::Aborted, None, Some(ThawReason::Abort))
    );
    assert_eq!(
        s.log(),
        ["a pre -", "b pre -", "b post abort", "a post abort"]
    );
}

#[tokio::test]
async fn the_deadline_thaws_then_runs_the_post_hooks_and_the_late_thaw_is_refused() {
    require_root();
    let s = Setup::new();
    let fs1 = LoopFs::create(s.dir.path(), "a", Fs::Ext4, 32);
    let ctx = s.context(&[&fs1.mount], &two_hooks(&s), "1s");
    let mut run = start(&ctx, Requested::Application);
    run.wait_for(|s| s.state == State::Frozen).await;
    let past = run
        .wait_for(|s| s.state.is_end() || s.state == State::PostHooks)
        .await;
    assert_eq!(past.thaw_reason, Some(ThawReason::Deadline));
    let late = run.send(Control::HostThaw { taken: true }).await;
    assert!(
        matches!(late, Err(Refusal::NotFrozen(_)) | Err(Refusal::Ended(_))),
        "{late:?}"
    );
    let end = run.end().await;
    assert_eq!(
        (end.state, end.consistency, end.thaw_reason),
        (
            State::Failed,
            Some(Consistency::Crash),
            Some(ThawReason::Deadline)
        )
    );
    assert!(end.frozen_ms.unwrap() < 2000, "{:?}", end.frozen_ms);
    assert_eq!(end.errors.last().unwrap().reason, "deadline");
    assert_eq!(
        s.log(),
        ["a pre -", "b pre -", "b post deadline", "a post deadline"]
    );
    Writer::start_probe(&fs1.mount).assert_finishes_within(Duration::from_secs(1));
}

#[tokio::test]
async fn a_failing_pre_hook_with_abort_freezes_nothing() {
    require_root();
    let s = Setup::new();
    let fs1 = LoopFs::create(s.dir.path(), "a", Fs::Ext4, 32);
    let a = hook_script(&s.hooks_dir, "a", "");
    let bad = hook_script(
        &s.hooks_dir,
        "bad",
        "[ \"$QUIESCE_PHASE\" = pre ] && exit 3; exit 0",
    );
    let c = hook_script(&s.hooks_dir, "c", "");
    let hooks = format!(
        "[{{name: a, pre: [{a:?}], post: [{a:?}]}}, {{name: bad, pre: [{bad:?}], post: [{bad:?}], on_failure: abort}}, {{name: c, pre: [{c:?}], post: [{c:?}]}}]"
    );
    let ctx = s.context(&[&fs1.mount], &hooks, "30s");
    let end = start(&ctx, Requested::Application).end().await;
    assert_eq!(
        (end.state, end.consistency, end.thaw_reason),
        (State::Failed, None, None)
    );
    assert!(end.frozen_at.is_none() && end.mounts.iter().all(|m| !m.frozen));
    assert_eq!(end.hooks[1].exit_code, Some(3));
    assert_eq!(end.errors[0].reason, "pre_hook_failed");
    assert_eq!(
        s.log(),
        ["a pre -", "bad pre -", "bad post none", "a post none"]
    );
    assert!(!s
        .dir
        .path()
        .join("state/frozen")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some()));
}

#[tokio::test]
async fn a_pre_hook_past_its_timeout_is_killed_and_gives_file_system() {
    require_root();
    let s = Setup::new();
    let fs1 = LoopFs::create(s.dir.path(), "a", Fs::Ext4, 32);
    let slow = hook_script(
        &s.hooks_dir,
        "slow",
        "[ \"$QUIESCE_PHASE\" = pre ] && exec sleep 60; exit 0",
    );
    let hooks = format!("[{{name: slow, pre: [{slow:?}], post: [{slow:?}], timeout: 500ms}}]");
    let ctx = s.context(&[&fs1.mount], &hooks, "30s");
    let mut run = start(&ctx, Requested::Application);
    let frozen = run.wait_for(|s| s.state == State::Frozen).await;
    assert_eq!(frozen.consistency, Some(Consistency::FileSystem));
    assert!(frozen.hooks[0].timed_out);
    run.send(Control::HostThaw { taken: true }).await.unwrap();
    let end = run.end().await;
    assert_eq!(end.state, State::Succeeded);
    assert_eq!(end.consistency, Some(Consistency::FileSystem));
}

#[tokio::test]
async fn shutdown_while_frozen_thaws_and_runs_the_post_hooks() {
    require_root();
    let s = Setup::new();
    let fs1 = LoopFs::create(s.dir.path(), "a", Fs::Ext4, 32);
    let ctx = s.context(&[&fs1.mount], &two_hooks(&s), "30s");
    let mut run = start(&ctx, Requested::Application);
    run.wait_for(|s| s.state == State::Frozen).await;
    run.send(Control::Shutdown).await.unwrap();
    let end = run.end().await;
    assert_eq!(
        (end.state, end.thaw_reason),
        (State::Aborted, Some(ThawReason::Shutdown))
    );
    assert_eq!(
        s.log(),
        ["a pre -", "b pre -", "b post shutdown", "a post shutdown"]
    );
    Writer::start_probe(&fs1.mount).assert_finishes_within(Duration::from_secs(2));
}

#[tokio::test]
async fn a_file_system_request_runs_no_hooks() {
    require_root();
    let s = Setup::new();
    let fs1 = LoopFs::create(s.dir.path(), "a", Fs::Ext4, 32);
    let ctx = s.context(&[&fs1.mount], &two_hooks(&s), "30s");
    let mut run = start(&ctx, Requested::FileSystem);
    run.wait_for(|s| s.state == State::Frozen).await;
    run.send(Control::HostThaw { taken: true }).await.unwrap();
    let end = run.end().await;
    assert_eq!(
        (end.state, end.consistency),
        (State::Succeeded, Some(Consistency::FileSystem))
    );
    assert!(s.log().is_empty() && end.hooks.is_empty());
}

#[tokio::test]
async fn a_bad_request_is_refused_before_anything_runs() {
    require_root();
    let s = Setup::new();
    let fs1 = LoopFs::create(s.dir.path(), "a", Fs::Ext4, 32);
    let ctx = s.context(&[&fs1.mount], &two_hooks(&s), "30s");
    let bad = |timeout: Option<Duration>, mounts: Option<Vec<PathBuf>>| {
        snapshot::prepare(
            &ctx,
            Request {
                id: "x".into(),
                request_id: None,
                channel: quiesce::snapshot::model::Channel::Http,
                requested: Requested::Application,
                freeze_timeout: timeout,
                mounts,
                callback_url: None,
                preflush: true,
            },
        )
        .unwrap_err()
        .to_string()
    };
    assert!(bad(Some(Duration::from_secs(61)), None).contains("max_timeout"));
    assert!(
        bad(None, Some(vec!["/".into()])).contains("not"),
        "{}",
        bad(None, Some(vec!["/".into()]))
    );
    assert!(s.log().is_empty());
}
