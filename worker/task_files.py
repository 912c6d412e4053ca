"""A task's files on this worker: fetched into the cache and laid out as the task's tree, removed once it is done."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from worker.cache import BlendCache, CacheError, TaskTree, format_size
from worker.lease import Lease

__all__ = ["TaskFiles"]

# The agent's logger, not one of this module's own: these lines belong to the worker loop's log and read as such.
log = logging.getLogger("renderq.worker")


class Fetcher(Protocol):
    """What TaskFiles asks of the coordinator (worker.reporter.Reporter): each call retried until `give_up()`."""

    def download_file(self, sha256: str, dest_path: str, give_up: Callable[[], bool]) -> None: ...

    def task_manifest(self, task_id: int, give_up: Callable[[], bool]) -> Any: ...


class TaskFiles:
    """The trees of the tasks this worker renders: each task's manifest is asked of the coordinator once, its tree
    is built in the cache (downloading only what the cache lacks), and both go when the worker is done with it.

    Only the worker's loop uses it, so building a tree and removing one never overlap.
    """

    def __init__(self, fetcher: Fetcher, cache: BlendCache) -> None:
        self.fetcher = fetcher
        self.cache = cache
        # task id -> (manifest files, main file): fetched once per task while this worker works on it.
        self._manifests: dict[int, tuple[list[dict[str, Any]], str]] = {}

    def prepare(self, lease: Lease, give_up: Callable[[], bool]) -> str:
        """Download the files of the task's tree that the cache lacks, build the tree, return its main .blend.

        Network calls are retried until `give_up()` is true, which raises GaveUp.
        """
        files, main_file = self._manifest(lease, give_up)

        def download(sha256: str, dest_path: str) -> None:
            self.fetcher.download_file(sha256, dest_path, give_up)

        tree = self.cache.materialize_tree(lease.task_id, files, main_file, download)
        log.info("task %s: %s", lease.task_id, _describe_tree(tree))
        return tree.main_path

    def remove_unless(self, task_id: int, in_use: Callable[[int], bool]) -> None:
        """Delete the task's tree and forget its manifest, unless `in_use(task_id)` says they are still needed."""
        if in_use(task_id):
            return
        self._manifests.pop(task_id, None)
        self.cache.remove_task(task_id)

    def _manifest(self, lease: Lease, give_up: Callable[[], bool]) -> tuple[list[dict[str, Any]], str]:
        """The task's files and main file: asked of the coordinator once per task, then kept in memory."""
        if lease.main_file is None:
            # A coordinator from before task trees: the task is its one .blend.
            return [{"path": lease.blend_filename, "sha256": lease.blend_sha256}], lease.blend_filename
        known = self._manifests.get(lease.task_id)
        if known is not None:
            return known
        answer = self.fetcher.task_manifest(lease.task_id, give_up)
        files = answer.get("files") if isinstance(answer, dict) else None
        if not isinstance(files, list):
            raise CacheError(f"the coordinator sent no file list in the manifest of task {lease.task_id}")
        known = (files, lease.main_file)
        self._manifests[lease.task_id] = known
        return known


def _describe_tree(tree: TaskTree) -> str:
    """One line on what building a task's tree cost: files and bytes downloaded vs. found in the cache."""
    return (
        f"{tree.files} file{'' if tree.files == 1 else 's'} ({format_size(tree.total_bytes)}): "
        f"downloaded {tree.downloaded_files} "
        f"({format_size(tree.downloaded_bytes)}), found {tree.cached_files} in the cache "
        f"({format_size(tree.cached_bytes)})"
    )
