"""A minimal client for the agent's control socket (one JSON object per line each way).

Used by the CNI plugin and `vxtap endpoint ... --sock`. The socket is a file, so this works from
inside the node's network namespace, where etcd on loopback is not reachable.
"""

from __future__ import annotations

import json
import socket
from typing import Any

DEFAULT_SOCK_DIR = "/run/vxtap"
MAX_RESPONSE = 16 * 1024 * 1024


class AgentError(Exception):
    """The agent answered {"ok": false, "error": ...}."""


class AgentUnreachable(Exception):
    """No agent listening on the socket (or it hung up / timed out)."""


def call(sock_path: str, op: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one request, return `result`; AgentError / AgentUnreachable otherwise."""
    request = json.dumps({"op": op, **args}, separators=(",", ":")).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(request)
            buf = bytearray()
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_RESPONSE:
                    raise AgentUnreachable(f"agent at {sock_path}: response larger than {MAX_RESPONSE} bytes")
    except OSError as e:
        raise AgentUnreachable(f"agent at {sock_path}: {e.strerror or e}") from None
    line = bytes(buf).split(b"\n", 1)[0]
    if not line:
        raise AgentUnreachable(f"agent at {sock_path} closed the connection without an answer")
    try:
        resp = json.loads(line)
    except ValueError:
        raise AgentUnreachable(f"agent at {sock_path} sent malformed JSON: {line[:100]!r}") from None
    if not isinstance(resp, dict) or "ok" not in resp:
        raise AgentUnreachable(f"agent at {sock_path} sent an unexpected answer: {line[:100]!r}")
    if not resp["ok"]:
        raise AgentError(str(resp.get("error", "unknown error")))
    return resp.get("result")
