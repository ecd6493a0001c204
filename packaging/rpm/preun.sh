# quiesce %preun ($1: 0 on removal, 1 on upgrade), as %systemd_preun: on removal the unit is
# disabled and stopped, which thaws whatever it froze and runs the due post hooks.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable --now quiesce.service >/dev/null 2>&1 || :
    else
        systemctl --no-reload disable quiesce.service >/dev/null 2>&1 || :
    fi
fi
exit 0
