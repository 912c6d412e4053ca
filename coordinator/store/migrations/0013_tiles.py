"""A still split into tiles (renderq.tiles): its tiles and its merge job are frame rows of kinds 'tile' and 'merge',
leased, fenced and retried like a frame.

- tasks.tiles: "CxR" (columns x rows) for a tiled still, '' for any other task. The tiles are its frames 1 to C*R;
  the still's own frame number stays the task's frame_start. The merge job (frame renderq.model.MERGE_FRAME) is
  added once every tile is done.
"""

from yoyo import step

from coordinator.store.schema import add_missing_columns

__depends__ = {"0010_worker_history"}

COLUMNS = {"tasks": {"tiles": "TEXT NOT NULL DEFAULT ''"}}


def add_tiles_column(db) -> None:
    """Add the task's tiling."""
    add_missing_columns(db, COLUMNS)


steps = [step(add_tiles_column)]
