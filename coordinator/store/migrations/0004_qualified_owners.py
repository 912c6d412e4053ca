"""Turn the owners of tasks submitted before owners were role-qualified into identities.

A named artist's tasks recorded the bare name ("alice"); now their owner is "artist:alice", so that no artist name
can equal a role's identity. "admin", "artist" and "anonymous" stay as they are: they may also have been named
artists' tasks, which cannot be told apart now, and the role keeps them (the safe side: an artist with such a name
loses the right to cancel those tasks, an admin still may).

Before numbered migrations this ran as "qualified_owners", recorded in a `migrations` table. Owners that already
hold a ':' are identities (an artist's name may not contain one), so running it twice changes nothing.
"""

from yoyo import step

__depends__ = {"0003_added_indexes"}


def qualify_owners(db) -> None:
    """Prefix the bare artist names with "artist:"."""
    db.cursor().execute(
        "UPDATE tasks SET owner = 'artist:' || owner "
        "WHERE owner NOT IN ('', 'admin', 'artist', 'anonymous', 'worker') AND owner NOT LIKE '%:%'")
    # The record of the days before numbered migrations: yoyo keeps it now.
    db.cursor().execute("DROP TABLE IF EXISTS migrations")


steps = [step(qualify_owners)]
