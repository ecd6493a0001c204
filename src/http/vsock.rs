//! `listen: vsock:PORT`: the API on AF_VSOCK, so that a host reaches its guest without a
//! network. The listener takes any CID of the guest (VMADDR_CID_ANY) and [`super::serve`]
//! gives its connections the same router, authentication included, as TCP ones. A failed bind
//! becomes a message that tells the operator what to change.

use std::io;

use nix::errno::Errno;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// Ports up to this one need CAP_NET_BIND_SERVICE, on vsock as on IP.
const LAST_RESERVED_PORT: u32 = 1023;

/// Why the vsock listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// No AF_VSOCK in this kernel (not built in, module missing).
    #[error(
        "listen: vsock:{port}: this kernel has no vsock support (AF_VSOCK: {desc}); use an IP \
         address"
    )]
    NoVsock { port: u32, desc: &'static str },
    /// AF_VSOCK refused while a seccomp filter is on: it may be the filter, not the kernel.
    #[error(
        "listen: vsock:{port}: AF_VSOCK sockets are refused (AF_VSOCK: {desc}): this kernel has \
         no vsock support, or this process's seccomp filter leaves AF_VSOCK out (systemd: add it \
         to RestrictAddressFamilies=); allow AF_VSOCK or use an IP address"
    )]
    Filtered { port: u32, desc: &'static str },
    /// Someone already listens on that port.
    #[error(
        "listen: vsock:{port}: port {port} is already in use on vsock ({desc}): another quiesce \
         daemon or another service listens there; stop it or choose another port"
    )]
    InUse { port: u32, desc: &'static str },
    /// The process may not bind that port.
    #[error("listen: vsock:{port}: permission denied ({desc}): {hint}")]
    Permission {
        port: u32,
        desc: &'static str,
        hint: &'static str,
    },
    /// Anything else, with the system's words (not a `source`: the message has it already).
    #[error("listen: vsock:{port}: {error}")]
    Other { port: u32, error: io::Error },
}

impl BindError {
    /// Classifies the error of a bind on `port`; `seccomp_filtered` tells whether a seccomp
    /// filter is on, which can fake the kernel's "no such address family".
    pub fn new(port: u32, source: io::Error, seccomp_filtered: bool) -> BindError {
        let Some(errno) = source.raw_os_error().map(Errno::from_raw) else {
            return BindError::Other {
                port,
                error: source,
            };
        };
        let desc = errno.desc();
        match errno {
            Errno::EAFNOSUPPORT if seccomp_filtered => BindError::Filtered { port, desc },
            Errno::EAFNOSUPPORT => BindError::NoVsock { port, desc },
            Errno::EADDRINUSE => BindError::InUse { port, desc },
            Errno::EACCES | Errno::EPERM => BindError::Permission {
                port,
                desc,
                hint: if port <= LAST_RESERVED_PORT {
                    "ports up to 1023 need CAP_NET_BIND_SERVICE, which this process lacks \
                     (systemd: CapabilityBoundingSet=); grant it or choose a port above 1023"
                } else {
                    "a security policy (SELinux, AppArmor, seccomp) forbids this process to \
                     listen on vsock; allow it or use an IP address"
                },
            },
            _ => BindError::Other {
                port,
                error: source,
            },
        }
    }
}

/// Listens on `port` of every CID of this machine.
pub fn bind(port: u32) -> Result<VsockListener, BindError> {
    VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
        .map_err(|e| BindError::new(port, e, seccomp_filtered()))
}

/// Whether a seccomp filter is on for this process (`Seccomp: 2` in /proc/self/status).
fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("Seccomp:"))
                .any(|v| v.trim() == "2")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: Errno) -> io::Error {
        io::Error::from(errno)
    }

    #[test]
    fn no_vsock_in_the_kernel() {
        let e = BindError::new(7380, os(Errno::EAFNOSUPPORT), false);
        assert!(matches!(e, BindError::NoVsock { port: 7380, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "listen: vsock:7380: this kernel has no vsock support (AF_VSOCK: Address family not \
             supported by protocol); use an IP address"
        );
    }

    #[test]
    fn a_seccomp_filter_may_be_the_cause() {
        let e = BindError::new(7380, os(Errno::EAFNOSUPPORT), true).to_string();
        assert!(
            e.starts_with("listen: vsock:7380: AF_VSOCK sockets are refused"),
            "{e}"
        );
        assert!(e.contains("RestrictAddressFamilies="), "{e}");
        assert!(e.contains("use an IP address"), "{e}");
    }

    #[test]
    fn port_in_use() {
        let e = BindError::new(40000, os(Errno::EADDRINUSE), false);
        assert!(matches!(e, BindError::InUse { port: 40000, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "listen: vsock:40000: port 40000 is already in use on vsock (Address already in use): \
             another quiesce daemon or another service listens there; stop it or choose another \
             port"
        );
    }

    #[test]
    fn permission_hints_depend_on_the_port() {
        let low = BindError::new(80, os(Errno::EACCES), false).to_string();
        assert!(
            low.starts_with("listen: vsock:80: permission denied (Permission denied): "),
            "{low}"
        );
        assert!(low.contains("CAP_NET_BIND_SERVICE"), "{low}");
        let high = BindError::new(7380, os(Errno::EPERM), false).to_string();
        assert!(
            high.starts_with("listen: vsock:7380: permission denied (Operation not permitted): "),
            "{high}"
        );
        assert!(high.contains("security policy"), "{high}");
        assert!(!high.contains("CAP_NET_BIND_SERVICE"), "{high}");
    }

    #[test]
    fn other_errors_keep_the_system_words() {
        let e = BindError::new(7380, os(Errno::EMFILE), false);
        assert!(matches!(e, BindError::Other { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("listen: vsock:7380: Too many open files"),
            "{e}"
        );
        let custom = BindError::new(7380, io::Error::other("odd"), false);
        assert_eq!(custom.to_string(), "listen: vsock:7380: odd");
    }
}
