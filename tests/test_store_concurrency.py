"""Group commit under concurrency: every acknowledged write is there, every failed one is wholly undone, and the WAL
stays bounded when the coordinator checkpoints it."""

from __future__ import annotations

import os
import random
import sqlite3
import threading

from coordinator.store import Store


class Boom(Exception):
    """A failure raised inside one writer's transaction."""


def test_concurrent_writers_share_commits_without_losing_or_leaking_writes(tmp_path):
    store = Store(str(tmp_path / "db.sqlite3"))
    with store.transaction() as db:
        db.execute("CREATE TABLE scratch (writer INTEGER, n INTEGER, part INTEGER)")
    acknowledged: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        chance = random.Random(number)
        try:
            for n in range(40):
                fail = chance.random() < 0.2
                try:
                    with store.transaction(durable=chance.random() < 0.7) as db:
                        # Two rows per write: a rollback must take both or neither.
                        db.execute("INSERT INTO scratch VALUES (?, ?, 1)", (number, n))
                        db.execute("INSERT INTO scratch VALUES (?, ?, 2)", (number, n))
                        if fail:
                            raise Boom()
                except Boom:
                    continue
                with lock:
                    acknowledged.append((number, n))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    with store.transaction():
        pass  # the last non-durable writes are committed with this one
    check = sqlite3.connect(str(tmp_path / "db.sqlite3"))
    rows = check.execute("SELECT writer, n, COUNT(*) FROM scratch GROUP BY writer, n").fetchall()
    assert all(count == 2 for _, _, count in rows)
    assert sorted((writer, n) for writer, n, _ in rows) == sorted(acknowledged)
    assert len(acknowledged) > 400


def test_checkpoints_keep_the_wal_bounded(tmp_path):
    path = str(tmp_path / "db.sqlite3")
    store = Store(path)
    store.checkpoint_in_background()
    with store.transaction() as db:
        db.execute("CREATE TABLE scratch (payload BLOB)")
    # About 26 MB written in all; without the checkpoints (autocheckpoint is off) the WAL would hold all of it.
    for _ in range(20):
        for _ in range(20):
            with store.transaction() as db:
                db.execute("INSERT INTO scratch VALUES (?)", (os.urandom(64 * 1024),))
        store.checkpoint()
    assert os.path.getsize(path + "-wal") < 12 * 1024 * 1024
