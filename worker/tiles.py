"""A tiled still on the worker (renderq.tiles): what Blender is asked to render for a tile, and the merge job.

A tile's lease (kind "tile") renders the still's frame with only that tile inside the render border
(frame_script.py). The merge job (kind "merge") is leased and fenced like the encode job, and reuses its parts
(worker/encode.py's EncodeJob and tool runner): GET /video_frames lists the done tiles, each is fetched, and a
Blender process (merge_script.py, no .blend opened) copies each tile's rectangle into one image in the tiles' own
format, delivered as the job's file under the frame's own name.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from renderq.model import FRAME_KIND_TILE, FrameResult, Lease
from worker.encode import EncodeFailed, EncodeJob, run_tool
from worker.tile_rects import untiled_name

__all__ = ["blender_frame", "merge_tiles", "tile_request"]

MERGE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "merge_script.py")
MERGE_MARK = "RENDERQ_MERGED "
# How long fetching nothing but merging may take in Blender, when the task sets no frame timeout.
MERGE_TIMEOUT_SECONDS = 600.0


def blender_frame(lease: Lease) -> int:
    """The frame Blender renders for the lease: a tile's still's own frame number, else the lease's frame."""
    return int(lease.tile["frame"]) if lease.kind == FRAME_KIND_TILE and lease.tile else lease.frame


def tile_request(lease: Lease) -> dict[str, Any]:
    """The session's render options for the lease: `tile` for a tile, nothing for a frame."""
    if lease.kind != FRAME_KIND_TILE or not lease.tile:
        return {}
    return {"tile": {"columns": lease.tile["columns"], "rows": lease.tile["rows"], "number": lease.frame}}


def merge_tiles(job: EncodeJob) -> FrameResult:
    """Merge the lease's still from its done tiles; a FrameResult whose output is the whole image, or a failure."""
    lease = job.lease
    started, begun = time.time(), time.monotonic()
    folder = os.path.join(job.work_dir, f"merge-{lease.task_id}")
    try:
        output = _merge(job, folder)
    except EncodeFailed as exc:
        error, _, tail = str(exc).partition("\n")
        return FrameResult(frame=lease.frame, ok=False, error=error, log_tail=tail, aborted=job.should_stop())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return FrameResult(frame=lease.frame, ok=True, output_path=output, started_at=started, ended_at=time.time(),
                       render_seconds=time.monotonic() - begun)


def _merge(job: EncodeJob, folder: str) -> str:
    tiling = job.lease.tile or {}
    columns, rows = int(tiling.get("columns") or 0), int(tiling.get("rows") or 0)
    tiles = [dict(item) for item in job.list_frames()]
    if columns * rows < 2 or len(tiles) != columns * rows:
        raise EncodeFailed(f"the still has {len(tiles)} rendered tiles, not the {columns}x{rows} it was split into")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    # An EXR is saved with the scene's output settings, so Blender opens the task's file for it (merge_script.py).
    is_exr = str(tiles[0].get("output") or "").lower().endswith(".exr")
    blend = [job.blend_path()] if is_exr else []
    command = [job.blender, "-b", "-Y", "--factory-startup", *blend, "--python-exit-code", "1", "--python",
               MERGE_SCRIPT, "--", "--columns", str(columns), "--rows", str(rows),
               "--scene", str(job.lease.settings.get("scene") or "")]
    for item in tiles:
        if job.should_stop():
            raise EncodeFailed("the merge was stopped")
        name = os.path.basename(str(item.get("output") or "tile.png"))
        path = os.path.join(folder, f"{int(item['frame'])}-{name}")
        job.download(str(item["sha256"]), path)
        command += ["--tile", str(int(item["frame"])), path]
    job.on_log_line(f"tiles: fetched {len(tiles)} tiles, merging them")
    output = os.path.join(job.output_dir, untiled_name(os.path.basename(str(tiles[0].get("output") or "still.png"))))
    command += ["--output", output]
    text = run_tool(command, job.should_stop, job.lease.frame_timeout or MERGE_TIMEOUT_SECONDS, "Blender")
    if MERGE_MARK + output not in text or not os.path.isfile(output):
        raise EncodeFailed("Blender ended without writing the merged still\n" + text[-2000:])
    return output
