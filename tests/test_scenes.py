"""renderq.scenes.make_scene against the real Blender: the saved file holds what was asked for."""

from __future__ import annotations

import json
import subprocess

import pytest

from renderq.scenes import SceneError, make_scene
from worker.blender_session import SessionError, find_blender

try:
    BLENDER: str | None = find_blender()
except SessionError:
    BLENDER = None

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


def test_scene_has_the_requested_settings(tmp_path):
    blend = make_scene(
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
