"""The process node's kube-proxy: each ClusterIP Service port, at its local address, forwarded to a ready pod.

Threads and blocking sockets: a development cluster carries a few connections at a time. A connection picks its
endpoint round-robin when it is accepted; with no ready endpoint it is closed at once (a real cluster's
"connection refused" from a Service with no endpoints).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading

log = logging.getLogger(__name__)

Address = tuple[str, int]


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class _Listener:
    def __init__(self, address: Address) -> None:
        self.address = address
        self.endpoints: list[Address] = []
        self._turn = itertools.count()
        self._socket = socket.create_server(address, reuse_port=False)
        self._socket.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"proxy {address}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        endpoints = list(self.endpoints)
        with client:
            if not endpoints:
                return
            target = endpoints[next(self._turn) % len(endpoints)]
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError as error:
                log.info("proxy %s → %s: %s", self.address, target, error)
                return
            with upstream:
                upstream.settimeout(None)
                back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
                back.start()
                _pump(client, upstream)
                back.join()

    def close(self) -> None:
        self._stop.set()
        self._socket.close()
        self._thread.join(timeout=2)


class ServiceProxy:
    def __init__(self) -> None:
        self._listeners: dict[Address, _Listener] = {}
        self._refused: set[Address] = set()

    def update(self, routes: dict[Address, list[Address]]) -> None:
        """Listen on every key (with its endpoints now), stop listening on what is gone."""
        for address in set(self._listeners) - set(routes):
            self._listeners.pop(address).close()
        for address, endpoints in routes.items():
            listener = self._listeners.get(address)
            if listener is None:
                try:
                    listener = self._listeners[address] = _Listener(address)
                except OSError as error:
                    if address not in self._refused:  # once: the node retries at every sync
                        log.warning("cannot serve %s:%s: %s", *address, error)
                        self._refused.add(address)
                    continue
            listener.endpoints = endpoints

    def close(self) -> None:
        self.update({})
