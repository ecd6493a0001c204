//! `listen: vsock:PORT`, black-box: the built daemon binds AF_VSOCK on any CID, says so, stays
//! up and stops on SIGTERM; a port already taken or a reserved port without the capability
//! stops it with exit 1 and a message that says why, before it ever claims to listen.
//!
//! No request goes over vsock here: that needs a transport that reaches this machine itself
//! (loopback, CID 1) or a host, and test machines may have neither. The connections are served
//! by the same `http::serve` as TCP ones, which tests/http.rs exercises.
//!
//! Needs root (the HMAC key must be owned by root) and a kernel with vsock; fails (never skips)
//! without them.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{require_root, scratch_dir};

/// A vsock port that nothing else on this machine should be using: ports are 32-bit, so a
/// random one far above the kernel's own picks collides with nothing in practice.
fn random_port() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one((std::process::id(), Instant::now()));
    0x1000_0000 + (r % 0x6000_0000) as u32
}

/// Writes a config listening on `vsock:PORT` with HMAC auth (required off loopback), a state
/// dir of its own (`state_name`), and a freeze selection that matches no mount at all.
fn config(dir: &Path, name: &str, port: u32) -> PathBuf {
    let key = dir.join("host.key");
    if !key.exists() {
        fs::write(&key, [0x5a_u8; 48]).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let path = dir.join(format!("{name}.yaml"));
    fs::write(
        &path,
        format!(
            "listen: vsock:{port}\nstate_dir: {:?}\nauth: {{mode: hmac, key_file: {key:?}}}\nfreeze:\n  include_mounts: [/nonexistent-quiesce]\n",
            dir.join(format!("state-{name}"))
        ),
    )
    .unwrap();
    path
}

#[test]
fn listens_on_vsock_stays_up_and_stops_on_sigterm() {
    require_root();
    let dir = scratch_dir();
    let port = random_port();
    let mut d = Daemon::spawn(&[], &config(dir.path(), "a", port));
    assert_eq!(d.listening(), format!("vsock:{port}"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon stopped by itself; its log:\n{}",
        d.seen.join("\n")
    );
    d.signal("TERM");
    let (code, log) = d.exit(Duration::from_secs(15));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn a_second_daemon_on_the_same_port_says_it_is_in_use() {
    require_root();
    let dir = scratch_dir();
    let port = random_port();
    let mut first = Daemon::spawn(&[], &config(dir.path(), "first", port));
    assert_eq!(first.listening(), format!("vsock:{port}"));

    let mut second = Daemon::spawn(&[], &config(dir.path(), "second", port));
    let (code, log) = second.exit(Duration::from_secs(20));
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "quiesce daemon: listen: vsock:{port}: port {port} is already in use on vsock"
        )),
        "{log}"
    );
    assert!(!log.contains("listening on "), "{log}");

    // The first one is not disturbed.
    assert!(first.child.try_wait().unwrap().is_none());
    first.signal("TERM");
    let (code, log) = first.exit(Duration::from_secs(15));
    assert_eq!(code, 0, "{log}");
}

#[test]
fn a_reserved_port_needs_cap_net_bind_service() {
    require_root();
    let dir = scratch_dir();
    // Root, but without the capability: as under a unit whose CapabilityBoundingSet= lacks it.
    let mut d = Daemon::spawn(
        &["setpriv", "--bounding-set=-net_bind_service"],
        &config(dir.path(), "low", 1000),
    );
    let (code, log) = d.exit(Duration::from_secs(20));
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("quiesce daemon: listen: vsock:1000: permission denied"),
        "{log}"
    );
    assert!(log.contains("CAP_NET_BIND_SERVICE"), "{log}");
    assert!(!log.contains("listening on "), "{log}");
}
