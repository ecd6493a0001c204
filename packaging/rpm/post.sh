# quiesce %post ($1: 1 on installation, 2 on upgrade), as %systemd_post and the tmpfiles macro
# do it, plus the key and the operator's directories; the unit is also started on installation.
install -d -m 0700 /etc/quiesce /etc/quiesce/config.d /etc/quiesce/hooks
if [ ! -e /etc/quiesce/host.key ]; then
    (
        umask 077
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > /etc/quiesce/host.key.tmp
        chmod 0600 /etc/quiesce/host.key.tmp
        mv /etc/quiesce/host.key.tmp /etc/quiesce/host.key
    )
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload preset quiesce.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/quiesce.conf >/dev/null 2>&1 || :
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl start quiesce.service >/dev/null 2>&1 || :
    fi
fi
exit 0
