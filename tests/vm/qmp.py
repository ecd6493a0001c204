#!/usr/bin/env python3
"""A minimal QMP client for tests/vm/run.sh.

    qmp.py SOCKET COMMAND [JSON-ARGUMENTS]

Connects to QEMU's QMP unix socket, negotiates capabilities, runs one command and prints its
"return" value as JSON. Exits 1 when QEMU answers with an error (printed on stderr) and 2 when
the socket does not answer within 60 s.
"""
import json
import socket
import sys


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    path, command = sys.argv[1], sys.argv[2]
    arguments = json.loads(sys.argv[3]) if len(sys.argv) == 4 else None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    try:
        sock.connect(path)
    except OSError as err:
        print(f"qmp: {path}: {err}", file=sys.stderr)
        return 2
    reader = sock.makefile("r", encoding="utf-8")

    def answer() -> dict:
        # Events (e.g. JOB_STATUS_CHANGE) may come before the answer: skip them.
        while True:
            line = reader.readline()
            if not line:
                raise ConnectionError("QMP socket closed")
            message = json.loads(line)
            if "return" in message or "error" in message:
                return message

    def send(cmd: str, args=None) -> dict:
        request = {"execute": cmd}
        if args is not None:
            request["arguments"] = args
        sock.sendall((json.dumps(request) + "\n").encode())
        return answer()

    try:
        json.loads(reader.readline())  # the greeting
        send("qmp_capabilities")
        reply = send(command, arguments)
    except (OSError, ConnectionError, ValueError) as err:
        print(f"qmp: {err}", file=sys.stderr)
        return 2
    if "error" in reply:
        print(f"qmp: {command}: {reply['error'].get('class')}: {reply['error'].get('desc')}",
              file=sys.stderr)
        return 1
    print(json.dumps(reply["return"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
