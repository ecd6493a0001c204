//! `quiesce status`: one agent's health, whether anything is frozen, and its last snapshots.
//!
//! By default a view for people: a header (the agent up or not, its version, the listener it
//! was reached on, whether it holds anything frozen right now), then a table of the last
//! snapshots, newest first. Colour only when stdout is a terminal and `NO_COLOR` is not set.
//! `--watch` redraws it every `--interval` until interrupted, as `watch` would.
//!
//! `--json` prints, for scripts, `{"agent": URL, "health": {...}, "snapshots": [...]}` (the
//! snapshots exactly as `GET /v1/snapshots` sent them, newest first).
//!
//! Exit 0 when both answered; 1 when the agent cannot be reached, or when it answers but refuses
//! the list (e.g. 401 without the right `--key-file`): then what was learnt is still printed
//! (in JSON with `"snapshots": null` and an `"error"`). `--watch` runs until SIGINT or SIGTERM
//! (exit 0), showing a failure on screen instead of exiting.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};

use serde_json::{json, Value};

use crate::commands::args::StatusArgs;
use crate::host::client::{AgentClient, Reply};
use crate::snapshot::lifecycle::{Consistency, State};
use crate::snapshot::model::Received;

/// Runs the command; returns the exit code.
pub async fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let key = super::orchestrator::read_key(args.key_file.as_deref())?;
    let keyed = key.is_some();
    let client = AgentClient::new(&args.agent, key)?;
    if args.json {
        return json_view(&args, &client, keyed).await;
    }
    let style = Style::for_stdout();
    if args.watch {
        return watch(&args, &client, keyed, style).await;
    }
    let view = gather(&args.agent, &client, keyed).await?;
    print!("{}", render(&view, style));
    Ok(if view.list.is_ok() { 0 } else { 1 })
}

/// Today's JSON document, unchanged.
async fn json_view(args: &StatusArgs, client: &AgentClient, keyed: bool) -> anyhow::Result<i32> {
    let health = client.health().await?;
    if !health.is_success() {
        anyhow::bail!(
            "{}: the health check failed: {}",
            args.agent,
            health.describe()
        );
    }
    let mut out = json!({ "agent": args.agent, "health": health.body, "snapshots": null });
    let list = client.list().await?;
    let code = match list.body.get("snapshots") {
        Some(snapshots) if list.status == 200 => {
            out["snapshots"] = snapshots.clone();
            0
        }
        _ => {
            let why = refused(&args.agent, &list, keyed);
            eprintln!("quiesce status: {why}");
            out["error"] = Value::String(why);
            1
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("the status serializes")
    );
    Ok(code)
}

fn refused(agent: &str, list: &Reply, keyed: bool) -> String {
    format!(
        "{agent}: the list of snapshots was refused: {}{}",
        list.describe(),
        super::orchestrator::hint(list.status, &list.body, keyed)
    )
}

/// What the human view shows.
#[derive(Debug)]
struct View {
    agent: String,
    /// The health answer's `version`.
    version: String,
    /// The health answer's `listeners`, if a newer agent reports them.
    listeners: Vec<String>,
    /// From `GET /metrics` (`quiesce_frozen`, `quiesce_snapshot_active`), which needs no key.
    frozen: Option<bool>,
    active: Option<bool>,
    /// The snapshots, or why they could not be listed.
    list: Result<Vec<Received>, String>,
}

/// Asks the agent; an unreachable or unhealthy agent is an error.
async fn gather(agent: &str, client: &AgentClient, keyed: bool) -> anyhow::Result<View> {
    let health = client.health().await?;
    if !health.is_success() {
        anyhow::bail!("{agent}: the health check failed: {}", health.describe());
    }
    let version = health.body["version"].as_str().unwrap_or("?").to_string();
    let listeners = health.body["listeners"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
                .collect()
        })
        .unwrap_or_default();
    let (frozen, active) = match client.metrics().await {
        Ok(r) if r.is_success() => {
            let text = r.body.as_str().unwrap_or("");
            (
                gauge(text, "quiesce_frozen"),
                gauge(text, "quiesce_snapshot_active"),
            )
        }
        _ => (None, None),
    };
    let list = client.list().await?;
    let list = if list.status == 200 {
        list.snapshots()
            .map_err(|e| format!("{agent}: the list of snapshots: {e}"))
    } else {
        Err(refused(agent, &list, keyed))
    };
    Ok(View {
        agent: agent.to_string(),
        version,
        listeners,
        frozen,
        active,
        list,
    })
}

/// A 0/1 gauge without labels from the Prometheus text.
fn gauge(text: &str, name: &str) -> Option<bool> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v != 0.0)
}

/// Colours on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Style {
    colour: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org).
    fn for_stdout() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            colour: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.colour && !code.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

const GREEN: &str = "32";
const YELLOW: &str = "33";
const RED: &str = "31";
const BOLD: &str = "1";

fn state_colour(s: State) -> &'static str {
    match s {
        State::Succeeded => GREEN,
        State::Failed => RED,
        State::Aborted => YELLOW,
        _ => BOLD,
    }
}

fn consistency_colour(c: Option<Consistency>) -> &'static str {
    match c {
        Some(Consistency::Application) => GREEN,
        Some(Consistency::FileSystem) => "",
        Some(Consistency::Crash) => YELLOW,
        None => "",
    }
}

/// The whole view as text.
fn render(v: &View, style: Style) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}: {}, version {}",
        style.paint(BOLD, "quiesce agent"),
        v.agent,
        style.paint(GREEN, "up"),
        v.version
    );
    let listeners = if v.listeners.is_empty() {
        format!("{} (the one reached)", v.agent)
    } else {
        v.listeners.join(", ")
    };
    let _ = writeln!(out, "  listeners: {listeners}");
    let under_way = v.list.as_ref().ok().and_then(|l| {
        l.iter()
            .find(|r| !r.snapshot.state.is_end())
            .map(|r| &r.snapshot)
    });
    let frozen_now = v.frozen.or_else(|| {
        v.list
            .as_ref()
            .ok()
            .map(|l| l.iter().any(|r| r.snapshot.mounts.iter().any(|m| m.frozen)))
    });
    let frozen = match (frozen_now, under_way) {
        (Some(true), Some(s)) => style.paint(
            RED,
            &format!("YES: snapshot {} is {}", s.id, s.state.as_str()),
        ),
        (Some(true), None) => style.paint(RED, "YES"),
        (Some(false), Some(s)) => {
            format!("no (snapshot {} is {})", s.id, s.state.as_str())
        }
        (Some(false), None) if v.active == Some(true) => "no (a snapshot is under way)".into(),
        (Some(false), None) => "no".into(),
        (None, _) => "unknown".into(),
    };
    let _ = writeln!(out, "  frozen:    {frozen}");
    out.push('\n');
    match &v.list {
        Err(why) => {
            let _ = writeln!(out, "{}", style.paint(RED, &format!("snapshots: {why}")));
        }
        Ok(list) if list.is_empty() => out.push_str("no snapshots yet\n"),
        Ok(list) => out.push_str(&table(list, style)),
    }
    out
}

/// The table of snapshots, newest first; problems follow it.
fn table(list: &[Received], style: Style) -> String {
    let header = ["WHEN", "CHANNEL", "STATE", "CONSISTENCY", "FROZEN", "HOOKS"];
    let mut rows: Vec<[(String, &str); 6]> = Vec::new();
    for r in list {
        let s = &r.snapshot;
        let consistency = s.consistency.map_or("-", Consistency::as_str);
        let frozen = s.frozen_ms.map_or("-".to_string(), |ms| format!("{ms} ms"));
        let (hooks, hooks_colour) = hook_verdicts(s);
        rows.push([
            (when(&s.created_at), ""),
            (r.channel().to_string(), ""),
            (s.state.as_str().to_string(), state_colour(s.state)),
            (consistency.to_string(), consistency_colour(s.consistency)),
            (frozen, ""),
            (hooks, hooks_colour),
        ]);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, (text, _)) in widths.iter_mut().zip(row) {
            *w = (*w).max(text.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<(String, &str)>| {
        let last = cells.len() - 1;
        for (i, ((text, colour), w)) in cells.into_iter().zip(widths).enumerate() {
            let pad = if i == last {
                String::new()
            } else {
                " ".repeat(w - text.chars().count() + 2)
            };
            out.push_str(&style.paint(colour, &text));
            out.push_str(&pad);
        }
        out.push('\n');
    };
    line(
        &mut out,
        header.iter().map(|h| (h.to_string(), BOLD)).collect(),
    );
    for row in rows {
        line(&mut out, row.into_iter().collect());
    }
    // The newest snapshot's problems, in words: the table only says that there were some.
    if let Some(newest) = list.first().map(|r| &r.snapshot) {
        for p in &newest.errors {
            let _ = writeln!(
                out,
                "{}",
                style.paint(RED, &format!("error ({}): {}", p.reason, p.message))
            );
        }
        for p in &newest.warnings {
            let _ = writeln!(
                out,
                "{}",
                style.paint(YELLOW, &format!("warning ({}): {}", p.reason, p.message))
            );
        }
    }
    out
}

/// `2026-11-22T10:00:00.123Z` as `2026-11-22 10:00:00Z` (the table's width; UTC as sent).
fn when(rfc3339: &str) -> String {
    match rfc3339.split_once('T') {
        Some((date, time)) => {
            let time = time.split('.').next().unwrap_or(time).trim_end_matches('Z');
            format!("{date} {time}Z")
        }
        None => rfc3339.to_string(),
    }
}

/// `-` without hooks, `N ok` when every run exited 0 in time, else each failure named.
fn hook_verdicts(s: &crate::snapshot::model::Snapshot) -> (String, &'static str) {
    if s.hooks.is_empty() {
        return ("-".into(), "");
    }
    let ok = s.hooks.iter().filter(|h| h.ok()).count();
    let failed: Vec<String> = s
        .hooks
        .iter()
        .filter(|h| !h.ok())
        .map(|h| {
            let what = if h.timed_out {
                "timed out".to_string()
            } else {
                h.exit_code
                    .map_or("killed".to_string(), |c| format!("exit {c}"))
            };
            format!("{} {} {what}", h.name, h.phase)
        })
        .collect();
    if failed.is_empty() {
        (format!("{ok} ok"), GREEN)
    } else {
        let mut text = failed.join(", ");
        if ok > 0 {
            text.push_str(&format!(" ({ok} ok)"));
        }
        (text, RED)
    }
}

/// Redraws until SIGINT or SIGTERM.
async fn watch(
    args: &StatusArgs,
    client: &AgentClient,
    keyed: bool,
    style: Style,
) -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let body = match gather(&args.agent, client, keyed).await {
            Ok(view) => render(&view, style),
            Err(e) => style.paint(RED, &format!("quiesce status: {e:#}\n")),
        };
        let title = format!(
            "Every {}: quiesce status --agent {}",
            crate::duration::format(args.interval),
            args.agent
        );
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        // Home, clear the screen, then the frame in one write: no flicker of a half frame.
        let frame = format!("\x1b[H\x1b[2J{title}    {now}\n\n{body}");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(frame.as_bytes());
        let _ = stdout.flush();
        drop(stdout);
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = term.recv() => return Ok(0),
            _ = int.recv() => return Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(state: &str, consistency: Value, hooks: Value, extra: Value) -> Received {
        let mut v = json!({"id": "5f0c2a9e1b7d4c38", "request_id": null, "state": state,
            "requested_consistency": "application", "consistency": consistency,
            "created_at": "2026-11-22T10:00:00.123Z", "frozen_at": null, "thawed_at": null,
            "finished_at": null, "freeze_deadline": null, "frozen_ms": 41, "thaw_reason": null,
            "mounts": [], "hooks": hooks, "errors": [], "warnings": []});
        if let Value::Object(m) = extra {
            for (k, x) in m {
                v[k] = x;
            }
        }
        Received::from_value(&v).unwrap()
    }

    fn view(list: Result<Vec<Received>, String>) -> View {
        View {
            agent: "http://127.0.0.1:7380".into(),
            version: "0.1.0".into(),
            listeners: vec![],
            frozen: Some(false),
            active: Some(false),
            list,
        }
    }

    #[test]
    fn the_table_has_a_row_per_snapshot_with_its_verdicts() {
        let hook = |phase: &str, exit: i32| {
            json!({"name": "pg", "phase": phase, "exit_code": exit, "timed_out": false,
                   "duration_ms": 3, "output": ""})
        };
        let list = vec![
            snapshot(
                "failed",
                json!("crash"),
                json!([hook("pre", 0), hook("post", 2)]),
                json!({"channel": "qga", "errors": [{"reason": "deadline", "message": "m1"}]}),
            ),
            snapshot(
                "succeeded",
                json!("application"),
                json!([hook("pre", 0), hook("post", 0)]),
                json!({}),
            ),
        ];
        let text = render(&view(Ok(list)), Style { colour: false });
        assert!(!text.contains('\x1b'), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "quiesce agent http://127.0.0.1:7380: up, version 0.1.0"
        );
        assert_eq!(lines[2], "  frozen:    no");
        let header = lines.iter().position(|l| l.starts_with("WHEN")).unwrap();
        let cols: Vec<&str> = lines[header].split_whitespace().collect();
        assert_eq!(
            cols,
            ["WHEN", "CHANNEL", "STATE", "CONSISTENCY", "FROZEN", "HOOKS"]
        );
        assert_eq!(
            lines[header + 1].split_whitespace().collect::<Vec<_>>(),
            [
                "2026-11-22",
                "10:00:00Z",
                "qga",
                "failed",
                "crash",
                "41",
                "ms",
                "pg",
                "post",
                "exit",
                "2",
                "(1",
                "ok)"
            ]
        );
        assert!(lines[header + 2].contains(" http ") && lines[header + 2].ends_with("2 ok"));
        // Columns line up: STATE starts at the same place in every row.
        let at = lines[header].find("STATE").unwrap();
        assert_eq!(&lines[header + 1][at..at + 6], "failed");
        assert_eq!(&lines[header + 2][at..at + 9], "succeeded");
        assert_eq!(lines[header + 3], "error (deadline): m1");
    }

    #[test]
    fn colour_marks_states_and_a_refused_list_is_said_in_red() {
        let list = vec![snapshot("aborted", Value::Null, json!([]), json!({}))];
        let text = render(&view(Ok(list)), Style { colour: true });
        assert!(text.contains("\x1b[33maborted\x1b[0m"), "{text:?}");
        let text = render(
            &view(Err("http://h: refused: HTTP 401".into())),
            Style { colour: true },
        );
        assert!(
            text.contains("\x1b[31msnapshots: http://h: refused: HTTP 401\x1b[0m"),
            "{text:?}"
        );
        let text = render(&view(Ok(vec![])), Style { colour: false });
        assert!(text.ends_with("no snapshots yet\n"), "{text}");
    }

    #[test]
    fn frozen_now_names_the_snapshot_under_way() {
        let list = vec![snapshot(
            "frozen",
            json!("file_system"),
            json!([]),
            json!({}),
        )];
        let mut v = view(Ok(list));
        v.frozen = Some(true);
        let text = render(&v, Style { colour: false });
        assert!(
            text.contains("frozen:    YES: snapshot 5f0c2a9e1b7d4c38 is frozen"),
            "{text}"
        );
    }

    #[test]
    fn gauges_are_read_from_the_metrics_text() {
        let text = "# HELP quiesce_frozen x\n# TYPE quiesce_frozen gauge\nquiesce_frozen 1\n\
                    quiesce_frozen_other 0\nquiesce_snapshot_active 0\n";
        assert_eq!(gauge(text, "quiesce_frozen"), Some(true));
        assert_eq!(gauge(text, "quiesce_snapshot_active"), Some(false));
        assert_eq!(gauge(text, "quiesce_missing"), None);
    }

    #[test]
    fn times_are_shortened_to_the_second() {
        assert_eq!(when("2026-11-22T10:00:00.123Z"), "2026-11-22 10:00:00Z");
        assert_eq!(when("2026-11-22T10:00:00Z"), "2026-11-22 10:00:00Z");
        assert_eq!(when("garbage"), "garbage");
    }
}
