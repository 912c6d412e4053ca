"""The frame script's render handlers inside the real Blender: each stays across file loads and, when reporting
fails, prints one line instead of raising into Blender's render."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from renderq.blender_path import find_blender_or_none

BLENDER = find_blender_or_none()
FRAME_SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "worker" / "frame_script.py"

# Loads the frame script without running its main(), then calls every handler with a channel that cannot send.
DRIVER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("frame_script", sys.argv[sys.argv.index("--") + 1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

class Frame:
    frame = 7
    started_monotonic = 1.0
    written_path = None
    canceled = False

class BrokenChannel:
    def send(self, kind, **fields):
        raise OSError("the worker went away")

script.current = Frame()
script.channel = BrokenChannel()
script.current.started_monotonic = None
script.on_render_pre(None, None)
script.on_render_cancel(None, None)
for _handlers, handler in script.HANDLERS:
    print("persistent", handler.__name__, "_bpy_persistent" in handler.__dict__, flush=True)
print("canceled", script.current.canceled, flush=True)
"""


@pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (set RENDERQ_BLENDER or put it on PATH)")
def test_handlers_persist_and_never_raise(tmp_path: pathlib.Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = subprocess.run(
        [str(BLENDER), "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1", "--python", str(driver),
         "--", str(FRAME_SCRIPT)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "renderq: render_pre handler failed: the worker went away" in lines
    assert "renderq: render_cancel handler failed: the worker went away" in lines
    assert [line for line in lines if line.startswith("persistent ")] == [
        "persistent on_render_pre True", "persistent on_render_write True", "persistent on_render_cancel True",
    ]
    # The handler did its own work before reporting failed.
    assert "canceled True" in lines
