"""A still split into tiles: each tile leased, rendered and retried like a frame on real workers, merged by one of
them, and the merged image equal to a local render of the whole frame, pixel for pixel.

Real coordinator over real HTTP, real workers with Blender 3.4, the real `renderq` command line. Pixels are compared
decoded (Pillow): the merged file is Blender's own PNG writer's, not necessarily byte for byte the local one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from harness import ROOT, find_blender_or_none, wait_for
from renderq.model import MERGE_FRAME
from renderq.scenes import make_scene
from renderq.tiles import tiles_progress
from worker.tile_rects import border, render_rect, tile_rect

BLENDER = find_blender_or_none()
FAST = ("--heartbeat", "1", "--alive-timeout", "4")
# Odd sizes, so tile edges fall between the halves and thirds and the rounding of the border is put to the test.
RESOLUTION = (67, 45)

pytestmark = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")


def renderq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `renderq` command line, in its own process."""
    return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def still(folder: str, *, samples: int = 1500, adaptive: bool = True, denoising: bool = False,
          file_format: str = "PNG") -> str:
    """A one-frame Cycles scene (the demo's torus) in a project folder of its own, with Cycles' adaptive sampling
    (its default) or not; with `denoising`, Cycles' denoising switched on."""
    os.makedirs(folder, exist_ok=True)
    blend = make_scene(os.path.join(folder, "still.blend"), blender=BLENDER, frames=1, resolution=RESOLUTION,
                       samples=samples, file_format=file_format)
    change = (f"import bpy; cycles = bpy.context.scene.cycles; cycles.use_adaptive_sampling = {adaptive}; "
              f"cycles.use_denoising = {denoising}; bpy.ops.wm.save_mainfile()")
    subprocess.run([BLENDER, "-b", "-Y", "--factory-startup", blend, "--python-expr", change],
                   check=True, capture_output=True, timeout=120)
    return blend


def local_render(blend: str, extension: str = "png") -> str:
    """The whole frame rendered by `blender -b FILE -t 1 -f 1` beside the .blend (the scene writes `//render/f_`).

    One thread, as the test's workers render: Cycles with adaptive sampling on several threads is not repeatable
    to the last bit (two local renders of this scene on 2 threads differed by one float step in 8 pixels)."""
    subprocess.run([BLENDER, "-b", "-Y", blend, "-t", "1", "-f", "1"], check=True, capture_output=True, timeout=300)
    return os.path.join(os.path.dirname(blend), "render", f"f_0001.{extension}")


def pixels(path: str) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(path) as image:
        return image.mode, image.size, image.tobytes()


def exr_pixels_equal(first: str, second: str) -> bool:
    """Whether two OpenEXR files hold the same pixels, as Blender decodes them (the tests have no EXR reader)."""
    compare = ("import bpy, sys; a, b = (bpy.data.images.load(p) for p in sys.argv[-2:]); "
               "print('RENDERQ_EQUAL', tuple(a.size) == tuple(b.size) and list(a.pixels) == list(b.pixels))")
    done = subprocess.run([BLENDER, "-b", "-Y", "--factory-startup", "--python-expr", compare, "--", first, second],
                          capture_output=True, text=True, timeout=120, check=True)
    return "RENDERQ_EQUAL True" in done.stdout


def exr_layout(path: str) -> tuple[list[tuple[str, int]], int]:
    """An OpenEXR file's channels with their pixel types (1 half, 2 float) and its compression, from its header."""
    with open(path, "rb") as handle:
        data = handle.read(4096)
    start = data.index(b"channels\0chlist\0") + len(b"channels\0chlist\0") + 4
    channels = []
    while data[start] != 0:
        end = data.index(b"\0", start)
        channels.append((data[start:end].decode(), int.from_bytes(data[end + 1:end + 5], "little")))
        start = end + 1 + 16
    compression = data[data.index(b"compression\0compression\0") + len(b"compression\0compression\0") + 4]
    return channels, compression


def test_tile_rectangles_cover_every_pixel_once_and_their_borders_come_back_as_the_same_pixels() -> None:
    for width, height, columns, rows in ((67, 45, 2, 2), (1920, 1080, 3, 3), (8, 8, 8, 8), (1001, 7, 7, 1)):
        covered = [0] * (width * height)
        for number in range(1, columns * rows + 1):
            x0, x1, y0, y1 = tile_rect(width, height, columns, rows, number)
            for y in range(y0, y1):
                for x in range(x0, x1):
                    covered[y * width + x] += 1
            # Blender takes a border fraction back to pixels by multiplying and dropping the fraction part.
            fractions = border(width, height, columns, rows, number, margin=0)
            sizes = (width, width, height, height)
            assert [int(fraction * size) for fraction, size in zip(fractions, sizes, strict=True)] == [x0, x1, y0, y1]
        assert set(covered) == {1}
        assert render_rect(width, height, columns, rows, 1, margin=2)[:2] == (0, min(width, width // columns + 2))
    # Tile 1 is the top left: in Blender's pixels, counted from the bottom, it holds the top rows.
    assert tile_rect(67, 45, 2, 2, 1) == (0, 33, 22, 45)


def test_a_tiled_stills_progress_is_told_in_tiles() -> None:
    assert [tiles_progress("2x2", done, total) for done, total in ((0, 4), (3, 4), (4, 5), (5, 5))] == [
        "0 of 4 tiles", "3 of 4 tiles", "4 of 4 tiles, merging", "4 of 4 tiles, merged"]


@pytest.mark.timeout(300)
def test_a_2x2_tiled_still_equals_the_local_render_pixel_for_pixel(farm, tmp_path) -> None:
    # Adaptive sampling at 1,500 samples: without the tiles' margin, pixels next to the tile edges differ here.
    blend = still(str(tmp_path / "project"))
    farm.start_coordinator(*FAST)
    farm.start_worker("w1")
    farm.start_worker("w2")
    out = tmp_path / "out"

    submitted = renderq("submit", blend, "--frames", "1", "--tiles", "2x2", "--wait", "--output", str(out),
                        *farm.cli_flags())

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    task_id = int(submitted.stdout.split("submitted task ")[1].split()[0])
    task = farm.api.task(task_id)
    assert task["status"] == "done" and task["tiles"] == "2x2"
    assert task["progress"]["done"] == task["progress"]["total"] == 5  # four tiles and the merge
    kinds = [(frame["frame"], frame["kind"]) for frame in task["frames"]]
    assert kinds == [(1, "tile"), (2, "tile"), (3, "tile"), (4, "tile"), (MERGE_FRAME, "merge")]
    assert [frame["output"] for frame in task["frames"]][:4] == [f"f_0001.tile-{n}-of-4.png" for n in range(1, 5)]
    assert task["frames"][-1]["output"] == "f_0001.png"
    # The download (and the task's preview) sees one image: the merged still, under the frame's own name.
    assert os.listdir(out) == ["f_0001.png"]
    assert task["latest_done"]["kind"] == "merge"
    assert pixels(str(out / "f_0001.png")) == pixels(local_render(blend))
    print("tiles rendered by", sorted({frame["worker"] for frame in task["frames"][:4]}))
    status = renderq("status", str(task_id), *farm.cli_flags())
    assert "4 of 4 tiles, merged" in status.stdout, status.stdout


@pytest.mark.timeout(300)
def test_an_openexr_still_is_merged_into_the_scenes_own_exr_with_the_local_renders_pixels(farm, tmp_path) -> None:
    blend = still(str(tmp_path / "project"), samples=64, file_format="OPEN_EXR")
    farm.start_coordinator(*FAST)
    farm.start_worker("w1")
    out = tmp_path / "out"

    submitted = renderq("submit", blend, "--frames", "1", "--tiles", "3x2", "--wait", "--output", str(out),
                        *farm.cli_flags())

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert os.listdir(out) == ["f_0001.exr"]
    local = local_render(blend, "exr")
    assert exr_pixels_equal(str(out / "f_0001.exr"), local)
    # Half or full float and the codec are the scene's, as in the local render.
    assert exr_layout(str(out / "f_0001.exr")) == exr_layout(local)


@pytest.mark.timeout(300)
def test_a_tile_whose_worker_dies_is_rendered_again_and_the_still_is_still_equal(farm, tmp_path) -> None:
    # Every sample taken (no adaptive sampling), so a tile takes seconds on one thread: the kill lands while it
    # renders.
    blend = still(str(tmp_path / "project"), samples=1500, adaptive=False)
    farm.start_coordinator(*FAST)
    doomed = farm.start_worker("doomed")
    task_id = farm.api.submit(blend, 1, 1, tiles="2x2")
    wait_for(lambda: any(frame["status"] == "rendering" for frame in farm.api.task(task_id)["frames"]), 60,
             "a tile to start rendering")
    doomed.kill_group()  # the worker and its Blender vanish mid-tile: its lease runs out, the tile is queued again
    farm.start_worker("w2")

    task = farm.api.wait_task_ended(task_id, 240)

    assert task["status"] == "done", task
    # The tile the dead worker held was leased again and rendered by the other.
    assert any(frame["attempts"] >= 2 and frame["worker"] == "w2" for frame in task["frames"]), task["frames"]
    out = tmp_path / "out"
    fetched = renderq("download", str(task_id), str(out), *farm.cli_flags())
    assert fetched.returncode == 0, fetched.stderr
    assert os.listdir(out) == ["f_0001.png"]
    assert pixels(str(out / "f_0001.png")) == pixels(local_render(blend))


def refusal(farm, blend_sha: str, **fields) -> tuple[int, dict]:
    body = {"blend_sha256": blend_sha, "blend_filename": "still.blend", "frame_start": 1, "frame_end": 1, **fields}
    return farm.api.call("POST", "/submit_task", body)


@pytest.mark.timeout(120)
def test_a_still_that_cannot_be_tiled_is_refused_with_one_sentence(farm, tmp_path) -> None:
    blend = still(str(tmp_path / "project"), samples=8)
    farm.start_coordinator(*FAST)
    sha = farm.api.upload_blend(blend)
    cases = [
        ({"tiles": "2"}, "is not columns x rows"),
        ({"tiles": "9x2"}, "must each be 1 to 8"),
        ({"tiles": "0x2"}, "must each be 1 to 8"),
        ({"tiles": "1x1"}, "whole frame"),
        ({"tiles": "2x2", "frame_end": 3}, "only a single frame can be split into tiles, and this task has 3 frames"),
        ({"tiles": "2x2", "video": {"container": "mp4"}}, "cannot also make a video"),
        ({"tiles": "2x2", "denoising": True}, "a denoised scene cannot be split into tiles"),
    ]
    for fields, sentence in cases:
        status, answer = refusal(farm, sha, **fields)
        assert status == 400 and sentence in answer["error"], (fields, status, answer)
        assert "\n" not in answer["error"]
    assert farm.api.get("/tasks")["tasks"] == []  # nothing was stored


@pytest.mark.timeout(180)
def test_the_command_line_refuses_denoised_or_multilayer_scenes_many_frames_and_bad_tiles_first(farm, tmp_path) -> None:
    denoised = still(str(tmp_path / "denoised"), samples=8, denoising=True)
    plain = still(str(tmp_path / "plain"), samples=8)
    farm.start_coordinator(*FAST)

    answer = renderq("submit", denoised, "--frames", "1", "--tiles", "2x2", *farm.cli_flags())
    assert answer.returncode != 0
    assert "is denoised, so it cannot be split into tiles: each tile denoised alone leaves seams" in answer.stderr

    multilayer = still(str(tmp_path / "multilayer"), samples=8, file_format="OPEN_EXR_MULTILAYER")
    answer = renderq("submit", multilayer, "--frames", "1", "--tiles", "2x2", *farm.cli_flags())
    assert answer.returncode != 0 and "writes a multilayer OpenEXR, which cannot be split into tiles" in answer.stderr

    answer = renderq("submit", plain, "--frames", "1-2", "--tiles", "2x2", *farm.cli_flags())
    assert answer.returncode != 0 and "only a single frame can be split into tiles" in answer.stderr

    answer = renderq("submit", plain, "--frames", "1", "--tiles", "2by2", *farm.cli_flags())
    assert answer.returncode != 0 and "'2by2' is not columns x rows, like 2x2" in answer.stderr
    assert farm.api.get("/tasks")["tasks"] == []


@pytest.mark.timeout(300)
def test_the_addon_splits_a_single_frame_into_tiles_and_refuses_what_it_cannot_split(farm, tmp_path) -> None:
    from test_addon_blender34 import run_addon

    sys.path.insert(0, ROOT)
    try:
        import build_addon
    finally:
        sys.path.remove(ROOT)
    built = str(build_addon.build(tmp_path / "addon-dist"))
    blend = still(str(tmp_path / "project"), samples=8)
    farm.start_coordinator(*FAST)

    result = run_addon(tmp_path, built, farm.url, "tiles", blend, token=farm.token("artist"),
                       script=os.path.join(ROOT, "tests", "addon_scripts", "addon_tiles.py"))

    assert result["many_frames"] == ("Split into Tiles renders a single frame, and the range has 2 frames: set the "
                                     "range to one frame")
    assert result["denoised"].startswith("This scene is denoised, so it cannot be split into tiles: each tile")
    task = farm.api.task(result["task_id"])
    assert task["tiles"] == "2x2" and [frame["kind"] for frame in task["frames"]] == ["tile"] * 4
    assert (task["frame_start"], task["frame_end"]) == (1, 1)
