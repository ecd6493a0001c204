//! Decoding of request bodies: strict, and never a panic on any input (a fuzz target runs it).

use serde::Deserialize;

use crate::agent::CreateBody;

/// `POST /v1/snapshots`: an empty (or all-whitespace) body means `{}`.
pub fn create_body(body: &[u8]) -> Result<CreateBody, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CreateBody::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThawBody {
    storage_snapshot: StorageSnapshot,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StorageSnapshot {
    Taken,
    Failed,
}

/// `POST /v1/snapshots/{id}/thaw`: `true` for `taken`, `false` for `failed`.
pub fn thaw_body(body: &[u8]) -> Result<bool, String> {
    let parsed: ThawBody = serde_json::from_slice(body).map_err(|e| {
        format!("invalid body (expected {{\"storage_snapshot\":\"taken\"|\"failed\"}}): {e}")
    })?;
    Ok(matches!(parsed.storage_snapshot, StorageSnapshot::Taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_bodies() {
        assert!(create_body(b"").unwrap().request_id.is_none());
        assert!(create_body(b" \n").is_ok());
        let b =
            create_body(br#"{"request_id":"a","freeze_timeout_ms":5,"mounts":["/d"]}"#).unwrap();
        assert_eq!(b.freeze_timeout_ms, Some(5));
        for bad in [
            &b"{"[..],
            b"[]",
            b"null",
            br#"{"x":1}"#,
            br#"{"consistency":"crash"}"#,
        ] {
            assert!(
                create_body(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn thaw_bodies() {
        assert_eq!(thaw_body(br#"{"storage_snapshot":"taken"}"#), Ok(true));
        assert_eq!(thaw_body(br#"{"storage_snapshot":"failed"}"#), Ok(false));
        for bad in [
            &b""[..],
            b"{}",
            br#"{"storage_snapshot":"TAKEN"}"#,
            br#"{"storage_snapshot":"taken","x":1}"#,
        ] {
            assert!(thaw_body(bad).is_err());
        }
    }
}
