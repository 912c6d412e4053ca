"""What every coordinator on one database must agree on: the farm's secrets (tokens, the session key), and the
news of an admin's change that their status pages show."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from .connection import StoreConnection

# The names named artists' tokens are kept under in farm_secrets: this prefix and the artist's name.
ARTIST_SECRET = "artist_token:"


class FarmQueries(StoreConnection):
    """The farm's secrets, shared by the coordinators of a PostgreSQL database."""

    def announce(self, channel: str, payload: str) -> None:
        """Tell the other coordinators on the database (and this one's other processes) listening on `channel`
        that something changed, at once. Best effort: when the database cannot be reached the change still stands,
        and their pages see it at their next poll interval anyway."""
        if not self.engine.shared:
            return
        with contextlib.suppress(*self.engine.errors):
            self.engine.notify(self.read(), channel, payload)

    def follow_announcements(self, channel: str, on_message: Callable[[str | None], None],
                             stop: threading.Event) -> None:
        """Call `on_message` with each announcement on `channel` (None: some may have been missed) until `stop` is
        set; returns at once on a database no other coordinator shares."""
        self.engine.listen(channel, on_message, stop)

    def share_secret(self, name: str, proposed: str) -> str:
        """The farm's secret `name`: `proposed`, unless another coordinator on the same database stored one first
        (then that one). On a database of one coordinator (SQLite) nothing is stored: `proposed` stays its own."""
        if not self.engine.shared:
            return proposed
        with self.transaction() as db:
            # Coordinators starting together: the primary key lets one INSERT in, the others wait for it and take
            # its value.
            db.execute("INSERT INTO farm_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                       (name, proposed))
            return db.execute("SELECT value FROM farm_secrets WHERE name = ?", (name,)).fetchone()[0]

    def add_artist_token(self, name: str, token: str) -> bool:
        """Keep a named artist's token where every coordinator on the database finds it; False (nothing changed)
        when that artist has one already."""
        with self.transaction() as db:
            row = db.execute("INSERT INTO farm_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING "
                             "RETURNING name", (ARTIST_SECRET + name, token)).fetchone()
        return row is not None

    def artist_tokens(self) -> list[tuple[str, str]]:
        """(name, token) of the named artists kept in the database (only a shared one keeps any)."""
        if not self.engine.shared:
            return []
        rows = self.read().execute("SELECT name, value FROM farm_secrets WHERE name LIKE ?", (ARTIST_SECRET + "%",))
        return [(row[0][len(ARTIST_SECRET):], row[1]) for row in rows]
