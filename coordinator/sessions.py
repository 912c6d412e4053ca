"""The status page's login sessions, recorded in the database so that logging out ends a session for good.

The session cookie is signed, so nobody can forge one, but a signed cookie alone stays valid until it expires: a
copy taken before logout would keep working. Each login therefore gets a random session id, stored here (as a hash,
with its expiry); a cookie counts only while its id is stored, and logging out deletes it. Being in the database,
the record survives a coordinator restart.
"""

from __future__ import annotations

import hashlib
import secrets

from .store import Store

class LoginSessions:
    """Live login sessions: created at login, checked on every cookie request, deleted at logout or expiry."""

    def __init__(self, store: Store) -> None:
        # Its table login_sessions is made by the store's migrations.
        self._store = store

    def start(self, now: float, lifetime_seconds: float) -> str:
        """Record a new session that ends `lifetime_seconds` from now; returns its id (for the cookie)."""
        session_id = secrets.token_urlsafe(32)
        with self._store.transaction() as db:
            # Expired sessions are dropped here, so the table holds no more than the sessions still valid.
            db.execute("DELETE FROM login_sessions WHERE expires_at <= ?", (now,))
            db.execute("INSERT INTO login_sessions (session_hash, expires_at) VALUES (?, ?)",
                       (_hash(session_id), now + lifetime_seconds))
        return session_id

    def is_live(self, session_id: str, now: float) -> bool:
        """True while the session was started here, not ended and not expired."""
        row = self._store.read().execute(
            "SELECT 1 FROM login_sessions WHERE session_hash = ? AND expires_at > ?", (_hash(session_id), now)
        ).fetchone()
        return row is not None

    def end(self, session_id: str) -> None:
        """Forget the session: its cookie, and every copy of it, no longer logs anyone in."""
        with self._store.transaction() as db:
            db.execute("DELETE FROM login_sessions WHERE session_hash = ?", (_hash(session_id),))


def _hash(session_id: str) -> str:
    # Only a hash is stored: a copy of the database does not hold ids that would work in a cookie.
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()
