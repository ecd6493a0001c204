"""Request signing for the benchmark clients (contract: Authentication), so that the daemon
they measure runs with `auth.mode: hmac` on TCP, as in production (`none` is refused on TCP).

The key file is named by $QUIESCE_KEY_FILE; without it requests are not signed. One trailing
line ending is removed from the file, as the agent does.
"""

import hashlib
import hmac
import os
import secrets
import time


def _key():
    path = os.environ.get("QUIESCE_KEY_FILE")
    if not path:
        return None
    with open(path, "rb") as f:
        k = f.read()
    if k.endswith(b"\r\n"):
        k = k[:-2]
    elif k.endswith(b"\n"):
        k = k[:-1]
    return k


KEY = _key()


def headers(method, path_and_query, body=b""):
    """The three X-Quiesce-* headers for one request (a new nonce each time), or {}."""
    if KEY is None:
        return {}
    ts = str(int(time.time()))
    nonce = secrets.token_urlsafe(24)
    digest = hashlib.sha256(body or b"").hexdigest()
    msg = f"{method}\n{path_and_query}\n{ts}\n{nonce}\n{digest}".encode()
    sig = hmac.new(KEY, msg, hashlib.sha256).hexdigest()
    return {"X-Quiesce-Timestamp": ts, "X-Quiesce-Nonce": nonce, "X-Quiesce-Signature": sig}
