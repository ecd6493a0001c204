//! The daemon over real HTTP on loopback, black-box: the built binary, loop filesystems, real
//! hooks. Needs root; fails (never skips) without it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::daemon::{hook_log, logging_hook, raw_call, scene, Daemon, QUIESCE};
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
    let big = vec![b' '; 70_000];
    assert_eq!(
        raw_call(&d.addr, "POST", "/v1/snapshots", Some(&big)).0,
        413
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

#[test]
fn an_invalid_config_refuses_to_start() {
    require_root();
    let dir = scratch_dir();
    let config = dir.path().join("config.yaml");
    fs::write(&config, "listen: 127.0.0.1:0\nfreeze:\n  timeout: 10\n").unwrap();
    let out = Command::new(QUIESCE)
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // 78 (EX_CONFIG): a configuration error, on which the unit does not restart (was 1).
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("config.yaml:3:"), "{err}");
    // auth none on a public address is refused too.
    fs::write(&config, "listen: 0.0.0.0:0\nauth: {mode: none}\n").unwrap();
    let out = Command::new(QUIESCE)
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert_eq!(d.call("GET", "/v1/health", None).0, 200);
    assert_eq!(d.call("GET", "/metrics", None).0, 200);
    let (code, v) = d.call("GET", "/v1/snapshots", None);
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
