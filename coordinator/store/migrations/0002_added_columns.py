"""Columns added after the first release, before numbered migrations: a database from then has some of them.

Each is added only where it is missing, so this step also brings any earlier database up to date.
"""

from yoyo import step

from coordinator.store.schema import add_missing_columns

__depends__ = {"0001_tables"}

COLUMNS = {
    "tasks": {
        "main_file": "TEXT NOT NULL DEFAULT ''",
        "blender_version": "TEXT NOT NULL DEFAULT ''",
        "blender_version_key": "INTEGER NOT NULL DEFAULT 0",
        "blender_version_exact": "INTEGER NOT NULL DEFAULT 0",
        "missing_assets": "TEXT NOT NULL DEFAULT '[]'",
        "files_count": "INTEGER NOT NULL DEFAULT 0",
        "files_bytes": "INTEGER NOT NULL DEFAULT 0",
        "files_deleted_at": "REAL",
        # Seconds; NULL: no limit on one frame's render time.
        "frame_timeout": "REAL",
        "no_progress_timeout": "REAL NOT NULL DEFAULT 600",
        "needs_python": "INTEGER NOT NULL DEFAULT 0",
        "owner": "TEXT NOT NULL DEFAULT ''",
    },
    "workers": {
        "blender_version_key": "INTEGER NOT NULL DEFAULT 0",
        "allows_python": "INTEGER NOT NULL DEFAULT 0",
    },
    "frames": {
        # The coordinator's own time after which a frame still 'rendering' counts as timed out (NULL: never).
        "render_deadline": "REAL",
        # renderq.paths.collision_key(output): two frames of a task may not have outputs with the same key.
        "output_key": "TEXT",
    },
    "frame_failures": {
        # 1 once the frame was retried: the failure no longer counts towards marking the frame failed.
        "cleared": "INTEGER NOT NULL DEFAULT 0",
        # The lease the worker reported the failure under, so a repeated report is recognised (NULL: timed out).
        "lease_id": "TEXT",
    },
}


def add_columns(db) -> None:
    """Add the columns a table lacks, in the database's engine."""
    add_missing_columns(db, COLUMNS)


steps = [step(add_columns)]
