"""The agent's control socket: JSON lines over a root-only Unix socket.

Protocol (docs/architecture.md): a request `{"op": NAME, ...}` per line, a response
`{"ok": true, "result": ...}` or `{"ok": false, "error": TEXT}` per line. Handlers raise
ValueError/KeyError for bad requests; anything else is reported as an internal error and
logged, never kills the server.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from typing import Any, Callable

log = logging.getLogger("vxtap.ctlsock")

DEFAULT_DIR = "/run/vxtap"
MAX_LINE = 1 << 20
Handler = Callable[[dict[str, Any]], Any]


def netns_id(ns: str | None = None) -> int:
    """Inode of a network namespace: `ns` (a name in /run/netns or a path), or this process's.
    Two names for one namespace have the same inode; two namespaces never do."""
    if ns:
        return os.stat(ns if ns.startswith("/") else os.path.join("/run/netns", ns)).st_ino
    return os.stat("/proc/self/ns/net").st_ino


def _named_netns(ino: int) -> bool:
    """Is namespace `ino` one of the named namespaces of `ip netns` (/run/netns/*)?"""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return False
    for n in names:
        try:
            if os.stat(os.path.join("/run/netns", n)).st_ino == ino:
                return True
        except OSError:
            continue
    return False


def socket_dir(ns: str | None = None) -> str:
    """Where agents whose devices live in namespace `ns` (None: this one) put their sockets.

    A named namespace (`ip netns`, /run/netns/NAME: how one host emulates several nodes, all
    sharing one /run) gets /run/vxtap/netns-<inode>; any other namespace (a node's own, a
    container with its own /run) keeps /run/vxtap, as before (the CNI plugin's default socket
    path points there). So two agents for two emulated nodes on one host never collide, and
    `vxtap show` run inside a namespace (`ip netns exec node1 vxtap show stats`) finds the
    agent of that namespace, whether it was started inside it or with --netns node1.
    """
    ino = netns_id(ns)
    if not _named_netns(ino):
        return DEFAULT_DIR
    return os.path.join(DEFAULT_DIR, f"netns-{ino}")


def default_path(name: str, ns: str | None = None) -> str:
    """The default control socket of an agent named `name` (its first TAP) whose devices live
    in namespace `ns` (--netns; None: the agent's own namespace). One socket per agent,
    however many networks it serves."""
    return os.path.join(socket_dir(ns), f"{name}.sock")


class MissingArgument(ValueError):
    """A request lacks a required field."""


def arg(req: dict[str, Any], name: str) -> Any:
    """req[name], or a MissingArgument error that says which field and which op."""
    try:
        return req[name]
    except KeyError:
        raise MissingArgument(f"missing argument {name!r} for op {req.get('op')!r}") from None


class ControlServer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.handlers: dict[str, Handler] = {"ping": lambda a: "pong"}
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def register(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    def dispatch(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "request must be a JSON object with a string 'op'"}
        h = self.handlers.get(req["op"])
        if h is None:
            return {"ok": False, "error": f"unknown op {req['op']!r}; known: "
                                          f"{', '.join(sorted(self.handlers))}"}
        try:
            return {"ok": True, "result": h(req)}
        except MissingArgument as e:
            return {"ok": False, "error": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            return {"ok": False, "error": str(msg)}
        except Exception as e:             # never let one request kill the server
            log.exception("control op %s failed", req["op"])
            return {"ok": False, "error": f"internal error: {e}"}

    def start(self) -> None:
        d = os.path.dirname(self.path) or "."
        if os.path.dirname(d) == DEFAULT_DIR:          # a per-namespace dir: parent 0700 too
            os.makedirs(DEFAULT_DIR, mode=0o700, exist_ok=True)
        os.makedirs(d, mode=0o700, exist_ok=True)
        if os.path.lexists(self.path):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(f"{self.path} exists and is not a socket: not replacing it")
            if _alive(self.path):
                raise OSError(f"{self.path}: another agent is listening there")
            os.unlink(self.path)                 # a stale socket of an agent that died
        outer = self

        class _H(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    self._serve()
                except (BrokenPipeError, ConnectionResetError):
                    pass                # the client went away before its answer: not an error

            def _serve(self) -> None:
                while True:
                    line = self.rfile.readline(MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > MAX_LINE and not line.endswith(b"\n"):
                        # answer, then skip the rest of the line: the next one is a request
                        while line and not line.endswith(b"\n"):
                            line = self.rfile.readline(1 << 16)
                        resp: dict[str, Any] = {
                            "ok": False, "error": f"request line too long (more than {MAX_LINE} "
                                                  "bytes); one JSON object per line"}
                        self.wfile.write(json.dumps(resp).encode() + b"\n")
                        continue
                    try:
                        req = json.loads(line)
                    except ValueError as e:
                        resp = {"ok": False, "error": f"bad JSON: {e}"}
                    else:
                        resp = outer.dispatch(req)
                    try:
                        out = json.dumps(resp).encode()
                    except (TypeError, ValueError) as e:
                        log.error("control op %r returned a value that is not JSON: %s",
                                  req.get("op") if isinstance(req, dict) else None, e)
                        out = json.dumps({"ok": False,
                                          "error": f"internal error: result not JSON: {e}"}
                                         ).encode()
                    self.wfile.write(out + b"\n")

        class _Server(socketserver.ThreadingUnixStreamServer):
            request_queue_size = 128           # many CNI plugin runs at once at node start

            def handle_error(self, request: Any, client_address: Any) -> None:
                # socketserver prints a traceback to stderr; one log line instead
                log.warning("control connection failed", exc_info=True)

        old = os.umask(0o177)
        try:
            self._server = _Server(self.path, _H)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="vxtap-ctl",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            d = os.path.dirname(self.path)
            if os.path.dirname(d) == DEFAULT_DIR and os.path.basename(d).startswith("netns-"):
                try:
                    os.rmdir(d)                  # the last agent of that namespace
                except OSError:
                    pass


def _alive(path: str) -> bool:
    try:
        call(path, {"op": "ping"}, timeout=1.0)
        return True
    except OSError:
        return False


class ControlError(Exception):
    """The agent answered with an error."""


def call(path: str, req: dict[str, Any], timeout: float = 10.0) -> Any:
    """One request to the agent at `path`; returns the result or raises ControlError/OSError."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        while True:                             # a full listen queue answers EAGAIN at once
            try:
                s.connect(path)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path}: agent busy, no connection within "
                                       f"{timeout:g} s") from None
                time.sleep(0.02)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError(f"{path}: connection closed before a response")
            buf += chunk
    resp = json.loads(buf)
    if not resp.get("ok"):
        raise ControlError(resp.get("error", "unknown error"))
    return resp.get("result")
