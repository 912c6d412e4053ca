"""Numbered schema migrations: a new database gets every one, recorded; a database of any earlier coordinator
(before numbered migrations) is upgraded in place, its rows kept, to exactly the schema a new one has."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from coordinator.store import Store
from coordinator.store.schema import MIGRATIONS_DIR, applied_migrations

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ALL_MIGRATIONS = sorted(os.path.splitext(name)[0] for name in os.listdir(MIGRATIONS_DIR)
                        if name.endswith((".sql", ".py")))


def database_from(fixture: str, path: str) -> str:
    """A database file made from a fixture dump of an earlier coordinator's database."""
    with open(os.path.join(FIXTURES, fixture), encoding="utf-8") as handle:
        script = handle.read()
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()
    return path


def schema_of(path: str) -> dict[str, object]:
    """The tables with their columns (name, type, not null, default) and the indexes with their SQL."""
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name NOT LIKE '%yoyo%' ORDER BY name")]
    schema: dict[str, object] = {t: sorted(tuple(r[1:5]) for r in db.execute(f"PRAGMA table_info({t})"))
                                 for t in tables}
    schema["indexes"] = sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                          "AND sql IS NOT NULL AND tbl_name NOT LIKE '%yoyo%'"))
    db.close()
    return schema


def new_database(tmp_path) -> str:
    """A database made by this coordinator from nothing: the schema an upgraded one must equal."""
    path = str(tmp_path / "reference.sqlite3")
    Store(path).close()
    return path


def test_a_new_database_gets_every_migration_once(tmp_path):
    path = str(tmp_path / "new.sqlite3")
    store = Store(path)
    assert store.migrations_applied == ALL_MIGRATIONS
    assert applied_migrations(store.read()) == ALL_MIGRATIONS
    store.close()
    again = Store(path)
    assert again.migrations_applied == []
    assert applied_migrations(again.read()) == ALL_MIGRATIONS


def test_an_early_database_is_upgraded_in_place(tmp_path):
    path = database_from("store_early.sql", str(tmp_path / "early.sqlite3"))
    store = Store(path)
    assert store.migrations_applied == ALL_MIGRATIONS
    assert schema_of(path) == schema_of(new_database(tmp_path))
    task = store.get_task(1, detail=True)
    assert task is not None and task["name"] == "early" and task["missing_assets"] == []
    assert task["owner"] == "" and task["main_file"] == ""  # columns the early coordinator did not have
    assert store.frame_counts(1) == {"queued": 2}
    assert store.get_worker(name="node-1")["allows_python"] == 0


def test_the_last_database_before_numbered_migrations_keeps_its_owners(tmp_path):
    path = database_from("store_main.sql", str(tmp_path / "main.sqlite3"))
    store = Store(path)
    assert store.migrations_applied == ALL_MIGRATIONS
    assert schema_of(path) == schema_of(new_database(tmp_path))
    # The owner migration had run as "qualified_owners": running it again as 0004 changes nothing.
    assert [t["owner"] for t in store.list_tasks()] == ["admin", "artist:bob"]
    tables = {r[0] for r in store.read().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "migrations" not in tables  # the old record is folded into yoyo's
    assert store.task_files(1) == [{"path": "bob.blend", "sha256": "b" * 64, "size": 10}]


def test_bare_owners_of_an_older_database_become_artist_identities(tmp_path):
    path = database_from("store_main.sql", str(tmp_path / "main.sqlite3"))
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE tasks SET owner = 'bob' WHERE task_id = 1")
        db.execute("DROP TABLE migrations")
    db.close()
    assert [t["owner"] for t in Store(path).list_tasks()] == ["admin", "artist:bob"]


def test_a_coordinator_serves_an_early_database_after_upgrading_it(farm):
    os.makedirs(farm.data_dir)
    database_from("store_early.sql", os.path.join(farm.data_dir, "renderq.sqlite3"))
    farm.start_coordinator()
    task = farm.api.task(1)
    assert task["name"] == "early" and task["status"] == "queued"
    assert "node-1" in farm.api.workers()
    farm.coordinator.stop()
    farm.start_coordinator()  # a second start applies nothing and still serves it
    assert farm.api.task(1)["name"] == "early"
    db = sqlite3.connect(os.path.join(farm.data_dir, "renderq.sqlite3"))
    assert [r[0] for r in db.execute("SELECT count(*) FROM _yoyo_migration")] == [len(ALL_MIGRATIONS)]
    db.close()


def test_a_lock_left_by_a_coordinator_killed_mid_migration_does_not_stop_the_next_start(tmp_path):
    path = str(tmp_path / "db.sqlite3")
    Store(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, '2026-01-01', 99999)")
        db.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0004_qualified_owners'")
    db.close()
    started = time.monotonic()
    assert Store(path).migrations_applied == ["0004_qualified_owners"]
    assert time.monotonic() - started < 5  # yoyo would wait 10 s for the lock, then refuse


@pytest.mark.both_databases
def test_a_database_at_0008_gets_0009_after_it_and_keeps_its_worker(database, tmp_path, monkeypatch):
    """0007 and 0008 (capabilities, previews) were released before 0009 (video): a database that had them gets 0009
    alone, after them, on SQLite and PostgreSQL, and a worker registered before it keeps what it offered."""
    import shutil

    from coordinator.store import schema

    before = tmp_path / "migrations_before_video"
    # The migrations released with 0008: those numbered after it came later.
    later = [m for m in ALL_MIGRATIONS if m >= "0009"]
    shutil.copytree(schema.MIGRATIONS_DIR, before, ignore=shutil.ignore_patterns(*(m + ".*" for m in later),
                                                                                  "__pycache__"))
    monkeypatch.setattr(schema, "MIGRATIONS_DIR", before)
    store = Store(database)
    assert store.migrations_applied == [m for m in ALL_MIGRATIONS if m not in later]
    with store.transaction() as db:  # as that coordinator registered it (this one's upsert knows video_encoders)
        worker_id = db.execute(
            "INSERT INTO workers (name, host, blender_version, blender_version_key, cpu_count, registered_at, "
            "last_seen, offers) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING worker_id",
            ("old", "host", "3.4.1", 304, 2, time.time(), time.time(), 3)).fetchone()[0]
    store.close()

    monkeypatch.undo()
    store = Store(database)
    try:
        assert store.migrations_applied == later and later[0] == "0009_video"
        assert applied_migrations(store.read())[-len(later) - 2:] == ["0007_capabilities", "0008_previews", *later]
        worker = store.get_worker(worker_id)
        assert (worker["offers"], worker["video_encoders"]) == (3, "")
    finally:
        store.close()
