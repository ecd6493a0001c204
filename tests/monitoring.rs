//! The monitoring shipped in the packages (`packaging/monitoring/`): the alert rules pass
//! `promtool check rules` and their unit tests (`tests/monitoring/alerts.test.yml`); every
//! PromQL expression of the Grafana dashboard parses (promtool, through a generated rules
//! file); and every metric that either uses exists in a real daemon's `/metrics` after a real
//! snapshot on a loop mount, with the label values they select on. Needs promtool (Debian's
//! `prometheus` package; its service is never started) and, for the last test, root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::daemon::{hook_log, logging_hook, raw_call, scene, Daemon, QUIESCE};
use common::*;
use serde_json::Value;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/monitoring/quiesce-alerts.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/monitoring/alerts.test.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/monitoring/quiesce-dashboard.json"
);

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian package prometheus) is needed for this test");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `expr` of the alert rules (a line-based read of our own file: one `expr:` per rule).
fn rule_exprs() -> Vec<String> {
    fs::read_to_string(RULES)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_string)
        .collect()
}

/// Every panel target's `expr` of the dashboard, rows' nested panels included.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let (Some(Value::String(e)), true) = (m.get("expr"), m.contains_key("refId")) {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let dash: Value = serde_json::from_str(&fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Grafana's variables replaced by values PromQL accepts, as Grafana does before it queries.
fn substitute(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "24h")
        .replace("$job", "quiesce")
        .replace("$instance", ".*");
    assert!(
        !e.contains('$'),
        "a variable the test does not know: {expr}"
    );
    e
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", RULE_TESTS]);
    assert!(rule_exprs().len() >= 6);
}

#[test]
fn every_dashboard_expression_parses() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(&substitute(e)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let file = dir.path().join("dashboard-rules.yml");
    fs::write(&file, rules).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);

    // Each panel has an id of its own, a place and, except rows, a query.
    let dash: Value = serde_json::from_str(&fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "id twice: {p}");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        if p["type"] != "row" {
            assert!(!p["targets"].as_array().unwrap().is_empty(), "{p}");
        }
    }
}

/// `quiesce_*` names and the `label="value"` matchers each one is selected with.
fn used_series(exprs: &[String]) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut used: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("quiesce_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let name = tail[..end].to_string();
            let matchers = used.entry(name).or_default();
            if let Some(inner) = tail[end..].strip_prefix('{') {
                let inner = &inner[..inner.find('}').unwrap()];
                for m in inner.split(',') {
                    if let Some((k, v)) = m.split_once('=') {
                        let (k, v) = (k.trim(), v.trim());
                        // `=~` and Grafana's variables select no fixed value.
                        if !v.starts_with('~') && !v.contains('$') {
                            matchers.insert((k.to_string(), v.trim_matches('"').to_string()));
                        }
                    }
                }
            }
            rest = &tail[end..];
        }
    }
    used
}

#[test]
fn every_metric_they_use_is_in_a_real_daemons_metrics_after_a_snapshot() {
    require_root();
    let hooks_dir = scratch_dir();
    let s = scene("10s", &logging_hook(hooks_dir.path()));
    // HMAC, so that an unsigned request is refused and counted.
    let key = s.dir.path().join("host.key");
    fs::write(&key, "0123456789abcdef0123456789abcdef-monitoring\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let text = fs::read_to_string(&s.config).unwrap().replace(
        "auth: {mode: none}",
        &format!("auth: {{mode: hmac, key_file: {key:?}}}"),
    );
    fs::write(&s.config, text).unwrap();
    let d = Daemon::start(&s.config);

    let out = Command::new(QUIESCE)
        .args(["snapshot", "--agent", &format!("http://{}", d.addr)])
        .arg("--key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hook_log(hooks_dir.path()).contains("post"));
    let (code, _) = raw_call(&d.addr, "GET", "/v1/snapshots", None);
    assert_eq!(code, 401);

    let (code, metrics) = raw_call(&d.addr, "GET", "/metrics", None);
    assert_eq!(code, 200);
    // name -> the label sets of its samples.
    let mut scraped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap();
        let labels = line[end..].split_once('}').map_or("", |x| x.0);
        scraped
            .entry(line[..end].to_string())
            .or_default()
            .push(labels.to_string());
    }
    let sample = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sample("quiesce_auth_failures_total"), 1.0, "{metrics}");
    assert_eq!(sample("quiesce_snapshot_frozen_seconds_count"), 1.0);

    let mut exprs = rule_exprs();
    exprs.extend(dashboard_exprs());
    let used = used_series(&exprs);
    assert!(used.len() >= 10, "{used:?}");
    for (name, matchers) in &used {
        let samples = scraped
            .get(name)
            .unwrap_or_else(|| panic!("{name} is used but not in /metrics:\n{metrics}"));
        for (k, v) in matchers {
            let want = format!("{k}=\"{v}\"");
            assert!(
                samples.iter().any(|l| l.contains(&want)),
                "{name}{{{want}}} selects nothing in /metrics: {samples:?}"
            );
        }
    }
    // Every selector (a name before `{` or `[`) is the agent's, or Prometheus' own `up`.
    for e in &exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i] as char;
            if c.is_ascii_alphabetic() || c == '_' {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || b"_:".contains(&bytes[i]))
                {
                    i += 1;
                }
                let name = &e[start..i];
                if matches!(bytes.get(i), Some(b'{' | b'[')) {
                    assert!(
                        name == "up" || name.starts_with("quiesce_"),
                        "{name} in {e} is not a series of quiesce"
                    );
                }
                // Skip a label matcher's value, where names are not series.
                if bytes.get(i) == Some(&b'=') {
                    while i < bytes.len() && !b",}".contains(&bytes[i]) {
                        i += 1;
                    }
                }
            } else {
                i += 1;
            }
        }
    }
    drop(d);
    assert!(!is_frozen(&s.fs.mount));
}
