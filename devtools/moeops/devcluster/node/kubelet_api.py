"""The part of the kubelet's HTTPS API that `kubectl logs` reaches through the API server: `/containerLogs`.

The API server dials the node's InternalIP at `daemonEndpoints.kubeletEndpoint.Port` over TLS (it checks the
certificate only when given `--kubelet-certificate-authority`, which the local control plane is not), so a
self-signed certificate made with openssl at start-up serves. Supported: `follow`, `tailLines`, `limitBytes` and
`previous`; logs are the files the containers wrote (the node keeps each run's log as `<restarts>.log`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)
_PATH = re.compile(r"^/containerLogs/(?P<ns>[^/]+)/(?P<pod>[^/]+)/(?P<container>[^/]+)$")

# (namespace, pod, container, previous) → the log file, and whether its container may still write to it.
LogFinder = Callable[[str, str, str, bool], tuple[Path, Callable[[], bool]] | None]


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / "kubelet.crt", folder / "kubelet.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "365", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)  # fmt: skip
    return cert, key


def tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class _Handler(BaseHTTPRequestHandler):
    finder: LogFinder

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        match = _PATH.match(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if not match:
            self.send_error(404, "only /containerLogs is served by the process node")
            return
        found = self.finder(match["ns"], match["pod"], match["container"], query.get("previous") == "true")
        if found is None:
            self.send_error(404, f"no logs for container {match['container']!r} of pod {match['pod']!r}")
            return
        path, alive = found
        data = path.read_bytes()
        if "tailLines" in query:
            data = tail(data, int(query["tailLines"]))
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"])]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(data)
        if query.get("follow") == "true":
            self._follow(path, alive)

    def _follow(self, path: Path, alive: Callable[[], bool]) -> None:
        with path.open("rb") as handle, contextlib.suppress(OSError):
            handle.seek(0, 2)
            while True:
                chunk = handle.read()
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                elif not alive():
                    return
                else:
                    time.sleep(0.2)


class KubeletApi:
    def __init__(self, state_dir: Path, name: str, finder: LogFinder) -> None:
        cert, key = self_signed(state_dir, name)
        handler = type("Handler", (_Handler,), {"finder": staticmethod(finder)})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="kubelet api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
