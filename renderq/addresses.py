"""The coordinator addresses a client may use, which of them it uses now, and its idle connections to it.

A cluster runs several coordinators over one database; a worker, the CLI or the add-on is given their addresses as
one comma-separated list ("http://farm-a:5000,http://farm-b:5000") and keeps using the one that answered last,
moving to the next when it stops answering. One address, the usual case, is a list of one.
"""

from __future__ import annotations

import dataclasses
import http.client
import select
import socket
import threading
import urllib.parse

__all__ = ["Address", "Addresses", "IdleConnections", "parse_addresses"]


@dataclasses.dataclass(frozen=True)
class Address:
    """One coordinator: its URL as given (normalized), and the parts a connection needs."""

    url: str
    scheme: str
    netloc: str
    prefix: str


def parse_addresses(text: str) -> list[Address]:
    """The addresses in `text` (comma-separated; `http://` assumed when no scheme is given); ValueError with a
    sentence naming the bad one otherwise."""
    addresses = []
    for item in text.split(","):
        url = item.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the coordinator address {url!r} is not an http:// or https:// URL")
        addresses.append(Address(url, parts.scheme, parts.netloc, parts.path.rstrip("/")))
    if not addresses:
        raise ValueError(f"no coordinator address in {text!r}")
    return addresses


class Addresses:
    """A client's coordinator addresses and the one in use; safe to share between threads."""

    def __init__(self, text: str) -> None:
        self.all = parse_addresses(text)
        self._current = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> Address:
        """The address calls go to now."""
        return self.all[self._current]

    def move_on(self, failed: Address) -> Address:
        """`failed` did not answer: the next address (unless another thread moved on already), now current."""
        with self._lock:
            if self.all[self._current] == failed:
                self._current = (self._current + 1) % len(self.all)
            return self.all[self._current]


class IdleConnections:
    """A client's idle keep-alive connections, shared by its threads: a call takes one to its coordinator (or a new
    one), and gives it back once its answer is read. At most `most` are kept, all to the address in use."""

    def __init__(self, timeout: float, blocksize: int, most: int) -> None:
        self.timeout = timeout
        self.blocksize = blocksize
        self.most = most
        self._idle: list[tuple[Address, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def take(self, address: Address) -> http.client.HTTPConnection:
        """An idle connection to `address`, or a new one (connected by its first request)."""
        while True:
            with self._lock:
                conn = self._idle.pop()[1] if self._idle and self._idle[-1][0] == address else None
            if conn is None:
                kind = http.client.HTTPSConnection if address.scheme == "https" else http.client.HTTPConnection
                conn = kind(address.netloc, timeout=self.timeout, blocksize=self.blocksize)
                conn.renderq_address = address  # type: ignore[attr-defined]  # which address it goes back as
                return conn
            if conn.sock is not None and _closed_by_peer(conn.sock):
                conn.close()  # the coordinator let it go while it was idle: try the next
                continue
            return conn

    def give_back(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse | None,
                  current: Address) -> None:
        """Keep `conn` for a later call if its answer was read to the end and it goes to the address in use
        (`current`); else close it."""
        if response is None or not response.isclosed() or conn.sock is None:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < self.most and getattr(conn, "renderq_address", None) == current:
                self._idle.append((current, conn))
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket was closed by the other side: it then reads as ready (at end of file)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
