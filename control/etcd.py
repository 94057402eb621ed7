"""Connecting to etcd with `pyetcd` (etcd-sdk-python): URLs tried in order, TLS, user/password.

pyetcd marks an endpoint "failed" for `time_retry` seconds after one error (300 s by default) and
refuses to use it meanwhile, and authenticates only when the client is built. So a (re)connection
is always a fresh client per URL, with `time_retry=0`, and callers drop the client on any
connection error (`ETCD_ERRORS`) and call `connect()` again.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

import grpc  # type: ignore[import-untyped]
import pyetcd  # type: ignore[import-untyped]
from pyetcd import exceptions as etcd_exc  # type: ignore[import-untyped]

# Everything that means "etcd (or the path to it) is not usable right now".
ETCD_ERRORS: tuple[type[BaseException], ...] = (
    etcd_exc.Etcd3Exception, grpc.RpcError, OSError,
)

# Message limits, set on purpose: lists are paged (control/sync.py, 5,000 keys per page, about
# 1.2 MB; etcd 3.4 walks the rest of the range for every page, so much smaller pages make a
# 100,000-key list slow: 2.7 s at 1,000 per page, 0.4 s at 5,000), so a response only nears the limit if values are huge; etcd refuses requests over
# 1.5 MiB by default (--max-request-bytes), so a single key/value always fits, and a page that
# does not is asked again with half the keys. The gRPC default (4 MiB) made the unpaged list
# fail at ~18,000 endpoints.
MAX_RECEIVE_BYTES = 16 * 1024 * 1024
MAX_SEND_BYTES = 2 * 1024 * 1024

# gRPC keepalive so a silently dead peer is noticed; etcd's default minimum ping interval is 5 s.
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),   # etcd answers idle pings with GOAWAY
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class EtcdUrl:
    secure: bool
    host: str
    port: int

    def __str__(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"


def parse_urls(text: str) -> list[EtcdUrl]:
    """"http://127.0.0.1:2379,https://[::1]:2379" -> EtcdUrls, in order."""
    urls: list[EtcdUrl] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        u = urllib.parse.urlsplit(part)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"etcd URL {part!r}: scheme must be http or https")
        if not u.hostname:
            raise ValueError(f"etcd URL {part!r}: missing host")
        try:
            port = u.port or 2379
        except ValueError:
            raise ValueError(f"etcd URL {part!r}: bad port") from None
        if u.path not in ("", "/") or u.query or u.fragment:
            raise ValueError(f"etcd URL {part!r}: must be scheme://host[:port]")
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        urls.append(EtcdUrl(u.scheme == "https", host, port))
    if not urls:
        raise ValueError("no etcd URL given")
    return urls


@dataclass(frozen=True)
class EtcdSettings:
    urls: tuple[EtcdUrl, ...]
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = 5.0           # per RPC, and for creating a watch

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("no etcd URL given")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("etcd client certificate and key must be given together")
        if (self.username is None) != (self.password is None):
            raise ValueError("etcd username and password must be given together")
        tls_files = self.cafile or self.certfile
        if tls_files and not any(u.secure for u in self.urls):
            raise ValueError("etcd TLS files given but no etcd URL is https://")
        if self.timeout <= 0:
            raise ValueError(f"etcd timeout {self.timeout} must be > 0")

    @classmethod
    def from_text(cls, urls: str, **kw: object) -> EtcdSettings:
        return cls(urls=tuple(parse_urls(urls)), **kw)  # type: ignore[arg-type]

    def _credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()
        return grpc.ssl_channel_credentials(root_certificates=read(self.cafile),
                                            private_key=read(self.keyfile),
                                            certificate_chain=read(self.certfile))

    def client_for(self, url: EtcdUrl) -> pyetcd.MultiEndpointEtcd3Client:
        """A client bound to one URL. Authenticates now if a username is set (may raise)."""
        creds = self._credentials() if url.secure else None
        ep = pyetcd.Endpoint(url.host.strip("[]"), url.port, secure=url.secure, creds=creds,
                             time_retry=0, opts=_GRPC_OPTIONS)
        try:
            client = pyetcd.MultiEndpointEtcd3Client(endpoints=[ep], timeout=self.timeout,
                                                     user=self.username, password=self.password)
        except BaseException:
            ep.close()
            raise
        if not url.secure:
            # gRPC refuses call credentials on an insecure channel; pyetcd also sends the auth
            # token as plain metadata, which is what etcd reads, so drop the call credentials.
            client.call_credentials = None
        return client


def connect(settings: EtcdSettings, probe_key: str) -> tuple[pyetcd.MultiEndpointEtcd3Client, EtcdUrl]:
    """Try each URL in order; the first that answers a read of `probe_key` wins.

    Raises the last error (one of ETCD_ERRORS) if none answers.
    """
    last: BaseException | None = None
    for url in settings.urls:
        client = None
        try:
            client = settings.client_for(url)
            client.get_response(probe_key)
            return client, url
        except ETCD_ERRORS as e:
            last = e
            if client is not None:
                close_quietly(client)
    assert last is not None
    raise last


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with `prefix` (etcd's rule:
    the prefix with its last byte incremented, trailing 0xff bytes dropped)."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\0"                   # all keys
    b[-1] += 1
    return bytes(b)


def close_quietly(client: pyetcd.MultiEndpointEtcd3Client | None) -> None:
    if client is None:
        return
    try:
        client.close()
    except Exception:  # noqa: BLE001, S110 -- closing a broken channel must not mask the cause
        pass


def describe(err: BaseException) -> str:
    """A one-line description of an etcd error (gRPC errors are multi-line by default)."""
    if isinstance(err, grpc.RpcError):
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else None
        return f"{code.name if code else 'RPC error'}: {details or ''}".strip()
    text = str(err) or type(err).__name__
    return text.splitlines()[0]
