//! The config parser on arbitrary input: it must never panic, and a refusal always names at
//! least one place (line and column from 1).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use quiesce::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::parse(Path::new("/etc/quiesce/config.yaml"), text) {
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert!(e.line >= 1 && e.column >= 1, "{e}");
        }
        let _ = errors.to_string();
    }
});
