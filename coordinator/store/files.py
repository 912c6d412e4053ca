"""The store's records of files (a task's tree, its frames' outputs) and task logs."""

from __future__ import annotations

from collections.abc import Sequence

from .connection import StoreConnection
from .task_writes import LogEnd


class FileQueries(StoreConnection):
    """Which stored blobs a task uses, and its log."""

    def task_files(self, task_id: int) -> list[dict]:
        return [dict(r) for r in self.read().execute(
            "SELECT path, sha256, size FROM task_files WHERE task_id = ? ORDER BY path", (task_id,))]

    def task_disk_bytes(self) -> dict[int, int]:
        """Bytes each task's inputs and rendered frames take (a file shared by two tasks counts for both)."""
        usage: dict[int, int] = {}
        db = self.read()
        # CAST: PostgreSQL sums 64-bit integers as numeric.
        for row in db.execute("SELECT task_id, CAST(sum(size) AS BIGINT) AS n FROM task_files GROUP BY task_id"):
            usage[row["task_id"]] = row["n"] or 0
        for row in db.execute("SELECT task_id, CAST(sum(output_size) AS BIGINT) AS n FROM frames "
                              "WHERE output_sha256 IS NOT NULL GROUP BY task_id"):
            usage[row["task_id"]] = usage.get(row["task_id"], 0) + (row["n"] or 0)
        return usage

    def referenced_blobs(self, hashes: Sequence[str]) -> set[str]:
        """Those of the hashes a stored task uses: a file of its tree, a frame's output or preview, or (tasks from
        before task trees) its .blend while its files are kept. The orphan sweep deletes only the others."""
        listed = self.engine.in_list(":h")
        rows = self.read().execute(
            f"SELECT sha256 FROM task_files WHERE sha256 {listed} UNION "
            f"SELECT output_sha256 FROM frames WHERE output_sha256 {listed} UNION "
            f"SELECT preview_sha256 FROM frames WHERE preview_sha256 {listed} UNION "
            "SELECT blend_sha256 FROM tasks WHERE main_file = '' AND files_deleted_at IS NULL "
            f"AND blend_sha256 {listed}",
            {"h": self.engine.list_value(hashes)},
        ).fetchall()
        return {row[0] for row in rows}

    def forget_task_files(self, task_id: int, now: float) -> list[str]:
        """Drop an ended task's file records; returns the hashes no other task still uses (safe to delete)."""
        with self.transaction() as db:
            hashes = {r["sha256"] for r in db.execute("SELECT sha256 FROM task_files WHERE task_id = ?", (task_id,))}
            for column in ("output_sha256", "preview_sha256"):
                hashes |= {r[0] for r in db.execute(
                    f"SELECT {column} FROM frames WHERE task_id = ? AND {column} IS NOT NULL", (task_id,))}
            db.execute("DELETE FROM task_files WHERE task_id = ?", (task_id,))
            db.execute("UPDATE frames SET output_sha256 = NULL, output_size = NULL, preview_sha256 = NULL "
                       "WHERE task_id = ?", (task_id,))
            db.execute("UPDATE tasks SET files_deleted_at = ? WHERE task_id = ?", (now, task_id))
            unused = []
            for sha256 in sorted(hashes):
                used = db.execute(
                    "SELECT 1 FROM task_files WHERE sha256 = ? UNION ALL "
                    "SELECT 1 FROM frames WHERE output_sha256 = ? UNION ALL "
                    "SELECT 1 FROM frames WHERE preview_sha256 = ? LIMIT 1", (sha256, sha256, sha256)).fetchone()
                if used is None:
                    unused.append(sha256)
            return unused

    # -- logs -----------------------------------------------------------------------------------------------------

    def append_log(self, task_id: int, text: str) -> int | LogEnd:
        """Append to a task's log; returns the log's new size in bytes (in a batch, a LogEnd: known once the batch
        has written its task rows, see task_writes.py)."""
        writes = self.task_writes()
        if writes is not None:
            return writes.append_log(task_id, text)
        size = len(text.encode("utf-8"))
        with self.transaction() as db:
            # The task's row is updated first: it stays locked until the COMMIT, so appends to one log (from any
            # thread or coordinator) take turns and never get the same offset.
            end = db.execute("UPDATE tasks SET log_size = log_size + ? WHERE task_id = ? RETURNING log_size",
                             (size, task_id)).fetchone()["log_size"]
            if size:
                db.execute('INSERT INTO logs (task_id, "offset", size, text) VALUES (?, ?, ?, ?)',
                           (task_id, end - size, size, text))
            return end

    def read_log(self, task_id: int, offset: int, max_bytes: int) -> tuple[bytes, int]:
        """Log bytes from offset, at most max_bytes (cut between UTF-8 characters, at least one character), and the
        log's total size."""
        db = self.read()
        total = db.execute("SELECT log_size FROM tasks WHERE task_id = ?", (task_id,)).fetchone()["log_size"]
        if max_bytes <= 0:
            return b"", total
        # From the chunk holding `offset` on, found by the primary key rather than by reading every chunk before it.
        # "offset" is quoted: PostgreSQL reserves the word.
        rows = db.execute(
            'SELECT "offset", text FROM logs WHERE task_id = ? AND "offset" >= coalesce('
            '(SELECT max("offset") FROM logs WHERE task_id = ? AND "offset" <= ?), 0) ORDER BY "offset"',
            (task_id, task_id, offset),
        )
        pieces: list[bytes] = []
        taken = 0
        for row in rows:
            chunk = row["text"].encode("utf-8")[max(0, offset - row["offset"]):]
            pieces.append(chunk)
            taken += len(chunk)
            if taken >= max_bytes:
                break
        data = b"".join(pieces)
        if len(data) > max_bytes:
            end = max_bytes
            while 0 < end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a character
                end -= 1
            data = data[:end or _utf8_length(data)]
        return data, total


def _utf8_length(data: bytes) -> int:
    """Bytes of the first UTF-8 character in data (a reader always gets at least one)."""
    end = 1
    while end < len(data) and data[end] & 0xC0 == 0x80:
        end += 1
    return end
