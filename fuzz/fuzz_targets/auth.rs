//! Request verification on arbitrary header values and bodies: it must never panic, never accept
//! a request it did not see signed with the key, and never accept a nonce twice in its window.
//!
//! The input is a sequence of requests separated by 0x00; each request's fields are separated by
//! 0x01: control bytes, method, path and query, timestamp, nonce, signature, body. Control byte 0
//! drops headers (bits 0-2) or replaces the signature with the right one (bit 3), so the fuzzer
//! also reaches the nonce cache; byte 1 moves the clock forward; bit 4 with bytes 2..10 sets it
//! to an arbitrary (later) value.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use quiesce::auth::{sign, AuthError, Key, Verifier, MAX_SKEW_SECS};

fuzz_target!(|data: &[u8]| {
    let key = Key::from_bytes(b"fuzz-key-fuzz-key-fuzz-key-fuzz!".to_vec()).unwrap();
    // A small capacity so that floods fill the cache within one input.
    let mut verifier = Verifier::with_capacity(key.clone(), 8);
    let mut now: u64 = 1_700_000_000;
    // The latest timestamp of each nonce a correctly signed request brought (accepted or replayed).
    let mut seen: HashMap<String, u64> = HashMap::new();

    for request in data.split(|&b| b == 0) {
        let mut fields = request.split(|&b| b == 1);
        let ctl = fields.next().unwrap_or_default();
        let text = |f: Option<&[u8]>| String::from_utf8_lossy(f.unwrap_or_default()).into_owned();
        let method = text(fields.next());
        let path = text(fields.next());
        let timestamp = text(fields.next());
        let nonce = text(fields.next());
        let mut signature = text(fields.next());
        let body = fields.next().unwrap_or_default();

        let flags = ctl.first().copied().unwrap_or(0);
        now = now.saturating_add(u64::from(ctl.get(1).copied().unwrap_or(0)) * 8);
        if flags & 0x10 != 0 && ctl.len() >= 10 {
            let jump = u64::from_le_bytes(ctl[2..10].try_into().unwrap());
            // Only forward: a clock stepped back can reopen forgotten nonces (documented).
            now = now.max(jump);
        }
        let signed_by_us = flags & 0x08 != 0;
        if signed_by_us {
            signature = sign(&key, &method, &path, &timestamp, &nonce, body);
        }
        let present = |bit: u8, value: &str| (flags & bit == 0).then_some(value.to_owned());
        let (t, n, s) = (
            present(0x01, &timestamp),
            present(0x02, &nonce),
            present(0x04, &signature),
        );

        let result = verifier.verify(
            &method,
            &path,
            t.as_deref(),
            n.as_deref(),
            s.as_deref(),
            body,
            now,
        );
        match &result {
            Ok(()) => {
                assert!(signed_by_us, "accepted a request the fuzzer could not sign");
                assert!(t.is_some() && n.is_some() && s.is_some());
                let ts: u64 = timestamp.parse().unwrap();
                assert!(ts.abs_diff(now) <= MAX_SKEW_SECS);
                if let Some(&last) = seen.get(&nonce) {
                    assert!(
                        last.saturating_add(MAX_SKEW_SECS + 1) <= now,
                        "nonce {nonce:?} accepted again within its window"
                    );
                }
            }
            Err(e) => {
                assert!(!e.reason().is_empty());
                let _ = e.to_string();
            }
        }
        if matches!(result, Ok(()) | Err(AuthError::ReplayedNonce)) {
            let ts: u64 = timestamp.parse().unwrap();
            let last = seen.entry(nonce).or_insert(ts);
            *last = (*last).max(ts);
        }
        assert!(verifier.nonces_remembered() <= 8);
    }
});
