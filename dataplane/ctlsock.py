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


def default_path(tap: str) -> str:
    return os.path.join(DEFAULT_DIR, f"{tap}.sock")


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
