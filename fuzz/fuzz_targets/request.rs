//! Request decoding: the bodies of `POST /v1/snapshots` and `POST .../thaw` must be decoded or
//! refused with a message, never a panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce::http::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode::create_body(data);
    if let Ok(taken) = decode::thaw_body(data) {
        // Only the two documented spellings decode.
        let text = std::str::from_utf8(data).expect("accepted bodies are UTF-8");
        assert!(text.contains(if taken { "taken" } else { "failed" }));
    }
});
