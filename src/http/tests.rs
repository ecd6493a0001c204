//! The router in-process: real requests through axum, the real HMAC check, the registry on the
//! fakes of the freezer and the hook runner. No socket, no root.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

use super::hmac::Hmac;
use super::{router, AuthSlot};
use crate::agent::Agent;
use crate::auth::{self, Key};
use crate::snapshot::fakes::{self, FakeFreezers, FakeHooks};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Api {
    router: axum::Router,
    agent: Arc<Agent>,
    freezers: Arc<FakeFreezers>,
}

fn api() -> Api {
    let ctx = fakes::context("hooks: [{name: a, pre: [/bin/a], post: [/bin/a]}]\n");
    let hooks = Arc::new(FakeHooks::default());
    let freezers = FakeFreezers::new(&["/data"]);
    let agent = Agent::with_ports(ctx, fakes::ports(&hooks, &freezers));
    let auth = Hmac::new(Key::from_bytes(KEY.to_vec()).unwrap(), now() - 10);
    Api {
        router: router(agent.clone(), AuthSlot::new(Some(Arc::new(auth)))),
        agent,
        freezers,
    }
}

impl Api {
    async fn call(
        &self,
        method: Method,
        pq: &str,
        body: &str,
        signed: bool,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method.clone()).uri(pq);
        if signed {
            let key = Key::from_bytes(KEY.to_vec()).unwrap();
            let nonce = auth::new_nonce().unwrap();
            let h = auth::sign_request(&key, method.as_str(), pq, body.as_bytes(), now(), nonce);
            for (name, value) in h.pairs() {
                req = req.header(name, value);
            }
        }
        let res = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }
}

#[tokio::test]
async fn health_and_metrics_need_no_key_and_reveal_no_snapshot() {
    let a = api();
    let (status, body) = a.call(Method::GET, "/v1/health", "", false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, _) = a.call(Method::HEAD, "/v1/health", "", false).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = a.call(Method::GET, "/metrics", "", false).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_unsigned_request_is_refused_and_changes_nothing() {
    let a = api();
    let (status, _) = a.call(Method::POST, "/v1/snapshots", "{}", false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = a.call(Method::GET, "/v1/snapshots", "", false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(a.agent.list().is_empty());
    assert!(a.freezers.records().is_empty());
}

#[tokio::test]
async fn a_signed_cycle_goes_from_created_to_succeeded() {
    let a = api();
    let (status, created) = a
        .call(
            Method::POST,
            "/v1/snapshots",
            r#"{"request_id":"r1"}"#,
            true,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "pre_hooks");
    // Busy for another request; the same request_id is the same snapshot.
    let (status, busy) = a.call(Method::POST, "/v1/snapshots", "{}", true).await;
    assert_eq!(
        (status, busy["active"].as_str()),
        (StatusCode::CONFLICT, Some(id.as_str()))
    );
    let (status, again) = a
        .call(
            Method::POST,
            "/v1/snapshots",
            r#"{"request_id":"r1"}"#,
            true,
        )
        .await;
    assert_eq!(
        (status, again["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let wait = format!("/v1/snapshots/{id}?wait=frozen&timeout_ms=5000");
    let (status, frozen) = a.call(Method::GET, &wait, "", true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frozen["state"], "frozen");
    assert_eq!(frozen["consistency"], "application");
    let thaw = format!("/v1/snapshots/{id}/thaw");
    let (status, thawed) = a
        .call(Method::POST, &thaw, r#"{"storage_snapshot":"taken"}"#, true)
        .await;
    assert_eq!(status, StatusCode::OK, "{thawed}");
    assert_eq!(thawed["mounts"][0]["frozen"], false);
    // DELETE after the host's thaw, and a second thaw: 409 with the snapshot.
    let one = format!("/v1/snapshots/{id}");
    let (status, _) = a.call(Method::DELETE, &one, "", true).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let done = format!("/v1/snapshots/{id}?wait=done&timeout_ms=5000");
    let (_, end) = a.call(Method::GET, &done, "", true).await;
    assert_eq!(end["state"], "succeeded");
    assert_eq!(end["thaw_reason"], "host");
    let hooks: Vec<String> = end["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{}/{}",
                h["name"].as_str().unwrap(),
                h["phase"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(hooks, ["a/pre", "a/post"]);
    let (_, list) = a.call(Method::GET, "/v1/snapshots", "", true).await;
    assert_eq!(list["snapshots"][0]["id"].as_str(), Some(id.as_str()));
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let a = api();
    for (body, expect) in [
        ("{", StatusCode::BAD_REQUEST),
        (r#"{"consistency":"perfect"}"#, StatusCode::BAD_REQUEST),
        (r#"{"unknown_field":1}"#, StatusCode::BAD_REQUEST),
        (r#"{"mounts":["/not-a-target"]}"#, StatusCode::BAD_REQUEST),
        (r#"{"freeze_timeout_ms":0}"#, StatusCode::BAD_REQUEST),
    ] {
        let (status, err) = a.call(Method::POST, "/v1/snapshots", body, true).await;
        assert_eq!(status, expect, "{body}: {err}");
        assert!(err["error"].is_string(), "{body}: {err}");
    }
    let (status, _) = a.call(Method::GET, "/v1/snapshots/nope", "", true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = a.call(Method::PUT, "/v1/snapshots", "", true).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(a.agent.list().is_empty(), "nothing started");
    assert!(a.freezers.records().is_empty());
}
