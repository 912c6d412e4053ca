"""Setting a rendered file (and its preview) aside for delivery: checked to be a plain file of the task's output
folder, and renamed so that a later render of the same frame (after its lease was lost) cannot overwrite it."""

from __future__ import annotations

import logging
import os

from renderq.local_files import remove_quietly
from worker.cache import BlendCache, CacheError
from worker.lease import Lease

__all__ = ["OutputSetAside", "SetAsideError"]

log = logging.getLogger(__name__)


class SetAsideError(Exception):
    """The rendered file may not be sent; one sentence, reported as the frame's failure."""


class OutputSetAside:
    """Renames the files the loop hands to the reporter; numbers them so each waits under a name of its own."""

    def __init__(self, cache: BlendCache) -> None:
        self.cache = cache
        self._outputs_sent = 0  # numbers the names rendered files wait under

    def output(self, lease: Lease, path: str | None) -> str:
        """Where the rendered file waits for delivery: a plain file in the task's output folder (never what a link
        there points to), renamed. Raises SetAsideError when it may not be sent."""
        if not path or not os.path.isfile(path):
            raise SetAsideError("Blender reported the frame written but its file is missing")
        try:
            self.cache.check_output_file(lease.task_id, path)
        except CacheError as exc:
            log.error("%s: %s", lease, exc)
            raise SetAsideError(str(exc)) from None
        self._outputs_sent += 1
        waiting = os.path.join(os.path.dirname(path), f".sending-{self._outputs_sent}-{os.path.basename(path)}")
        try:
            os.replace(path, waiting)
        except OSError as exc:
            raise SetAsideError(f"the rendered file could not be set aside for delivery: {exc}") from None
        return waiting

    def preview(self, lease: Lease, path: str | None) -> str | None:
        """Where the frame's preview waits for delivery (renamed as its frame was), or None: a frame without a
        preview is still delivered, the page then shows none."""
        if not path or not os.path.isfile(path):
            return None
        try:
            self.cache.check_output_file(lease.task_id, path)
            waiting = os.path.join(os.path.dirname(path), f".sending-{self._outputs_sent}-preview.png")
            os.replace(path, waiting)
            return waiting
        except (CacheError, OSError) as exc:
            log.warning("%s: its preview is not sent: %s", lease, exc)
            remove_quietly(path)
            return None
