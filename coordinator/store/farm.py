"""What every coordinator on one database must agree on: the farm's secrets (tokens, the session key)."""

from __future__ import annotations

from .connection import StoreConnection


class FarmQueries(StoreConnection):
    """The farm's secrets, shared by the coordinators of a PostgreSQL database."""

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
