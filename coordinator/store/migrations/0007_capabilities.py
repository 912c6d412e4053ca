"""What workers offer and tasks need: devices, engines, tags (issue 16).

A task's `needs` and a worker's `offers` are bits (renderq.capabilities): the claim compares them in one test.
Tags live in two small tables keyed for the claim's lookups; the rows' `tags` columns hold the same tags as JSON
for reading. A worker registered before this keeps every engine (it was never probed), as it had before.
"""

from yoyo import step

from coordinator.store.schema import add_missing_columns, execute_ddl

__depends__ = {"0006_farm_secrets"}

COLUMNS = {
    "tasks": {
        # The scene's render engine as Blender names it ('' when the client did not say) and the device asked for
        # ('GPU', 'CPU', or '' for the file's own choice).
        "render_engine": "TEXT NOT NULL DEFAULT ''",
        "device": "TEXT NOT NULL DEFAULT ''",
        "tags": "TEXT NOT NULL DEFAULT '[]'",
        "needs": "INTEGER NOT NULL DEFAULT 0",
    },
    "workers": {
        "devices": "TEXT NOT NULL DEFAULT '[]'",
        "engines": "TEXT NOT NULL DEFAULT '[]'",
        "tags": "TEXT NOT NULL DEFAULT '[]'",
        # 1 once an admin set the worker's tags: its own (--tag) no longer replace them when it registers.
        "tags_by_admin": "INTEGER NOT NULL DEFAULT 0",
        # Every engine (renderq.capabilities.ALL_ENGINES), no GPU.
        "offers": "INTEGER NOT NULL DEFAULT 7",
    },
}

TABLES = """
CREATE TABLE IF NOT EXISTS task_tags (
    task_id INTEGER NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (task_id, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS worker_tags (
    worker_id INTEGER NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (worker_id, tag)
) WITHOUT ROWID;
"""


def add_capabilities(db) -> None:
    """Add the columns and the two tag tables."""
    add_missing_columns(db, COLUMNS)
    execute_ddl(db, TABLES)


steps = [step(add_capabilities)]
