//! RCU grace periods expedited for exactly the freeze, on the real knob.
//!
//! `/sys/kernel/rcu_expedited` is global: the tests of this binary take turns (one lock), each
//! starts from 0 and puts it back to 0 whatever happens (the [`Knob`] guard). Cargo runs test
//! binaries one after another, so no other test freezes meanwhile. Needs root; fails without.

mod common;

use std::fs;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::daemon::{scene, Daemon};
use common::freeze_cli::Agent;
use common::*;

const KNOB: &str = "/sys/kernel/rcu_expedited";

static TURN: Mutex<()> = Mutex::new(());

/// The turn of one test at the knob: it reads 0 at the start, and is 0 again at the end.
struct Knob {
    _turn: MutexGuard<'static, ()>,
}

impl Knob {
    fn take() -> Knob {
        require_root();
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(
            knob(),
            "0",
            "{KNOB} is 1 before the test: someone left it set (put it back with `echo 0 > {KNOB}`)"
        );
        Knob { _turn: turn }
    }

    fn set(&self, v: &str) {
        fs::write(KNOB, v).unwrap();
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        let _ = fs::write(KNOB, "0");
    }
}

fn knob() -> String {
    fs::read_to_string(KNOB).unwrap().trim().to_string()
}

fn rcu_record(state_dir: &Path) -> bool {
    state_dir.join("frozen/rcu_expedited").exists()
}

/// `quiesce_freeze_rcu_total{rcu="…"}` from the daemon's /metrics.
fn freezes_with(d: &Daemon, rcu: &str) -> f64 {
    let (status, body) = d.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = body.as_str().unwrap().to_string();
    let series = format!("quiesce_freeze_rcu_total{{rcu=\"{rcu}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// Waits until the ended snapshot is counted (the metrics are updated once its task has
/// returned, a moment after `wait=done` answers), then says whether `rcu` counts `want`.
fn counted(d: &Daemon, rcu: &str, want: f64) {
    let total = || -> f64 {
        ["expedited", "already_expedited", "unavailable", "off"]
            .iter()
            .map(|r| freezes_with(d, r))
            .sum()
    };
    let t = Instant::now();
    while total() < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(5), "no freeze counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        freezes_with(d, rcu),
        want,
        "quiesce_freeze_rcu_total{{rcu={rcu}}}"
    );
}

/// One snapshot through the API: created, frozen, then thawed by the host; the ended Snapshot.
fn one_snapshot(d: &Daemon, while_frozen: impl FnOnce()) -> serde_json::Value {
    let id = d.frozen_snapshot("{}");
    while_frozen();
    let done = d.thaw_until_done(&id);
    assert_eq!(done["state"], "succeeded", "{done}");
    done
}

#[test]
fn a_snapshot_expedites_rcu_for_its_fifreezes_only_and_puts_the_knob_back() {
    let _k = Knob::take();
    let s = scene("30s", "[]");
    let mut d = Daemon::start(&s.config);
    let state_dir = s.dir.path().join("state");
    let done = one_snapshot(&d, || {
        // Frozen means every FIFREEZE returned: the knob is back to 0 already, and its
        // record gone, while the filesystem stays frozen.
        assert_eq!(knob(), "0", "still expedited while frozen");
        assert!(!rcu_record(&state_dir));
        assert!(is_frozen(&s.fs.mount));
    });
    assert!(done["warnings"].as_array().unwrap().is_empty(), "{done}");
    assert_eq!(knob(), "0");
    counted(&d, "expedited", 1.0);
    assert_eq!(freezes_with(&d, "already_expedited"), 0.0);
    d.wait_log(
        "RCU grace periods for the freeze: expedited",
        Duration::from_secs(5),
    );
}

#[test]
fn someone_elses_expedited_setting_is_left_as_it_is() {
    let k = Knob::take();
    k.set("1");
    let s = scene("30s", "[]");
    let d = Daemon::start(&s.config);
    one_snapshot(&d, || assert_eq!(knob(), "1"));
    assert_eq!(knob(), "1", "someone else's setting was changed");
    counted(&d, "already_expedited", 1.0);
    assert_eq!(freezes_with(&d, "expedited"), 0.0);
    assert!(!rcu_record(&s.dir.path().join("state")));
}

#[test]
fn expedite_rcu_false_leaves_the_knob_alone() {
    let _k = Knob::take();
    let s = scene("30s", "[]");
    let text = fs::read_to_string(&s.config).unwrap();
    fs::write(
        &s.config,
        text.replacen("freeze:\n", "freeze:\n  expedite_rcu: false\n", 1),
    )
    .unwrap();
    let d = Daemon::start(&s.config);
    one_snapshot(&d, || {});
    counted(&d, "off", 1.0);
    assert_eq!(freezes_with(&d, "expedited"), 0.0);
}

/// A FIFREEZE that hangs (its dirty data can only go out through a filesystem the test froze
/// itself) keeps RCU expedited; what happens to the knob when the processes are killed then.
struct HungFreeze {
    dir: tempfile::TempDir,
    lower: LoopFs,
    upper: LoopFs,
}

impl HungFreeze {
    fn new() -> HungFreeze {
        let dir = scratch_dir();
        let lower = LoopFs::create(dir.path(), "lower", Fs::Ext4, 256);
        let upper = LoopFs::create(&lower.mount, "upper", Fs::Ext4, 64);
        fill_dirty(&upper.path("dirty"), 32);
        lower.fsfreeze();
        HungFreeze { dir, lower, upper }
    }

    fn agent(&self) -> Agent {
        Agent::new(self.dir.path(), &[&self.upper.mount])
    }

    /// Waits until the watchdog expedited RCU (its record written, the knob at 1).
    fn wait_expedited(&self, agent: &Agent) {
        let t = Instant::now();
        while !(rcu_record(&agent.state_dir) && knob() == "1") {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "RCU never expedited: record {}, knob {}",
                rcu_record(&agent.state_dir),
                knob()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets the hung FIFREEZE return: the upper filesystem ends up frozen.
    fn release(&self) {
        self.lower.fsunfreeze();
    }
}

#[test]
fn sigkill_of_the_agent_while_expedited_the_watchdog_puts_the_knob_back() {
    let _k = Knob::take();
    let h = HungFreeze::new();
    let agent = h.agent();
    let freezing = agent.freeze(&["--timeout", "30s", "--no-flush"]);
    h.wait_expedited(&agent);
    run("kill", &["-KILL", &freezing.pid().to_string()]);
    // The watchdog sees its stdin close: it relaxes RCU at once, though the FIFREEZE still hangs.
    let t = Instant::now();
    while knob() != "0" || rcu_record(&agent.state_dir) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "knob {} record {}",
            knob(),
            rcu_record(&agent.state_dir)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut w = Writer::start_probe(&h.upper.mount);
    h.release();
    // ... and thaws the upper filesystem the moment its FIFREEZE returns.
    w.assert_finishes_within(Duration::from_secs(20));
    agent.wait_no_records(Duration::from_secs(5));
    drop(freezing);
}

#[test]
fn sigkill_of_the_watchdog_while_expedited_thaw_all_and_the_next_start_put_the_knob_back() {
    let _k = Knob::take();
    let h = HungFreeze::new();
    let agent = h.agent();
    let kill_all = |agent: &Agent| {
        let mut freezing = agent.freeze_in_new_group(&["--timeout", "30s", "--no-flush"]);
        h.wait_expedited(agent);
        run("kill", &["-KILL", "--", &format!("-{}", freezing.pid())]);
        let _ = freezing.child.wait();
        // Nobody is left: the knob stays 1, and the record says it was ours.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(knob(), "1");
        assert!(rcu_record(&agent.state_dir));
        freezing
    };

    let killed = kill_all(&agent);
    h.release();
    let (code, stdout, stderr) = agent.thaw_all();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(r#"{"outcome":"rcu_relaxed","was_on":true}"#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""outcome":"thawed""#), "{stdout}");
    assert_eq!(knob(), "0");
    assert!(!rcu_record(&agent.state_dir));
    drop(killed);

    // Again, and this time the next start of the agent puts it back before anything else.
    fs::remove_file(h.upper.path("dirty")).unwrap();
    fill_dirty(&h.upper.path("dirty2"), 32);
    h.lower.fsfreeze();
    let killed = kill_all(&agent);
    h.release();
    let mut next = agent.freeze(&["--timeout", "30s", "--exec", "true"]);
    let frozen = next.frozen();
    let recovered = frozen["recovered"].as_array().unwrap();
    assert!(
        recovered.iter().any(|r| r["outcome"] == "rcu_relaxed"),
        "{frozen}"
    );
    let (done, code) = next.done(Duration::from_secs(30));
    assert_eq!(code, 0, "{done}");
    assert_eq!(knob(), "0");
    assert!(!rcu_record(&agent.state_dir));
    drop(killed);
}
