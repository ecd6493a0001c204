//! The driver, in-process, against the fakes of the hook runner and the freezer: no root, no
//! processes, tokio's clock paused (time moves only when every task waits).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::fakes::{self, FakeFreezers, FakeHooks};
use super::model::Snapshot;
use super::ports::Ports;
use super::{Context, Control, ControlMsg, Outputs, Request};
use crate::hooks::Phase;
use crate::snapshot::lifecycle::{Consistency, Reason, Refusal, Requested, State, ThawReason};

fn context(hooks_yaml: &str, timeout: &str) -> Context {
    fakes::context(&format!(
        "freeze:\n  timeout: {timeout}\nhooks: {hooks_yaml}\n"
    ))
}

const THREE: &str = "[{name: a, pre: [/bin/a], post: [/bin/a]}, \
                     {name: b, pre: [/bin/b], post: [/bin/b]}, \
                     {name: c, pre: [/bin/c], post: [/bin/c]}]";

struct Running {
    controls: mpsc::Sender<ControlMsg>,
    report: watch::Receiver<Snapshot>,
    task: tokio::task::JoinHandle<Snapshot>,
}

fn request(requested: Requested) -> Request {
    Request {
        id: "snap-1".into(),
        request_id: None,
        channel: super::model::Channel::Http,
        requested,
        freeze_timeout: None,
        mounts: None,
        callback_url: None,
        preflush: true,
    }
}

fn start(ctx: &Context, ports: &Ports, requested: Requested) -> Running {
    let prepared = super::prepare_with(ctx, ports, request(requested)).expect("accepted");
    let (tx, rx) = mpsc::channel(8);
    let (report_tx, report) = watch::channel(super::initial_snapshot(&prepared));
    let task = tokio::spawn(super::run_with(
        ctx.clone(),
        ports.clone(),
        prepared,
        rx,
        Outputs {
            report: report_tx,
            freeze_view: None,
        },
    ));
    Running {
        controls: tx,
        report,
        task,
    }
}

impl Running {
    async fn until(&mut self, f: impl Fn(&Snapshot) -> bool) -> Snapshot {
        self.report
            .wait_for(|s| f(s))
            .await
            .expect("report")
            .clone()
    }
    async fn control(&self, control: Control) -> Result<(), Refusal> {
        let (reply, answer) = oneshot::channel();
        let sent = self.controls.send(ControlMsg {
            control,
            reply: Some(reply),
        });
        match sent.await {
            Ok(()) => answer.await.unwrap(),
            // The snapshot has ended: its task no longer takes controls.
            Err(_) => Err(Refusal::Ended(self.report.borrow().state)),
        }
    }
    async fn end(self) -> Snapshot {
        self.task.await.unwrap()
    }
}

fn setup(hooks_yaml: &str, timeout: &str) -> (Context, Arc<FakeHooks>, Arc<FakeFreezers>, Ports) {
    let ctx = context(hooks_yaml, timeout);
    let hooks = Arc::new(FakeHooks::default());
    let freezers = FakeFreezers::new(&["/data", "/logs"]);
    let ports = fakes::ports(&hooks, &freezers);
    (ctx, hooks, freezers, ports)
}

fn phases(hooks: &FakeHooks) -> Vec<String> {
    hooks
        .calls()
        .iter()
        .map(|c| format!("{}/{}", c.name, c.phase))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_whole_cycle_is_application_consistent() {
    let (ctx, hooks, freezers, ports) = setup(THREE, "10s");
    freezers.behaviour.lock().unwrap().settle_after = Duration::from_millis(30);
    let mut r = start(&ctx, &ports, Requested::Application);
    let frozen = r.until(|s| s.state == State::Frozen).await;
    assert_eq!(frozen.consistency, Some(Consistency::Application));
    assert!(frozen.mounts.iter().all(|m| m.frozen));
    assert!(frozen.freeze_deadline.is_some(), "derived from the freezer");
    r.control(Control::HostThaw { taken: true }).await.unwrap();
    let end = r.end().await;
    assert_eq!(end.state, State::Succeeded);
    assert_eq!(end.thaw_reason, Some(ThawReason::Host));
    assert_eq!(
        phases(&hooks),
        ["a/pre", "b/pre", "c/pre", "c/post", "b/post", "a/post"]
    );
    // The snapshot id reaches the hook runner as such, and the posts see the thaw reason.
    assert!(hooks.calls().iter().all(|c| c.snapshot_id == "snap-1"));
    assert!(hooks
        .calls()
        .iter()
        .filter(|c| c.phase == Phase::Post)
        .all(|c| c.thaw_reason.as_deref() == Some("host")));
    assert!(end.mounts.iter().all(|m| !m.frozen));
    assert_eq!(freezers.records()[0].thaw_reason, Some(ThawReason::Host));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_thaws_on_time_and_the_snapshot_fails() {
    let (ctx, hooks, freezers, ports) = setup(THREE, "2s");
    let r = start(&ctx, &ports, Requested::Application);
    let end = r.end().await;
    assert_eq!(
        (end.state, end.consistency, end.thaw_reason),
        (
            State::Failed,
            Some(Consistency::Crash),
            Some(ThawReason::Deadline)
        )
    );
    assert_eq!(end.errors[0].reason, Reason::Deadline);
    let rec = &freezers.records()[0];
    assert_eq!(rec.thawed, rec.deadline, "thawed exactly at the deadline");
    assert_eq!(phases(&hooks).len(), 6, "every post hook ran");
}

#[tokio::test(start_paused = true)]
async fn a_host_thaw_is_answered_once_nothing_is_frozen() {
    let (ctx, _hooks, freezers, ports) = setup("[]", "10s");
    freezers.behaviour.lock().unwrap().thaw_after = Duration::from_millis(40);
    let mut r = start(&ctx, &ports, Requested::Application);
    r.until(|s| s.state == State::Frozen).await;
    let asked = Instant::now();
    r.control(Control::HostThaw { taken: true }).await.unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(40));
    assert!(r.report.borrow().mounts.iter().all(|m| !m.frozen));
    // A second thaw: the snapshot is no longer frozen.
    assert!(matches!(
        r.control(Control::HostThaw { taken: true }).await,
        Err(Refusal::NotFrozen(_) | Refusal::Ended(_))
    ));
    let end = r.end().await;
    assert_eq!(end.consistency, Some(Consistency::FileSystem));
    assert_eq!(freezers.records()[0].thaw_requests, 1);
}

#[tokio::test(start_paused = true)]
async fn abort_during_a_pre_hook_cancels_it_and_freezes_nothing() {
    let (ctx, hooks, freezers, ports) = setup(THREE, "10s");
    hooks.set("b", Phase::Pre, 0, Duration::from_secs(20));
    let mut r = start(&ctx, &ports, Requested::Application);
    r.until(|s| s.hooks.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    r.control(Control::Abort).await.unwrap();
    let end = r.end().await;
    assert_eq!((end.state, end.consistency), (State::Aborted, None));
    assert!(freezers.records().is_empty(), "never frozen");
    assert_eq!(phases(&hooks), ["a/pre", "b/pre", "b/post", "a/post"]);
}

#[tokio::test(start_paused = true)]
async fn a_freeze_that_cannot_start_is_crash_consistent() {
    let (ctx, _hooks, freezers, ports) = setup("[]", "10s");
    freezers.behaviour.lock().unwrap().start_error = Some("no watchdog".into());
    let mut r = start(&ctx, &ports, Requested::Application);
    let frozen = r.until(|s| s.state == State::Frozen).await;
    assert_eq!(frozen.consistency, Some(Consistency::Crash));
    assert_eq!(frozen.errors[0].reason, Reason::FreezeFailed);
    assert!(frozen
        .mounts
        .iter()
        .all(|m| m.error.as_deref() == Some("no watchdog")));
    r.control(Control::HostThaw { taken: true }).await.unwrap();
    let end = r.end().await;
    assert_eq!((end.state, end.thaw_reason), (State::Succeeded, None));
}

#[tokio::test(start_paused = true)]
async fn a_failed_mount_is_crash_but_can_succeed() {
    let (ctx, _hooks, freezers, ports) = setup(THREE, "10s");
    freezers.behaviour.lock().unwrap().failing = vec![1];
    let mut r = start(&ctx, &ports, Requested::Application);
    let frozen = r.until(|s| s.state == State::Frozen).await;
    assert_eq!(frozen.consistency, Some(Consistency::Crash));
    assert!(frozen.mounts[1].error.is_some());
    r.control(Control::HostThaw { taken: true }).await.unwrap();
    assert_eq!(r.end().await.state, State::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_lost_watchdog_ends_the_snapshot_failed_with_the_posts_run() {
    let (ctx, hooks, freezers, ports) = setup(THREE, "10s");
    freezers.behaviour.lock().unwrap().lost_after = Some(Duration::from_secs(1));
    let r = start(&ctx, &ports, Requested::Application);
    let end = r.end().await;
    assert_eq!(
        (end.state, end.consistency, end.thaw_reason),
        (
            State::Failed,
            Some(Consistency::Crash),
            Some(ThawReason::Error)
        )
    );
    assert_eq!(end.warnings[0].reason, Reason::Freezer);
    assert_eq!(phases(&hooks).len(), 6);
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_frozen_thaws_at_once() {
    let (ctx, hooks, _freezers, ports) = setup(THREE, "10s");
    let mut r = start(&ctx, &ports, Requested::Application);
    r.until(|s| s.state == State::Frozen).await;
    r.control(Control::Shutdown).await.unwrap();
    let end = r.end().await;
    assert_eq!(
        (end.state, end.thaw_reason),
        (State::Aborted, Some(ThawReason::Shutdown))
    );
    assert!(hooks
        .calls()
        .iter()
        .filter(|c| c.phase == Phase::Post)
        .all(|c| c.thaw_reason.as_deref() == Some("shutdown")));
}

#[tokio::test(start_paused = true)]
async fn freezing_disabled_runs_the_hooks_and_freezes_nothing() {
    let (ctx, hooks, freezers, ports) = setup(THREE, "10s");
    let mut config = (*ctx.config).clone();
    config.freeze.enabled = false;
    let ctx = Context {
        config: Arc::new(config),
        ..ctx
    };
    let mut r = start(&ctx, &ports, Requested::Application);
    r.until(|s| s.state == State::Frozen).await;
    r.control(Control::HostThaw { taken: true }).await.unwrap();
    let end = r.end().await;
    assert_eq!(
        (end.state, end.consistency),
        (State::Succeeded, Some(Consistency::Crash))
    );
    assert!(freezers.records().is_empty());
    assert_eq!(phases(&hooks).len(), 6);
    assert_eq!(end.warnings[0].reason, Reason::FreezeDisabled);
}

/// Random timings of hooks, freezes and the host against the invariants: every freeze is
/// thawed, never after its deadline; post hooks run in reverse order for exactly the pre hooks
/// that ran; the verdict follows the contract.
#[tokio::test(start_paused = true)]
async fn random_timings_keep_the_invariants() {
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..200 {
        let (ctx, hooks, freezers, ports) = setup(THREE, "1s");
        for name in ["a", "b", "c"] {
            let fail = next(10) == 0;
            hooks.set(
                name,
                Phase::Pre,
                i32::from(fail),
                Duration::from_millis(next(50)),
            );
            hooks.set(name, Phase::Post, 0, Duration::from_millis(next(50)));
        }
        {
            let mut b = freezers.behaviour.lock().unwrap();
            b.settle_after = Duration::from_millis(next(1500));
            b.thaw_after = Duration::from_millis(next(20));
            b.failing = if next(8) == 0 { vec![0] } else { vec![] };
            b.lost_after = (next(20) == 0).then(|| Duration::from_millis(next(1500)));
        }
        let mut r = start(&ctx, &ports, Requested::Application);
        let host_after = Duration::from_millis(next(1400));
        let abort = next(6) == 0;
        let host = async {
            r.until(|s| s.state == State::Frozen || s.state.is_end())
                .await;
            tokio::time::sleep(host_after).await;
            let c = if abort {
                Control::Abort
            } else {
                Control::HostThaw { taken: true }
            };
            let _ = r.control(c).await;
        };
        tokio::time::timeout(Duration::from_secs(30), host)
            .await
            .expect("the host's turn comes");
        let end = tokio::time::timeout(Duration::from_secs(30), r.end())
            .await
            .unwrap_or_else(|_| panic!("round {round}: never ended"));
        assert!(end.state.is_end());
        for rec in freezers.records() {
            if rec.started.is_some() {
                let thawed = rec
                    .thawed
                    .unwrap_or_else(|| panic!("round {round}: not thawed"));
                // A thaw asked for just before the deadline may take its FITHAW time (here at
                // most 20 ms) past it; the contract allows one second.
                assert!(
                    thawed <= rec.deadline.unwrap() + Duration::from_millis(20),
                    "round {round}: thawed after the deadline"
                );
                if rec.thaw_reason == Some(ThawReason::Deadline) {
                    assert_eq!(rec.thawed, rec.deadline, "round {round}");
                }
            }
        }
        assert!(end.mounts.iter().all(|m| !m.frozen), "round {round}");
        let calls = hooks.calls();
        let pres: Vec<&str> = calls
            .iter()
            .filter(|c| c.phase == Phase::Pre)
            .map(|c| c.name.as_str())
            .collect();
        let mut posts: Vec<&str> = calls
            .iter()
            .filter(|c| c.phase == Phase::Post)
            .map(|c| c.name.as_str())
            .collect();
        posts.reverse();
        assert_eq!(pres, posts, "round {round}: posts mirror the pres");
        let deadline_hit = end.errors.iter().any(|e| e.reason == Reason::Deadline);
        match end.state {
            State::Succeeded => {
                assert!(!deadline_hit);
                let all_ok = end
                    .hooks
                    .iter()
                    .filter(|h| h.phase == "pre")
                    .all(|h| h.exit_code == Some(0));
                let all_froze = end
                    .errors
                    .iter()
                    .all(|e| e.reason != Reason::MountNotFrozen);
                let expected = match (all_froze, all_ok) {
                    (false, _) => Consistency::Crash,
                    (true, true) => Consistency::Application,
                    (true, false) => Consistency::FileSystem,
                };
                assert_eq!(end.consistency, Some(expected), "round {round}");
            }
            State::Aborted => assert!(abort, "round {round}"),
            State::Failed => assert_eq!(end.consistency, Some(Consistency::Crash), "{round}"),
            _ => unreachable!(),
        }
    }
}
