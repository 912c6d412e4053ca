"""The scene builders against the real Blender: the demo's (renderq.scenes) and the tests' (tests/scenes.py) save
files that hold what was asked for."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from scenes import SceneError, make_scene

from renderq import scenes as demo_scenes
from renderq.blender_path import find_blender_or_none

BLENDER: str | None = find_blender_or_none()

pytestmark = pytest.mark.skipif(
    BLENDER is None, reason="Blender is not installed (set RENDERQ_BLENDER or put it on PATH)"
)

# Printed by Blender after loading a scene: its settings, and per frame what the fail mechanisms key.
INSPECT = """
import bpy, json
s = bpy.context.scene
torus = bpy.data.objects["Torus"]
frames = {}
for f in range(s.frame_start, s.frame_end + 1):
    s.frame_set(f)
    frames[f] = {"x": round(torus.location.x, 4), "denoise": s.cycles.use_denoising,
                 "multiview": s.render.use_multiview}
print("INSPECT " + json.dumps({
    "engine": s.render.engine, "device": s.cycles.device, "samples": s.cycles.samples,
    "use_denoising": s.cycles.use_denoising, "frame_start": s.frame_start, "frame_end": s.frame_end,
    "resolution": [s.render.resolution_x, s.render.resolution_y], "filepath": s.render.filepath,
    "file_format": s.render.image_settings.file_format, "camera": s.camera.name if s.camera else None,
    "fail_frames": list(s.get("renderq_fail_frames", [])), "mechanism": s.get("renderq_fail_mechanism"),
    "frames": frames,
}))
"""


def inspect(blend: str) -> dict:
    completed = subprocess.run(
        [BLENDER, "-b", "-Y", blend, "--python-exit-code", "1", "--python-expr", INSPECT],
        capture_output=True, text=True, timeout=120, check=True,
    )
    line = next(line for line in completed.stdout.splitlines() if line.startswith("INSPECT "))
    return json.loads(line[len("INSPECT "):])


@pytest.mark.parametrize("builder", [demo_scenes.make_scene, make_scene], ids=["demo", "tests"])
def test_scene_has_the_requested_settings(tmp_path, builder):
    blend = builder(
        str(tmp_path / "sub" / "scene.blend"), blender=BLENDER, frames=5, resolution=(80, 40), samples=3,
        output="//frames/shot_####_x", file_format="JPEG",
    )
    assert blend == str(tmp_path / "sub" / "scene.blend")
    info = inspect(blend)
    assert info["engine"] == "CYCLES" and info["device"] == "CPU"
    assert info["use_denoising"] is False
    assert info["samples"] == 3
    assert (info["frame_start"], info["frame_end"]) == (1, 5)
    assert info["resolution"] == [80, 40]
    assert info["filepath"] == "//frames/shot_####_x"
    assert info["file_format"] == "JPEG"
    assert info["camera"] == "Camera"
    positions = [info["frames"][str(frame)]["x"] for frame in range(1, 6)]
    assert positions == sorted(positions) and positions[0] < positions[-1]  # the object moves
    assert info["fail_frames"] == [] and info["mechanism"] is None


@pytest.mark.parametrize("mechanism", ["auto", "denoiser_missing", "stereo_multilayer"])
def test_fail_frames_are_keyed_only_on_those_frames(tmp_path, mechanism):
    blend = make_scene(
        str(tmp_path / "fail.blend"), blender=BLENDER, frames=5, fail_frames=[2, 4], fail_mechanism=mechanism
    )
    info = inspect(blend)
    assert info["fail_frames"] == [2, 4]
    if mechanism != "auto":
        assert info["mechanism"] == mechanism
    key = {"denoiser_missing": "denoise", "stereo_multilayer": "multiview"}[info["mechanism"]]
    assert {int(frame) for frame, state in info["frames"].items() if state[key]} == {2, 4}
    other = {"denoise": "multiview", "multiview": "denoise"}[key]
    assert not any(state[other] for state in info["frames"].values())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_scene(str(tmp_path / "x.blend"), blender=BLENDER, frames=0)
    with pytest.raises(SceneError, match="could not build the scene"):
        make_scene(str(tmp_path / "x.blend"), blender=BLENDER, file_format="NOT_A_FORMAT")


PYTHON_INSPECT = """
import bpy, json
s = bpy.context.scene
torus = bpy.data.objects["Torus"]
drivers = [(d.data_path, d.driver.type, d.driver.expression) for d in torus.animation_data.drivers]
print("INSPECT " + json.dumps({
    "texts": sorted((t.name, t.use_module) for t in bpy.data.texts), "drivers": drivers,
    "marker": s.get("renderq_python_marker"), "hang_frames": list(s.get("renderq_hang_frames", [])),
}))
"""

# With scripts allowed (-y): set frames 1 and 2 only, so the driver runs and frame 2 is tried while its hang is
# already recorded.
SET_FRAMES = "import bpy; s = bpy.context.scene; s.frame_set(1); s.frame_set(2); print('FRAMES SET')"


def test_python_options_put_registered_text_blocks_and_a_scripted_driver_in_the_file(tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    monkeypatch.setenv("RENDERQ_TEST_MARKER_DIR", str(markers))
    blend = make_scene(str(tmp_path / "py.blend"), blender=BLENDER, frames=3, python_marker=True, hang_frames=[2, 3])
    completed = subprocess.run(
        [BLENDER, "-b", "-Y", blend, "--python-exit-code", "1", "--python-expr", PYTHON_INSPECT],
        capture_output=True, text=True, timeout=120, check=True,
    )
    line = next(line for line in completed.stdout.splitlines() if line.startswith("INSPECT "))
    info = json.loads(line[len("INSPECT "):])
    assert info["texts"] == [["renderq_hang.py", True], ["renderq_marker.py", True]]
    assert info["drivers"] == [['["renderq_driven"]', "SCRIPTED", "renderq_marker_driver(frame)"]]
    assert info["marker"] == 1 and info["hang_frames"] == [2, 3]
    # Opened with scripts off, the file's Python left nothing behind.
    assert not markers.exists()

    markers.mkdir()
    (markers / "hang_0002").write_text("an earlier try hung here\n")
    allowed = subprocess.run(
        [BLENDER, "-b", "-y", blend, "--python-exit-code", "1", "--python-expr", SET_FRAMES],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert "FRAMES SET" in allowed.stdout  # frame 2 did not hang: its hang was recorded before
    names = sorted(os.listdir(markers))
    assert {"driver_0001", "driver_0002", "hang_0002"} <= set(names) and "hang_0003" not in names


def test_without_python_options_the_file_holds_no_python(tmp_path):
    blend = make_scene(str(tmp_path / "plain.blend"), blender=BLENDER, frames=2)
    completed = subprocess.run(
        [BLENDER, "-b", "-Y", blend, "--python-exit-code", "1", "--python-expr",
         "import bpy; print('TEXTS', len(bpy.data.texts), bpy.data.objects['Torus'].animation_data.drivers[:])"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert "TEXTS 0 []" in completed.stdout
