"""An HTTP proxy on 127.0.0.1 in front of the moto S3 server that injects faults:
transient 503s (S3's SlowDown) on the first N matching requests, slow responses, and
permanent 403s while a rule is on. Real S3 protocol end to end: only the transport is
tampered with."""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


@dataclass
class Rule:
    method: str
    path: str  # regex on the request path
    transient: int = 0  # fail the first N matches with 503
    delay: float = 0.0  # seconds to wait before answering a match
    permanent: bool = False  # 403 every match while on
    hits: int = 0


@dataclass
class FaultyProxy:
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    injected: int = 0

    def __post_init__(self) -> None:
        proxy = self
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.fault_for(self.command, self.path)
                if fault is not None:
                    status, payload = fault
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = self.headers.get("Host", "")
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    # a HEAD answer keeps upstream's Content-Length: it is the object's size
                    if k.lower() in ("transfer-encoding", "connection") or (
                        k.lower() == "content-length" and self.command != "HEAD"
                    ):
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fault_for(self, method: str, path: str) -> tuple[int, bytes] | None:
        with self.lock:
            for rule in self.rules:
                if rule.method == method and re.search(rule.path, path):
                    rule.hits += 1
                    if rule.delay:
                        time.sleep(rule.delay)
                    if rule.permanent:
                        self.injected += 1
                        return 403, _DENIED
                    if rule.hits <= rule.transient:
                        self.injected += 1
                        return 503, _SLOW_DOWN
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
