//! The daemon over real HTTP on loopback, black-box: the built binary, loop filesystems, real
//! hooks. Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::daemon::{
    config_key, hook_log, logging_hook, raw_call, raw_call_with, scene, signature_lines,
    signed_raw_call, Daemon, QUIESCE,
};
use common::*;
use serde_json::{json, Value};

#[test]
fn a_whole_cycle_over_http() {
    require_root();
    let dir = scratch_dir();
    let hooks = logging_hook(dir.path());
    let s = scene("30s", &hooks);
    let d = Daemon::start(&s.config);

    let (code, health) = d.call("GET", "/v1/health", None);
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));

    let (code, snap) = d.call("POST", "/v1/snapshots", Some(r#"{"request_id":"job-1"}"#));
    assert_eq!(code, 202, "{snap}");
    let id = snap["id"].as_str().unwrap().to_string();
    assert_eq!(snap["state"], "pre_hooks");

    // Idempotent retry, and one snapshot at a time.
    let (code, again) = d.call("POST", "/v1/snapshots", Some(r#"{"request_id":"job-1"}"#));
    assert_eq!((code, again["id"].as_str()), (200, Some(id.as_str())));
    let (code, busy) = d.call("POST", "/v1/snapshots", Some("{}"));
    assert_eq!(
        (code, busy["active"].as_str()),
        (409, Some(id.as_str())),
        "{busy}"
    );

    let (code, frozen) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=20000"),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(frozen["state"], "frozen", "{frozen}");
    assert_eq!(frozen["consistency"], "application");
    assert_eq!(frozen["mounts"][0]["frozen"], true);
    let mut w = Writer::start_probe(&s.fs.mount);
    w.assert_blocked_for(Duration::from_millis(200));

    let (code, thawed) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!(code, 200, "{thawed}");
    assert_eq!(thawed["mounts"][0]["frozen"], false, "answered once thawed");
    w.assert_finishes_within(Duration::from_secs(2));

    let (_, done) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
        None,
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["consistency"], "application");
    assert_eq!(done["thaw_reason"], "host");
    assert!(done["frozen_ms"].as_u64().is_some() && done["finished_at"].is_string());
    assert_eq!(hook_log(dir.path()), "pre -\npost host\n");

    let (code, list) = d.call("GET", "/v1/snapshots", None);
    assert_eq!(
        (code, list["snapshots"][0]["id"].as_str()),
        (200, Some(id.as_str()))
    );
    // Ended: DELETE and thaw are refused with the snapshot.
    let (code, gone) = d.call("DELETE", &format!("/v1/snapshots/{id}"), None);
    assert_eq!((code, gone["state"].as_str()), (409, Some("succeeded")));

    // Metrics count it, and reveal no id or hook name.
    let (code, metrics) = d.call("GET", "/metrics", None);
    let text = metrics.as_str().unwrap();
    assert_eq!(code, 200);
    assert!(
        text.contains(r#"quiesce_snapshots_total{state="succeeded",consistency="application"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("quiesce_snapshot_frozen_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("quiesce_snapshot_active 0"), "{text}");
    assert!(!text.contains(&id) && !text.contains("\"app\""), "{text}");

    // The next snapshot compacts the history (the ended one keeps its report, not its
    // channels): every answer about the first stays the same.
    let (code, second) = d.call("POST", "/v1/snapshots", Some("{}"));
    assert_eq!(code, 202, "{second}");
    let second_id = second["id"].as_str().unwrap().to_string();
    let (code, old) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
        None,
    );
    assert_eq!((code, &old), (200, &done));
    let (code, again) = d.call("POST", "/v1/snapshots", Some(r#"{"request_id":"job-1"}"#));
    assert_eq!((code, &again), (200, &done));
    let (code, gone_again) = d.call("DELETE", &format!("/v1/snapshots/{id}"), None);
    assert_eq!((code, &gone_again), (409, &gone));
    let (code, refused) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!((code, refused["state"].as_str()), (409, Some("succeeded")));
    let (code, _) = d.call("DELETE", &format!("/v1/snapshots/{second_id}"), None);
    assert_eq!(code, 200);
    let (_, list) = d.call("GET", "/v1/snapshots", None);
    let ids: Vec<_> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second_id.as_str(), id.as_str()]);
    assert_eq!(list["snapshots"][1], done);
}

#[test]
fn bad_requests_get_their_4xx_and_change_nothing() {
    require_root();
    let s = scene("30s", "[]");
    let tmp_at = s.dir.path().join("tmp");
    let _tmpfs = tmpfs_mount(&tmp_at);
    let d = Daemon::start(&s.config);
    let bad_bodies = [
        "{",
        "[]",
        r#"{"consistency":"perfect"}"#,
        r#"{"freeze_timeout_ms":"10"}"#,
        r#"{"freeze_timeout_ms":61000}"#,
        r#"{"unknown":true}"#,
        r#"{"mounts":["/"]}"#,
        r#"{"mounts":["relative"]}"#,
        r#"{"request_id":"has spaces"}"#,
        r#"{"callback_url":"ftp://x"}"#,
    ];
    for body in bad_bodies {
        let (code, v) = d.call("POST", "/v1/snapshots", Some(body));
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].is_string(), "{body}: {v}");
    }
    let tmp_body = json!({ "mounts": [tmp_at] }).to_string();
    let (code, v) = d.call("POST", "/v1/snapshots", Some(&tmp_body));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cannot be frozen"),
        "{v}"
    );
    // A signed request with a body too large: 413 (an unsigned one is 401 before any body).
    let big = " ".repeat(70_000);
    let key = config_key(&s.config).unwrap();
    assert_eq!(
        signed_raw_call(&d.addr, &key, "POST", "/v1/snapshots", &big).0,
        413
    );
    assert_eq!(
        raw_call(&d.addr, "POST", "/v1/snapshots", Some(big.as_bytes())).0,
        401
    );
    for (m, p) in [
        ("GET", "/v1/snapshots/nope"),
        ("DELETE", "/v1/snapshots/nope"),
        ("GET", "/v1/nothing"),
    ] {
        assert_eq!(d.call(m, p, None).0, 404, "{m} {p}");
    }
    assert_eq!(
        d.call(
            "POST",
            "/v1/snapshots/nope/thaw",
            Some(r#"{"storage_snapshot":"taken"}"#)
        )
        .0,
        404
    );
    assert_eq!(d.call("PUT", "/v1/health", None).0, 405);
    let (_, list) = d.call("GET", "/v1/snapshots", None);
    assert_eq!(list["snapshots"], json!([]), "nothing recorded");
    assert!(!is_frozen(&s.fs.mount));
}

#[test]
fn the_deadline_comes_first_then_the_thaw_is_409() {
    require_root();
    let s = scene("1s", "[]");
    let d = Daemon::start(&s.config);
    let (_, snap) = d.call(
        "POST",
        "/v1/snapshots",
        Some(r#"{"freeze_timeout_ms":800}"#),
    );
    let id = snap["id"].as_str().unwrap();
    let (_, done) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
        None,
    );
    assert_eq!(
        (&done["state"], &done["consistency"], &done["thaw_reason"]),
        (&json!("failed"), &json!("crash"), &json!("deadline")),
        "{done}"
    );
    let (code, late) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"taken"}"#),
    );
    assert_eq!(
        (code, late["state"].as_str()),
        (409, Some("failed")),
        "{late}"
    );
    assert!(late["error"].is_string());
    let (code, _) = d.call(
        "POST",
        &format!("/v1/snapshots/{id}/thaw"),
        Some(r#"{"storage_snapshot":"maybe"}"#),
    );
    assert_eq!(code, 400);
}

#[test]
fn delete_while_frozen_aborts_and_thaws() {
    require_root();
    let dir = scratch_dir();
    let s = scene("30s", &logging_hook(dir.path()));
    let d = Daemon::start(&s.config);
    let (_, snap) = d.call("POST", "/v1/snapshots", Some("{}"));
    let id = snap["id"].as_str().unwrap();
    d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=20000"),
        None,
    );
    let (code, aborted) = d.call("DELETE", &format!("/v1/snapshots/{id}"), None);
    assert_eq!(code, 200, "{aborted}");
    assert_eq!(aborted["mounts"][0]["frozen"], false);
    let (_, done) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
        None,
    );
    assert_eq!(
        (&done["state"], &done["thaw_reason"]),
        (&json!("aborted"), &json!("abort"))
    );
    assert_eq!(hook_log(dir.path()), "pre -\npost abort\n");
}

#[test]
fn sigterm_while_frozen_thaws_runs_post_hooks_and_exits_0() {
    require_root();
    let dir = scratch_dir();
    let s = scene("30s", &logging_hook(dir.path()));
    let mut d = Daemon::start(&s.config);
    let (_, snap) = d.call("POST", "/v1/snapshots", Some("{}"));
    let id = snap["id"].as_str().unwrap();
    d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=20000"),
        None,
    );
    let mut w = Writer::start_probe(&s.fs.mount);
    w.assert_blocked_for(Duration::from_millis(100));
    // SIGHUP does not stop it (its default action would).
    d.signal("HUP");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "SIGHUP killed the daemon"
    );
    w.assert_blocked_for(Duration::from_millis(50));
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), 0);
    w.assert_finishes_within(Duration::from_secs(1));
    assert_eq!(hook_log(dir.path()), "pre -\npost shutdown\n");
}

#[test]
fn sigkill_while_frozen_is_thawed_by_the_watchdog_and_the_next_start_is_clean() {
    require_root();
    let s = scene("30s", "[]");
    let mut d = Daemon::start(&s.config);
    let (_, snap) = d.call("POST", "/v1/snapshots", Some("{}"));
    let id = snap["id"].as_str().unwrap();
    d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=20000"),
        None,
    );
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(5));
    Writer::start_probe(&s.fs.mount).assert_finishes_within(Duration::from_secs(2));
    let d2 = Daemon::start(&s.config);
    assert_eq!(d2.call("GET", "/v1/health", None).0, 200);
}

/// Runs `quiesce daemon` on a config of `text`; its exit code and stderr.
fn daemon_with_config(text: &str) -> (Option<i32>, String) {
    let dir = scratch_dir();
    let config = dir.path().join("config.yaml");
    fs::write(&config, text).unwrap();
    let out = Command::new(QUIESCE)
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_invalid_config_refuses_to_start() {
    require_root();
    let (code, err) = daemon_with_config("listen: 127.0.0.1:0\nfreeze:\n  timeout: 10\n");
    // 78 (EX_CONFIG): a configuration error, on which the unit does not restart (was 1).
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("config.yaml:3:"), "{err}");
    // auth none on a public address is refused too.
    let (code, err) = daemon_with_config("listen: 0.0.0.0:0\nauth: {mode: none}\n");
    assert_eq!(code, Some(78), "{err}");
}

/// A signed request with the given headers (each may be left out or altered).
fn signed_call(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn hmac_signed_requests_pass_and_forged_stale_or_replayed_ones_get_401() {
    use quiesce::auth::{sign_request, Key};
    require_root();
    let s = scene("30s", "[]");
    let key_file = s.dir.path().join("host.key");
    fs::write(&key_file, "0123456789abcdef0123456789abcdef-test-key\n").unwrap();
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
    let text = fs::read_to_string(&s.config).unwrap().replace(
        "auth: {mode: none}",
        &format!("auth: {{mode: hmac, key_file: {key_file:?}}}"),
    );
    fs::write(&s.config, text).unwrap();
    let d = Daemon::start(&s.config);
    let key = Key::from_file_contents(fs::read(&key_file).unwrap()).unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let headers = |method: &str, path: &str, body: &str, at: u64, nonce: &str| {
        sign_request(&key, method, path, body.as_bytes(), at, nonce.to_string())
            .pairs()
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect::<Vec<_>>()
    };

    // Health and metrics need no signature; everything else does.
    assert_eq!(raw_call(&d.addr, "GET", "/v1/health", None).0, 200);
    assert_eq!(raw_call(&d.addr, "HEAD", "/v1/health", None).0, 200);
    assert_eq!(raw_call(&d.addr, "GET", "/metrics", None).0, 200);
    let (code, text) = raw_call(&d.addr, "GET", "/v1/snapshots", None);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("missing_header"),
        "{v}"
    );

    let good = headers("GET", "/v1/snapshots", "", now(), "nonce-0000000000001");
    assert_eq!(
        signed_call(&d.addr, "GET", "/v1/snapshots", "", &good).0,
        200
    );
    // The same request again is a replay.
    let (code, v) = signed_call(&d.addr, "GET", "/v1/snapshots", "", &good);
    assert_eq!(code, 401);
    assert!(
        v["error"].as_str().unwrap().contains("replayed_nonce"),
        "{v}"
    );
    // Stale, forged, and a signature for another body.
    let stale = headers(
        "GET",
        "/v1/snapshots",
        "",
        now() - 301,
        "nonce-0000000000002",
    );
    assert_eq!(
        signed_call(&d.addr, "GET", "/v1/snapshots", "", &stale).0,
        401
    );
    let mut forged = headers("GET", "/v1/snapshots", "", now(), "nonce-0000000000003");
    forged[2].1 = "0".repeat(64);
    assert_eq!(
        signed_call(&d.addr, "GET", "/v1/snapshots", "", &forged).0,
        401
    );
    let other = headers("POST", "/v1/snapshots", "{}", now(), "nonce-0000000000004");
    let (code, _) = signed_call(
        &d.addr,
        "POST",
        "/v1/snapshots",
        r#"{"request_id":"x"}"#,
        &other,
    );
    assert_eq!(code, 401, "a signature covers the body");
    // Nothing was started by the refused requests; a signed create works.
    let (_, list) = signed_call(
        &d.addr,
        "GET",
        "/v1/snapshots",
        "",
        &headers("GET", "/v1/snapshots", "", now(), "nonce-0000000000005"),
    );
    assert_eq!(list["snapshots"], json!([]));
    let body = r#"{"consistency":"file_system"}"#;
    let create = headers("POST", "/v1/snapshots", body, now(), "nonce-0000000000006");
    let (code, snap) = signed_call(&d.addr, "POST", "/v1/snapshots", body, &create);
    assert_eq!(code, 202, "{snap}");
    let id = snap["id"].as_str().unwrap();
    let path = format!("/v1/snapshots/{id}");
    let del = headers("DELETE", &path, "", now(), "nonce-0000000000007");
    assert_eq!(signed_call(&d.addr, "DELETE", &path, "", &del).0, 200);
}

/// The log lines of a daemon once it has exited.
fn stop_and_log(d: &mut Daemon) -> String {
    d.signal("TERM");
    d.exit(Duration::from_secs(20)).1
}

/// One hostile client: connects, sends `head`, then trickles `trickle` one byte every 100 ms
/// until the agent closes the connection; then again, until `stop`.
fn hostile(
    addr: String,
    head: String,
    trickle: &'static [u8],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(&addr) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if s.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                for b in trickle.iter().cycle() {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .unwrap()
}

#[test]
fn hostile_clients_cannot_delay_a_signed_thaw() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    require_root();
    let s = scene("60s", "[]");
    let mut d = Daemon::start(&s.config);
    let key = config_key(&s.config).unwrap();
    let id = d.frozen_snapshot(r#"{"freeze_timeout_ms":60000}"#);
    let stop = Arc::new(AtomicBool::new(false));
    // The hostile threads stop when the test ends, even by a failed assertion.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());
    let mut threads = Vec::new();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    for i in 0..140 {
        let head = match i % 4 {
            // A body trickled after headers that look signed (well-formed, wrong signature).
            0 => format!(
                "POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\
                 X-Quiesce-Timestamp: {}\r\nX-Quiesce-Nonce: hostile-nonce-{i:06}\r\n\
                 X-Quiesce-Signature: {}\r\n\r\n",
                now(),
                "0".repeat(64)
            ),
            // A body trickled with no signature at all.
            1 => "POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n".into(),
            // Headers trickled forever.
            _ => "GET /v1/snapshots HTTP/1.1\r\nHost: x\r\n".into(),
        };
        let trickle: &'static [u8] = if i % 4 < 2 { b" " } else { b"X-Slow: a\r\n" };
        threads.push(hostile(d.addr.clone(), head, trickle, stop.clone()));
    }
    // And a flood of unsigned requests.
    let flooded = Arc::new(AtomicU64::new(0));
    for _ in 0..4 {
        let (addr, stop, flooded) = (d.addr.clone(), stop.clone(), flooded.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect(&addr) {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let _ = s.write_all(
                        b"POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                    );
                    let mut out = [0u8; 64];
                    let _ = s.read(&mut out);
                    flooded.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Let the hostile connections take every place they can.
    std::thread::sleep(Duration::from_secs(3));
    // Health is still answered, and the signed thaw at once.
    let t = std::time::Instant::now();
    assert_eq!(raw_call(&d.addr, "GET", "/v1/health", None).0, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "health took {:?}",
        t.elapsed()
    );
    let path = format!("/v1/snapshots/{id}/thaw");
    let body = r#"{"storage_snapshot":"taken"}"#;
    let t = std::time::Instant::now();
    let (code, text) = signed_raw_call(&d.addr, &key, "POST", &path, body);
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "signed thaw answered in {took:?} with 140 hostile connections and {} flood requests",
        flooded.load(Ordering::Relaxed)
    );
    assert_eq!(code, 200, "{text}");
    assert!(
        took < Duration::from_millis(100),
        "the signed thaw took {took:?} under attack"
    );
    assert!(
        flooded.load(Ordering::Relaxed) > 50,
        "the flood did not run"
    );
    for t in threads {
        t.join().unwrap();
    }
    let (_, done) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
        None,
    );
    assert_eq!(
        (&done["state"], &done["thaw_reason"]),
        (&json!("succeeded"), &json!("host")),
        "{done}"
    );
    let log = stop_and_log(&mut d);
    assert!(log.contains("froze "), "{log}");
    assert!(log.contains("thawed "), "{log}");
    assert!(!log.contains("records were dropped"), "{log}");
}

#[test]
fn refused_requests_during_a_freeze_do_not_push_out_the_agents_records() {
    require_root();
    let s = scene("30s", "[]");
    let mut d = Daemon::start(&s.config);
    let id = d.frozen_snapshot(r#"{"freeze_timeout_ms":4000}"#);
    // 2200 refused requests, each with a long path, while frozen.
    let long = format!("/v1/snapshots/{}", "a".repeat(3000));
    for i in 0..2200 {
        let path = if i % 2 == 0 {
            long.as_str()
        } else {
            "/v1/snapshots"
        };
        assert_eq!(raw_call(&d.addr, "GET", path, None).0, 401);
    }
    let (_, done) = d.call(
        "GET",
        &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
        None,
    );
    assert_eq!(done["thaw_reason"], "deadline", "{done}");
    // Give the summary tick a moment, then look at the whole log.
    std::thread::sleep(Duration::from_secs(3));
    let log = stop_and_log(&mut d);
    assert!(log.contains("froze "), "{log}");
    assert!(
        log.contains("the freeze deadline came before the host's thaw"),
        "the deadline record was lost:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(log.contains("thawed "));
    assert!(!log.contains("records were dropped"), "records were lost");
    let refused = log.lines().filter(|l| l.contains("refused: ")).count();
    assert!(refused <= 10, "{refused} refusal lines");
    assert!(log.contains("more unauthenticated requests"), "no summary");
    assert!(
        log.lines().all(|l| l.len() < 1000),
        "a logged path was not cut"
    );
}

#[test]
fn heads_are_limited_and_head_health_is_open() {
    require_root();
    let s = scene("30s", "[]");
    let d = Daemon::start(&s.config);
    assert_eq!(raw_call(&d.addr, "HEAD", "/v1/health", None).0, 200);
    let big = format!("X-Big: {}\r\n", "b".repeat(20 * 1024));
    let (code, _) = raw_call_with(&d.addr, "GET", "/v1/health", None, &big);
    assert_eq!(code, 431);
    let ok = format!("X-Small: {}\r\n", "b".repeat(8 * 1024));
    assert_eq!(
        raw_call_with(&d.addr, "GET", "/v1/health", None, &ok).0,
        200
    );
}

#[test]
fn a_bad_signature_is_refused_before_the_body_is_read() {
    require_root();
    let s = scene("30s", "[]");
    let d = Daemon::start(&s.config);
    // Headers that fail on their own: answered 401 although the announced body never comes.
    for head in [
        "POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".to_string(),
        format!(
            "POST /v1/snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\
             X-Quiesce-Timestamp: 1000\r\nX-Quiesce-Nonce: nonce-000000000001\r\n\
             X-Quiesce-Signature: {}\r\n\r\n",
            "0".repeat(64)
        ),
    ] {
        let mut c = TcpStream::connect(&d.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        let t = std::time::Instant::now();
        let mut out = [0u8; 12];
        c.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"HTTP/1.1 401");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn a_request_captured_before_a_restart_is_refused_after_it() {
    require_root();
    let s = scene("30s", "[]");
    let key = config_key(&s.config).unwrap();
    let mut d = Daemon::start(&s.config);
    let path = "/v1/snapshots";
    let captured = signature_lines(&key, "GET", path, b"");
    assert_eq!(raw_call_with(&d.addr, "GET", path, None, &captured).0, 200);
    assert_eq!(
        raw_call_with(&d.addr, "GET", path, None, &captured).0,
        401,
        "a replay"
    );
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(10));
    // The timestamp has second granularity: start the new process in a later second.
    std::thread::sleep(Duration::from_millis(1100));
    let d2 = Daemon::start(&s.config);
    let (code, text) = raw_call_with(&d2.addr, "GET", path, None, &captured);
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("before_start"), "{text}");
    assert_eq!(d2.call("GET", path, None).0, 200);
}

#[test]
fn callback_urls_must_point_at_the_requesting_host() {
    require_root();
    let s = scene("30s", "[]");
    let text = fs::read_to_string(&s.config).unwrap()
        + "callbacks:\n  allow: [\"http://192.0.2.10:9000/hooks/\"]\n";
    fs::write(&s.config, text).unwrap();
    let d = Daemon::start(&s.config);
    for url in [
        "http://192.0.2.99/cb",
        "http://user:secret@127.0.0.1:9/cb",
        "ftp://127.0.0.1/cb",
        "http://192.0.2.10:9000/other",
        "http://192.0.2.10:9000.evil/hooks/",
    ] {
        let body = json!({ "callback_url": url, "consistency": "file_system" }).to_string();
        let (code, v) = d.call("POST", "/v1/snapshots", Some(&body));
        assert_eq!(code, 400, "{url}: {v}");
    }
    let (_, list) = d.call("GET", "/v1/snapshots", None);
    assert_eq!(list["snapshots"], json!([]), "nothing started");
    for url in ["http://127.0.0.1:9/cb", "http://192.0.2.10:9000/hooks/x"] {
        let body = json!({ "callback_url": url, "consistency": "file_system" }).to_string();
        let (code, v) = d.call("POST", "/v1/snapshots", Some(&body));
        assert_eq!(code, 202, "{url}: {v}");
        let id = v["id"].as_str().unwrap();
        let (code, _) = d.call("DELETE", &format!("/v1/snapshots/{id}"), None);
        assert!(code == 200 || code == 409);
        d.call(
            "GET",
            &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
            None,
        );
    }
}

#[test]
fn the_unix_listener_is_roots_alone_and_needs_no_key() {
    use std::os::unix::fs::FileTypeExt;
    require_root();
    let s = scene("30s", "[]");
    let sock = s.dir.path().join("api.sock");
    let text = fs::read_to_string(&s.config).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("listen:") {
                format!("listen: \"unix:{}\"", sock.display())
            } else if l.starts_with("auth:") {
                "auth: {mode: none}".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&s.config, text + "\n").unwrap();
    let d = Daemon::start(&s.config);
    assert_eq!(d.addr, format!("unix:{}", sock.display()));
    let md = fs::symlink_metadata(&sock).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(d.call("GET", "/v1/snapshots", None).0, 200);
    // The CLI reaches it with no key.
    let out = Command::new(QUIESCE)
        .args(["status", "--agent", &d.addr])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A peer that is not root is closed without an answer, even with the socket opened to it.
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ns.sendall(b'GET /v1/snapshots HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\ns.settimeout(5)\nsys.stdout.write(repr(s.recv(100)))\n",
        sock.display().to_string()
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "python3",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("HTTP/1.1"),
        "a non-root peer got an answer: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn auth_none_on_tcp_is_refused_even_on_loopback() {
    require_root();
    let (code, err) = daemon_with_config("listen: 127.0.0.1:7399\nauth: {mode: none}\n");
    // A configuration error: EX_CONFIG, so that the unit does not restart on it.
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("config.yaml:2:8: auth.mode none is refused"),
        "{err}"
    );
}

/// A hook (or its `#!` interpreter) loosened after the config was loaded is refused right
/// before it would run.
#[test]
fn hooks_and_their_interpreters_are_checked_again_before_exec() {
    require_root();
    let dir = scratch_dir();
    let interp = dir.path().join("interp");
    fs::copy("/bin/sh", &interp).unwrap();
    fs::set_permissions(&interp, fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("hook.sh");
    let log = dir.path().join("hook.log");
    fs::write(
        &script,
        format!(
            "#!{}\necho \"$QUIESCE_PHASE\" >> {}\n",
            interp.display(),
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let s = scene("30s", &format!("[{{name: app, pre: [{script:?}]}}]"));
    let d = Daemon::start(&s.config);
    let run_once = || {
        let (code, snap) = d.call(
            "POST",
            "/v1/snapshots",
            Some(r#"{"freeze_timeout_ms":2000}"#),
        );
        assert_eq!(code, 202, "{snap}");
        let id = snap["id"].as_str().unwrap();
        let (_, done) = d.call(
            "GET",
            &format!("/v1/snapshots/{id}?wait=done&timeout_ms=20000"),
            None,
        );
        done
    };
    // Loosened after the load: the hook itself, then its interpreter.
    fs::set_permissions(&script, fs::Permissions::from_mode(0o777)).unwrap();
    let done = run_once();
    let out = done["hooks"][0]["output"].as_str().unwrap_or_default();
    assert!(out.contains("refused to run"), "{done}");
    assert!(!log.exists(), "the loosened hook ran");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&interp, fs::Permissions::from_mode(0o777)).unwrap();
    let done = run_once();
    let out = done["hooks"][0]["output"].as_str().unwrap_or_default();
    assert!(out.contains("#! interpreter"), "{done}");
    assert!(!log.exists(), "the hook ran with a loosened interpreter");
    // Both fine again: it runs.
    fs::set_permissions(&interp, fs::Permissions::from_mode(0o755)).unwrap();
    run_once();
    assert_eq!(fs::read_to_string(&log).unwrap(), "pre\n");
}

/// The `quiesce watchdog` children of a process.
fn watchdogs_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces) start after the last ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        let cmdline = fs::read_to_string(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if ppid == pid && cmdline.split('\0').nth(1) == Some("watchdog") {
            out.push(child);
        }
    }
    out
}

/// Waits until `pid` has exactly one watchdog child; returns it.
fn the_one_watchdog(pid: u32) -> u32 {
    let t = std::time::Instant::now();
    loop {
        let w = watchdogs_of(pid);
        if w.len() == 1 {
            return w[0];
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "watchdogs of {pid}: {w:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_spare_watchdog_is_ready_before_the_request_and_replaced_after_the_freeze() {
    require_root();
    let s = scene("30s", "[]");
    let mut d = Daemon::start(&s.config);
    let daemon = d.child.id();
    // Started with the daemon, before any request: memory locked, waiting for a plan.
    let spare = the_one_watchdog(daemon);
    let locked = || {
        fs::read_to_string(format!("/proc/{spare}/status"))
            .unwrap()
            .lines()
            .any(|l| l.starts_with("VmLck:") && !l.ends_with(" 0 kB"))
    };
    let t = std::time::Instant::now();
    while !locked() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the spare has locked no memory"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let id = d.frozen_snapshot("{}");
    // The freeze is held by that very process, and no other was started for it.
    assert_eq!(watchdogs_of(daemon), vec![spare]);
    d.thaw_until_done(&id);
    // Once the snapshot ended, the used one is gone and a new spare waits.
    let t = std::time::Instant::now();
    let next = loop {
        let w = watchdogs_of(daemon);
        if w.len() == 1 && w[0] != spare {
            break w[0];
        }
        assert!(t.elapsed() < Duration::from_secs(5), "watchdogs: {w:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!std::path::Path::new(&format!("/proc/{spare}")).exists());
    // A daemon that dies takes its spare with it (the spare's stdin closes).
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(5));
    let t = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{next}/stat")).exists()
        && !fs::read_to_string(format!("/proc/{next}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the spare outlived its daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
