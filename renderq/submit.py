"""Submitting a packed project: "upload what the coordinator lacks, then submit", once, for the CLI, the add-on
(which bundles this module) and the demo.

Two steps, so that a front end can show or refuse between them: `plan` names the files (the main file after the
artist's original when a copy of unsaved changes was packed) and asks the coordinator which contents it lacks;
`execute` uploads those, each content once, and submits the task. Progress goes to one callback,
`progress(stage, done, total)`, with the stages of renderq.packing ("trace", "verify", "hash") followed by
"upload" (bytes) and "submit"; each front end turns them into its own display.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from renderq.http_client import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorUnreachable,
    Invalid,
    TooLarge,
)

if TYPE_CHECKING:  # packing needs blender_asset_tracer; only its types are needed here
    from renderq.packing import PackResult

__all__ = ["Progress", "SubmitPlan", "Uploaded", "execute", "plan", "upload_needed"]

Progress = Callable[[str, int, int], None]


def _no_progress(_stage: str, _done: int, _total: int) -> None:
    """The progress callback of a front end that shows none."""


@dataclass(frozen=True)
class SubmitPlan:
    """What goes to the coordinator: the manifest (path, sha256, size; sorted by path), the main file's path in it,
    the local file of each content, and the contents the coordinator lacks."""

    manifest: list[dict]
    main_file: str
    sources: dict[str, str]
    needed: list[str]

    @property
    def files_total(self) -> int:
        """Distinct contents in the task."""
        return len(self.sources)

    @property
    def bytes_needed(self) -> int:
        """Bytes that `execute` will upload."""
        sizes = {entry["sha256"]: entry["size"] for entry in self.manifest}
        return sum(sizes[sha256] for sha256 in self.needed)


@dataclass(frozen=True)
class Uploaded:
    """What `execute` sent before submitting."""

    files: int
    bytes: int


def plan(client: CoordinatorClient, packed: PackResult, main_file_name: str | None = None) -> SubmitPlan:
    """Name the packed files and ask the coordinator which contents it lacks.

    `main_file_name` renames the main file (kept in its folder): when a copy of unsaved changes was packed, the task
    must still render `shot.blend`, so that output paths derived from the file name match what the artist expects;
    the saved original, linked back from a library, is then left out, as the copy replaces it.
    """
    main_file = packed.main_file
    if main_file_name:
        main_file = posixpath.join(posixpath.dirname(packed.main_file), main_file_name)
    manifest: list[dict] = []
    sources: dict[str, str] = {}
    for packed_file in packed.files:
        path = packed_file.path
        if path == packed.main_file:
            path = main_file
        elif path == main_file:
            continue
        manifest.append({"path": path, "sha256": packed_file.sha256, "size": packed_file.size})
        sources.setdefault(packed_file.sha256, packed_file.source)
    manifest.sort(key=lambda entry: entry["path"])
    needed = [sha256 for sha256 in client.missing_files(list(sources)) if sha256 in sources]
    return SubmitPlan(manifest=manifest, main_file=main_file, sources=sources, needed=needed)


def upload_needed(client: CoordinatorClient, submit_plan: SubmitPlan, progress: Progress = _no_progress) -> Uploaded:
    """Upload the contents the coordinator lacks, each once, reporting ("upload", bytes sent, bytes in all).

    A refused upload raises CoordinatorError naming the file (and, for a hash mismatch, that it may have changed).
    """
    sizes = {entry["sha256"]: entry["size"] for entry in submit_plan.manifest}
    total = submit_plan.bytes_needed
    sent_before = 0
    progress("upload", 0, total)
    for sha256 in submit_plan.needed:

        def on_bytes(sent: int, _size: int, before: int = sent_before) -> None:
            progress("upload", before + sent, total)

        try:
            client.upload_file(submit_plan.sources[sha256], sha256, progress=on_bytes)
        except CoordinatorUnreachable:
            raise  # about the coordinator, not this file
        except CoordinatorError as error:
            name = next(entry["path"] for entry in submit_plan.manifest if entry["sha256"] == sha256)
            changed = isinstance(error, Invalid) and not isinstance(error, TooLarge)  # the hash did not match
            hint = " (did it change while it was being uploaded?)" if changed else ""
            raise type(error)(error.status, f"could not upload {name}: {error.message}{hint}") from None
        sent_before += sizes[sha256]
    return Uploaded(files=len(submit_plan.needed), bytes=total)


def execute(
    client: CoordinatorClient, submit_plan: SubmitPlan, task_fields: dict[str, Any], progress: Progress = _no_progress
) -> tuple[dict, Uploaded]:
    """Upload what the plan found missing, then submit the task with `task_fields` (name, frames, priority... as
    in POST /submit_task; the manifest and main file come from the plan). Returns (the task, what was uploaded)."""
    uploaded = upload_needed(client, submit_plan, progress)
    progress("submit", 0, 0)
    task = client.submit_task(manifest=submit_plan.manifest, main_file=submit_plan.main_file, **task_fields)
    return task, uploaded
