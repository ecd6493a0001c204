//! `listen: unix:PATH`: the API on a unix socket that only root may use. The socket file is
//! made mode 0600, and every peer's credentials (SO_PEERCRED) are checked on accept: a peer
//! that is not uid 0 is closed before a byte is read. This is the one listener where
//! `auth.mode: none` is allowed.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Binds `path`: a stale socket left by a previous run is replaced, anything else there is an
/// error (never removed).
pub fn bind(path: &Path) -> anyhow::Result<super::Listener> {
    use anyhow::Context as _;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => std::fs::remove_file(path).with_context(|| {
            format!("listen: unix:{}: removing the stale socket", path.display())
        })?,
        Ok(_) => anyhow::bail!(
            "listen: unix:{}: something that is not a socket is there: remove it or choose \
             another path",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("listen: unix:{}", path.display())),
    }
    // The mode is set right after the bind; until then the peer check alone keeps others out.
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listen: unix:{}: cannot bind", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("listen: unix:{}: chmod 0600", path.display()))?;
    Ok(super::Listener::Unix(listener, path.to_path_buf()))
}

/// `unix:uid=0,pid=N` for a root peer; the reason otherwise.
pub fn root_peer(stream: &tokio::net::UnixStream) -> Result<String, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let pid = cred
        .pid()
        .map_or_else(|| "?".to_string(), |p| p.to_string());
    if cred.uid() != 0 {
        return Err(format!("peer uid {} (pid {pid}) is not root", cred.uid()));
    }
    Ok(format!("unix:uid=0,pid={pid}"))
}
