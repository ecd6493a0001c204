//! The shipped systemd files: `systemd-analyze verify` of the unit in a root that holds the
//! built binary and the system's own units, and `systemd-tmpfiles --create` of the tmpfiles.d
//! line into a scratch root. Needs systemd's tools (package `systemd`); fails without them.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::daemon::QUIESCE;
use common::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/quiesce.service");
const TMPFILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/quiesce.tmpfile");

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[test]
fn systemd_analyze_verify_finds_nothing_to_say() {
    require_root();
    let dir = scratch_dir();
    let root = dir.path();
    // What the unit names must exist in the root: the binary, /bin/sh, the units it orders
    // itself after (the host's own unit directory stands in for the distribution's).
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    fs::copy(QUIESCE, root.join("usr/bin/quiesce")).unwrap();
    fs::copy("/bin/sh", root.join("bin/sh")).unwrap();
    let units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("systemd's units (package systemd) are needed for this test");
    copy_tree(units, &root.join("usr/lib/systemd/system"));
    fs::copy(UNIT, root.join("usr/lib/systemd/system/quiesce.service")).unwrap();

    // --man=no: the man page comes with the packages.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg("quiesce.service")
        .output()
        .expect("systemd-analyze (package systemd) is needed for this test");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");

    let unit = fs::read_to_string(UNIT).unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=mixed",
        "ExecStopPost=/usr/bin/quiesce thaw-all --config /etc/quiesce/config.yaml",
        "WatchdogSec=30s",
        // The daemon exits 78 on a configuration error: no restart loop on a typo.
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
    ] {
        assert!(has(line), "the unit lost {line:?}");
    }
    // The sandbox of issue 14 (hooks run in units of their own): each line is there, and
    // commented (the comment block right above a setting says why).
    for line in [
        "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_DAC_READ_SEARCH CAP_SYS_RESOURCE",
        "LimitMEMLOCK=infinity",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/run/quiesce",
        // Not "yes": mounts under /home must stay visible to be frozen.
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ReadWritePaths=-/sys/kernel/rcu_expedited",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "PrivateMounts=yes",
        "PrivateIPC=yes",
        "RestrictNamespaces=yes",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "UMask=0077",
    ] {
        assert!(has(line), "the unit lost {line:?}");
    }
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    let sandbox = lines
        .iter()
        .position(|l| l.starts_with("# --- The sandbox"))
        .unwrap();
    for (i, l) in lines.iter().enumerate().skip(sandbox + 1) {
        if l.starts_with('[') {
            break;
        }
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let commented = (0..i)
            .rev()
            .map(|j| lines[j])
            .take_while(|p| !p.is_empty())
            .any(|p| p.starts_with('#'));
        assert!(commented, "{l:?} has no comment saying why");
    }
    // vsock must keep working; nothing the daemon does not use.
    let families = unit
        .lines()
        .find(|l| l.starts_with("RestrictAddressFamilies="))
        .unwrap_or("");
    assert_eq!(
        families,
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_VSOCK"
    );
    // Things that would break a freeze: hidden /home, no block device nodes, a root uid map.
    for bad in [
        "ProtectHome=yes",
        "ProtectHome=tmpfs",
        "PrivateDevices=yes",
        "PrivateUsers=yes",
    ] {
        assert!(!has(bad), "{bad} would hide what must be frozen");
    }
}

/// `systemd-analyze security --offline=yes` of the unit: at most 3.0 (the VM test checks the
/// score of the installed unit under the guest's systemd).
#[test]
fn the_exposure_score_is_at_most_3() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", UNIT])
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for quiesce.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{text}");
}

#[test]
fn tmpfiles_creates_a_root_only_state_dir() {
    require_root();
    let dir = scratch_dir();
    let out = Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", dir.path().display()))
        .arg(TMPFILES)
        .output()
        .expect("systemd-tmpfiles (package systemd) is needed for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = fs::metadata(dir.path().join("run/quiesce")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}
