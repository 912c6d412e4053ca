"""Every image format Blender writes, through the farm: a real coordinator and a real worker with Blender render
multilayer OpenEXR (two view layers, several passes), OpenEXR, Radiance HDR, 16-bit TIFF and 16-bit PNG frames.

The frame `renderq download` saves is byte for byte the file Blender writes rendering the same frame locally (the
scenes leave out the metadata that differs between any two renders: date, time, render time, the .blend's path;
Cycles writes its own render times into the file whatever the settings, so a Cycles frame is compared with those
values blanked).
Each of those frames comes with a small 8-bit PNG preview the worker's Blender made, which the API serves and the
status page shows (in Chromium); an 8-bit PNG frame is its own preview. A preview that is not a PNG, or longer than
the body, is refused over HTTP and nothing of the frame is stored.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from harness import ROOT, Farm, find_blender_or_none
from scenes import make_format_scene

BLENDER = find_blender_or_none()
pytestmark = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
FAST = ("--heartbeat", "1", "--alive-timeout", "4")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESOLUTION = (96, 54)
# name -> (Blender's file format, colour depth, extra view layer and passes, the file's extension, engine).
# Workbench and EEVEE: Cycles writes its render times into every file's metadata, so two Cycles renders of one frame
# are never the same bytes, on the farm or not; Cycles frames are compared with those values masked. EEVEE and
# Cycles render the Z, normal and mist passes.
WORKBENCH, EEVEE, CYCLES = "BLENDER_WORKBENCH", "BLENDER_EEVEE", ""
FORMATS = {
    "multilayer_exr": ("OPEN_EXR_MULTILAYER", "32", True, ".exr", EEVEE),
    "multilayer_exr_cycles": ("OPEN_EXR_MULTILAYER", "32", True, ".exr", CYCLES),
    "multilayer_exr_half": ("OPEN_EXR_MULTILAYER", "16", True, ".exr", WORKBENCH),
    "exr": ("OPEN_EXR", "16", False, ".exr", WORKBENCH),
    "hdr": ("HDR", "", False, ".hdr", WORKBENCH),
    "tiff16": ("TIFF", "16", False, ".tif", WORKBENCH),
    "png16": ("PNG", "16", False, ".png", WORKBENCH),
    "png8": ("PNG", "8", False, ".png", WORKBENCH),
}
FRAMES = (1, 2)


def png_size_and_depth(data: bytes) -> tuple[int, int, int]:
    """(width, height, bit depth) from a PNG's IHDR chunk."""
    assert data.startswith(PNG_SIGNATURE), data[:16]
    width, height, depth = struct.unpack(">IIB", data[16:25])
    return width, height, depth


def masked_cycles_times(exr: bytes) -> bytes:
    """The EXR file with the values of Cycles's per-render timing attributes (cycles.<layer>.render_time,
    .synchronization_time, .total_time) blanked: they differ between any two renders. Everything else, every other
    header attribute and every pixel, is kept."""
    data = bytearray(exr)
    position = 8  # magic number and version
    while data[position] != 0:
        name_end = data.index(0, position)
        type_end = data.index(0, name_end + 1)
        (size,) = struct.unpack("<i", data[type_end + 1:type_end + 5])
        value = type_end + 5
        name = bytes(data[position:name_end])
        if name.startswith(b"cycles.") and name.endswith((b"render_time", b"synchronization_time", b"total_time")):
            data[value:value + size] = b"\0" * size
        position = value + size
    return bytes(data)


def renderq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def render_locally(blend: str, folder: str) -> None:
    """`blender -b FILE -f N` for each frame, the output moved into `folder` with -o (the name's own prefix), on one
    thread like the farm's worker: Cycles on two threads is not repeatable to the last bit of a float."""
    frames = [arg for frame in FRAMES for arg in ("-f", str(frame))]
    completed = subprocess.run([BLENDER, "-b", blend, "-t", "1", "-o", os.path.join(folder, "f_"), *frames],
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One farm (a coordinator, a worker with Blender) that rendered a task per format; each task's frames as
    downloaded with `renderq download`, beside the same frames rendered locally."""
    root = tmp_path_factory.mktemp("formats")
    farm = Farm(str(root / "farm"), blender=BLENDER)
    os.makedirs(farm.root)
    try:
        farm.start_coordinator(*FAST)
        farm.start_worker("w1")
        tasks = {}
        for name, (file_format, depth, passes, _suffix, engine) in FORMATS.items():
            blend = make_format_scene(str(root / name / "shot.blend"), blender=BLENDER, frames=len(FRAMES),
                                      resolution=RESOLUTION, samples=4, file_format=file_format, color_depth=depth,
                                      passes=passes, engine=engine)
            tasks[name] = (blend, farm.api.submit(blend, FRAMES[0], FRAMES[-1], name=name))
        results = {}
        for name, (blend, task_id) in tasks.items():
            task = farm.api.wait_task_ended(task_id, 300)
            assert task["status"] == "done", (name, task, farm.workers["w1"].output()[-3000:])
            downloaded = str(root / name / "downloaded")
            completed = renderq("download", str(task_id), downloaded, *farm.cli_flags())
            assert completed.returncode == 0, completed.stderr
            local = str(root / name / "local")
            render_locally(blend, local)
            results[name] = {"task_id": task_id, "task": task, "downloaded": downloaded, "local": local}
        yield farm, results
    finally:
        farm.stop()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(FORMATS))
def test_the_downloaded_frame_is_byte_identical_to_a_local_render(rendered, name) -> None:
    _farm, results = rendered
    suffix = FORMATS[name][3]
    expected = [f"f_{frame:04d}{suffix}" for frame in FRAMES]
    found = results[name]
    assert sorted(os.listdir(found["downloaded"])) == expected
    assert sorted(os.listdir(found["local"])) == expected
    for file_name in expected:
        with open(os.path.join(found["downloaded"], file_name), "rb") as farm_file:
            farm_bytes = farm_file.read()
        with open(os.path.join(found["local"], file_name), "rb") as local_file:
            local_bytes = local_file.read()
        if FORMATS[name][4] == CYCLES:
            # Only the times may differ (they are written as MM:SS.hh, the same length; at times the same value).
            assert len(farm_bytes) == len(local_bytes)
            farm_bytes, local_bytes = masked_cycles_times(farm_bytes), masked_cycles_times(local_bytes)
        assert farm_bytes == local_bytes, f"{name}: {file_name} differs from Blender's own render"
        if name.startswith("multilayer_exr") and FORMATS[name][4] != WORKBENCH:
            # Every view layer and pass is in the file (the EXR header names its channels).
            for channel in (b"ViewLayer.Combined.R", b"ViewLayer.Depth.Z", b"ViewLayer.Normal.X",
                            b"Background.Combined.R", b"Background.Mist.Z"):
                assert channel in farm_bytes[:4096], channel


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(FORMATS))
def test_the_api_serves_a_small_png_preview_of_every_frame(rendered, name) -> None:
    farm, results = rendered
    task_id = results[name]["task_id"]
    frames = farm.api.task(task_id)["frames"]
    for frame in frames:
        status, image = farm.api.call("GET", f"/download_frame?task_id={task_id}&frame={frame['frame']}&inline=1")
        assert status == 200, image
        width, height, depth = png_size_and_depth(image)
        assert (width, height, depth) == (*RESOLUTION, 8 if name != "png16" else depth)
        if name == "png8":
            # An 8-bit PNG frame is its own preview: nothing more was sent or stored.
            assert frame["preview_sha256"] is None
            status, whole = farm.api.call("GET", f"/download_frame?task_id={task_id}&frame={frame['frame']}")
            assert whole == image
        else:
            assert frame["preview_sha256"] and frame["preview_sha256"] != frame["output_sha256"]
            assert depth == 8


@pytest.mark.timeout(600)
def test_the_status_page_shows_every_format(rendered) -> None:
    from test_status_browser import CHROMIUM, CHROMIUM_ARGS, Page, sync_playwright

    if sync_playwright is None or CHROMIUM is None:
        pytest.skip("Chromium and Playwright are not installed (source scripts/setup-browser.sh)")
    farm, results = rendered
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = Page(browser, farm)
        try:
            page.log_in()
            for name, found in results.items():
                page.open(f"/tasks/{found['task_id']}")
                page.wait("document.getElementById('latest-image').complete "
                          "&& document.getElementById('latest-image').naturalWidth > 0")
                page.wait("document.querySelectorAll('#thumbs img').length === 2 && [...document.querySelectorAll("
                          "'#thumbs img')].every(img => img.complete && img.naturalWidth > 0)")
                assert page.page.evaluate("document.getElementById('latest-image').naturalWidth") == RESOLUTION[0], \
                    name
            assert page.errors == []
        finally:
            page.close()
            browser.close()


def _holding_worker(farm: Farm) -> tuple[int, int, dict]:
    """A registered worker holding frame 1 of a new task: (worker_id, task_id, lease)."""
    worker_id = farm.api.post("/register_worker", {"name": "w", "host": "h", "blender_version": "3.4.1",
                                                   "cpu_count": 1})["worker_id"]
    task_id = farm.api.submit(make_blend(farm.root), 1, 1)
    lease = farm.api.post("/frames/claim", {"worker_id": worker_id})["frame"]
    return worker_id, task_id, lease


def make_blend(folder: str) -> str:
    path = os.path.join(folder, "a.blend")
    with open(path, "wb") as handle:
        handle.write(b"BLENDER-v304REND" + b"\0" * 64)
    return path


@pytest.mark.parametrize("frame_bytes", [1000, 1100 * 1024], ids=["small-fast-route", "large-flask-view"])
def test_a_preview_that_is_not_a_png_or_not_whole_is_refused(farm, frame_bytes) -> None:
    farm.start_coordinator()
    worker_id, task_id, lease = _holding_worker(farm)
    query = (f"/frames/finish?worker_id={worker_id}&task_id={task_id}&frame=1&lease_id={lease['lease_id']}"
             "&filename=f_0001.exr")
    frame = b"\x76\x2f\x31\x01" + b"x" * (frame_bytes - 4)
    worker_token = farm.token("worker")
    html = b"<html><script>alert(1)</script></html>"
    cases = [(html, len(html))]
    if len(frame) < 1024 * 1024:
        cases.append((PNG_SIGNATURE + b"abc", len(frame) + 100))  # a body shorter than its preview_size
    for preview, size in cases:
        status, answer = farm.api.call("POST", f"{query}&preview_size={size}", raw=preview + frame,
                                       token=worker_token, content_type="application/octet-stream")
        assert status == 400 and "preview" in answer["error"], answer
        assert farm.api.task(task_id)["frames"][0]["status"] == "leased"
    status, answer = farm.api.call("POST", f"{query}&preview_size=2000000", raw=frame, token=worker_token,
                                   content_type="application/octet-stream")
    assert status == 400, answer
    # A real PNG preview goes through: stored beside the frame, served inline, the frame itself as a download.
    preview = PNG_SIGNATURE + b"\0\0\0\rIHDR" + struct.pack(">IIBBBBB", 4, 2, 8, 6, 0, 0, 0) + b"\0" * 4
    status, answer = farm.api.call("POST", f"{query}&preview_size={len(preview)}", raw=preview + frame,
                                   token=worker_token, content_type="application/octet-stream")
    assert status == 200, answer
    assert answer["frame"]["status"] == "done" and answer["frame"]["output_size"] == len(frame)
    status, served = farm.api.call("GET", f"/download_frame?task_id={task_id}&frame=1&inline=1")
    assert status == 200 and served == preview
    status, whole = farm.api.call("GET", f"/download_frame?task_id={task_id}&frame=1")
    assert status == 200 and whole == frame
    # Deleting the task's files deletes its previews too: nothing of the frame stays in the store.
    preview_sha256 = answer["frame"]["preview_sha256"]
    assert stored_files(farm).count(preview_sha256) == 1
    farm.api.post("/delete_task_files", {"task_id": task_id})
    assert preview_sha256 not in stored_files(farm)
    assert farm.api.call("GET", f"/download_frame?task_id={task_id}&frame=1&inline=1")[0] == 404


def stored_files(farm: Farm) -> list[str]:
    """The names (hashes) of the files in the coordinator's content store."""
    return [name for folder, _dirs, names in os.walk(os.path.join(farm.data_dir, "files"))
            if os.path.basename(folder) != "incoming" for name in names]


BPY5_PREVIEW_CHECK = """
import json, os, sys
import bpy
blend, folder, worker = sys.argv[1:4]
bpy.ops.wm.open_mainfile(filepath=blend)
sys.path.insert(0, worker)
import frame_script
scene = bpy.context.scene
scene.render.filepath = os.path.join(folder, "f_")
scene.frame_start = scene.frame_end = 1
bpy.ops.render.render(animation=True, scene=scene.name)
before = frame_script._image_settings(scene.render.image_settings)
preview = frame_script.make_preview(scene, os.path.join(folder, "f_0001.exr"))
unchanged = before == frame_script._image_settings(scene.render.image_settings)
print("RESULT " + json.dumps({"preview": preview, "unchanged": unchanged}), flush=True)
"""


def test_the_frame_scripts_preview_works_in_blender_5(tmp_path) -> None:
    """The frame script's preview in the bpy 5 module (Blender 5 has media types: a multilayer EXR scene's output
    must become an image for the save and a multilayer EXR again afterwards)."""
    from addon_ui_scripts.addon_testing import bpy_python_or_none

    bpy_python = bpy_python_or_none()
    if bpy_python is None:
        pytest.skip("no Python with the bpy 5 module (scripts/test.sh makes .venv-bpy)")
    blend = make_format_scene(str(tmp_path / "shot.blend"), blender=BLENDER, frames=1, resolution=RESOLUTION,
                              file_format="OPEN_EXR_MULTILAYER", passes=True, engine=WORKBENCH)
    completed = subprocess.run([bpy_python, "-c", BPY5_PREVIEW_CHECK, blend, str(tmp_path / "out"),
                                os.path.join(ROOT, "worker")], capture_output=True, text=True, timeout=300)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["unchanged"], "the scene's output settings were not put back"
    with open(result["preview"], "rb") as handle:
        assert png_size_and_depth(handle.read()) == (*RESOLUTION, 8)
