"""The coordinator addresses a client may use, and which of them it uses now.

A cluster runs several coordinators over one database; a worker, the CLI or the add-on is given their addresses as
one comma-separated list ("http://farm-a:5000,http://farm-b:5000") and keeps using the one that answered last,
moving to the next when it stops answering. One address, the usual case, is a list of one.
"""

from __future__ import annotations

import dataclasses
import threading
import urllib.parse

__all__ = ["Address", "Addresses", "parse_addresses"]


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
