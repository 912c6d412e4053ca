"""renderq.submit, the one "upload what is missing, then submit" of the CLI, the add-on and the demo, against a
real coordinator over HTTP with a scene made by the real Blender."""

from __future__ import annotations

import os

import pytest
from harness import Farm, find_blender_or_none

from renderq import packing, submit
from renderq.http_client import CoordinatorClient

pytestmark = pytest.mark.skipif(find_blender_or_none() is None, reason="Blender is not installed")

TASK = {"frame_start": 1, "frame_end": 2, "frame_step": 1, "priority": 0, "workers": [], "settings": {},
        "submitted_by": "pipeline test"}


def test_only_what_is_missing_goes_up_and_the_task_renders_the_named_file(farm: Farm, scenes, tmp_path) -> None:
    farm.start_coordinator()
    client = CoordinatorClient(farm.url, token=farm.token("artist"))
    blend = scenes("pipeline", frames=2, resolution=(64, 36), samples=2)
    packed = packing.pack_project(blend, str(tmp_path / "staging"))

    first = submit.plan(client, packed, main_file_name="shot.blend")
    assert first.main_file == "shot.blend" and [entry["path"] for entry in first.manifest] == ["shot.blend"]
    assert first.needed == list(first.sources) and first.bytes_needed == os.path.getsize(blend)
    seen: list[tuple[str, int, int]] = []
    task, uploaded = submit.execute(client, first, {"name": "first", **TASK}, lambda *event: seen.append(event))
    assert (uploaded.files, uploaded.bytes) == (1, os.path.getsize(blend))
    assert seen[0] == ("upload", 0, uploaded.bytes) and ("upload", uploaded.bytes, uploaded.bytes) in seen
    assert seen[-1] == ("submit", 0, 0)
    assert farm.api.task(task["task_id"])["main_file"] == "shot.blend"

    again = submit.plan(client, packed)
    assert again.needed == [] and again.bytes_needed == 0
    task, uploaded = submit.execute(client, again, {"name": "again", **TASK})
    assert (uploaded.files, uploaded.bytes) == (0, 0)
    assert farm.api.task(task["task_id"])["main_file"] == packed.main_file
