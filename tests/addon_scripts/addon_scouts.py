"""Drive the RenderQ add-on's scout frames inside a real Blender, for tests/test_addon_scouts.py.

    blender -b scene.blend -Y --python-exit-code 1 --python addon_scouts.py -- --zip ZIP --url URL

Installs the add-on, then submits the open scene twice with "Scout Frames" set to 1: each task renders its scout
and waits for approval. The first is approved with the panel's Approve button (its operator) and renders to its end;
the second is canceled with the panel's Cancel. While each waits, the Tasks panel must draw "waiting for approval",
the estimate and the Approve/Cancel pair. Prints one line `RENDERQ_RESULT {json}`; a failed assertion makes Blender
exit with status 1.
"""

import argparse
import json
import os
import sys
import time

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from addon_check import drain_all, install

RESULT_PREFIX = "RENDERQ_RESULT "
TIMEOUT = 180.0


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="addon_scouts.py")
    parser.add_argument("--zip", required=True)
    parser.add_argument("--url", required=True)
    return parser.parse_args(argv)


def wait_for_status(task_id: int, wanted: set) -> dict:
    """Refresh the tasks until `task_id` has one of the `wanted` statuses; return its state then."""
    from renderq_addon import state

    deadline = time.monotonic() + TIMEOUT
    while True:
        bpy.ops.renderq.refresh_tasks()
        drain_all(TIMEOUT)
        task = state.SESSION.tasks.get(task_id)
        if task is not None and task.get("status") in wanted:
            return task
        assert time.monotonic() < deadline, f"task {task_id} never became {wanted}: {task}"
        time.sleep(0.5)


class _Recorder:
    """Stands in for a panel's layout: records every call, and every row, box or column made from it is itself."""

    def __init__(self) -> None:
        self.calls = []

    def __getattr__(self, name: str):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self

        return record


def panel_of(task: dict) -> dict:
    """What the Tasks panel draws for one task: its labels and its operators with their button texts."""
    from renderq_addon import ui

    layout = _Recorder()
    ui.RENDERQ_PT_tasks._draw_task(None, layout, task)
    return {
        "labels": [kwargs.get("text", "") for name, _, kwargs in layout.calls if name == "label"],
        "operators": [[args[0], kwargs.get("text", "")] for name, args, kwargs in layout.calls if name == "operator"],
    }


def submit_with_a_scout() -> int:
    from renderq_addon import state

    bpy.context.scene.renderq.scout_frames = 1
    assert bpy.ops.renderq.submit() == {"FINISHED"}
    drain_all(TIMEOUT)
    assert state.last_error() is None, state.last_error()
    return state.last_submitted_task_id()


def main() -> None:
    from_args = parse_args()
    install(from_args.zip, from_args.url)
    from renderq_addon import state

    approved_id = submit_with_a_scout()
    waiting = wait_for_status(approved_id, {"awaiting_approval"})
    drawn = panel_of(waiting)
    assert bpy.ops.renderq.approve_task(task_id=approved_id) == {"FINISHED"}
    drain_all(TIMEOUT)
    assert state.last_error() is None, state.last_error()
    approved = wait_for_status(approved_id, {"done", "failed", "canceled"})

    canceled_id = submit_with_a_scout()
    wait_for_status(canceled_id, {"awaiting_approval"})
    # The button runs the operator with a confirmation first; a script runs it straight.
    assert bpy.ops.renderq.cancel_task(task_id=canceled_id) == {"FINISHED"}
    drain_all(TIMEOUT)
    canceled = wait_for_status(canceled_id, {"done", "failed", "canceled"})
    print(RESULT_PREFIX + json.dumps({
        "approved": [approved_id, approved.get("status")], "canceled": [canceled_id, canceled.get("status")],
        "waiting": {"estimate": waiting.get("estimate"), "panel": drawn}, "blender": list(bpy.app.version),
    }), flush=True)


main()
