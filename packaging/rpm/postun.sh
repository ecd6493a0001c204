# quiesce %postun ($1: 0 on removal, 1 on upgrade), as %systemd_postun_with_restart: after an
# upgrade a running daemon is restarted (a stopped one stays stopped).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart quiesce.service >/dev/null 2>&1 || :
    fi
fi
exit 0
