//! The QEMU guest agent protocol's core: whatever bytes come on the port, cut into writes
//! anywhere, the framer finds the same requests, keeps a bounded buffer, and each request gets
//! exactly one reply line; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce::qga::protocol::{self, Framer, Reply, MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = Framer::new().push(stream);
    let at = (cut as usize * stream.len()) / 256;
    let mut f = Framer::new();
    let mut parts = f.push(&stream[..at]);
    parts.extend(f.push(&stream[at..]));
    assert_eq!(parts, whole);
    for frame in &whole {
        if let protocol::Frame::Request(b) = frame {
            assert!(b.len() <= MAX_REQUEST);
        }
        let line = match protocol::answer_locally(frame, cut % 2 == 0) {
            Ok(reply) => reply.encode(),
            Err((req, _)) => Reply::ok(&req, serde_json::Value::Null).encode(),
        };
        let body = line
            .strip_prefix(&[protocol::DELIMITER][..])
            .unwrap_or(&line);
        assert_eq!(body.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(body.ends_with(b"}\n"));
    }
});
