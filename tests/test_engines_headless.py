"""EEVEE and Workbench on headless workers (issue 16): a worker with no DISPLAY renders them pixel for pixel as a
local render of the same file does; a Blender that cannot get an OpenGL context gets no EEVEE frames (the task waits
with its reason), and with Xvfb at hand the worker renders them on a virtual display instead.

The OpenGL-less Blender: Debian's 3.4 gets its headless context through EGL, whose vendor libraries glvnd finds in
the folders of __EGL_VENDOR_LIBRARY_DIRS; pointed at an empty folder, EGL has no vendor and Blender aborts on the
first EEVEE or Workbench frame ("Couldn't find current GLX or EGL context"). Under Xvfb it uses GLX and renders.
"""

from __future__ import annotations

import io
import os
import subprocess

import pytest
from harness import Process, _env, find_blender_or_none, wait_for
from PIL import Image
from scenes import with_engine

BLENDER = find_blender_or_none()
pytestmark = pytest.mark.skipif(BLENDER is None, reason="needs Blender")


@pytest.fixture(scope="module")
def engine_scenes(tmp_path_factory):
    """A small scene saved twice: rendering with EEVEE, and with Workbench."""
    from scenes import make_scene

    folder = tmp_path_factory.mktemp("engine-scenes")
    cycles = make_scene(str(folder / "base.blend"), blender=BLENDER, frames=1, resolution=(48, 27), samples=1)
    return {engine: with_engine(cycles, engine, str(folder / f"{engine.lower()}.blend"), BLENDER)
            for engine in ("BLENDER_EEVEE", "BLENDER_WORKBENCH")}


def headless_env(tmp_path, *, without_opengl: bool = False, xvfb: bool = True) -> dict[str, str]:
    """The worker's environment: no DISPLAY; optionally no EGL vendor (no OpenGL context for Blender) and a PATH
    that holds Xvfb or nothing at all."""
    env = _env()
    env.pop("DISPLAY", None)
    if without_opengl:
        empty = tmp_path / "no-egl-vendors"
        empty.mkdir(exist_ok=True)
        env["__EGL_VENDOR_LIBRARY_DIRS"] = str(empty)
        bin_dir = tmp_path / ("bin-with-xvfb" if xvfb else "bin-empty")
        bin_dir.mkdir(exist_ok=True)
        if xvfb and not (bin_dir / "Xvfb").exists():
            os.symlink("/usr/bin/Xvfb", bin_dir / "Xvfb")
        env["PATH"] = str(bin_dir)
    return env


def start_worker(farm, name: str, env: dict[str, str]) -> Process:
    """Farm.start_worker with an environment of the test's own."""
    env = {**env, "RENDERQ_TOKEN": farm.token("worker")}
    worker = Process(["worker", "--coordinator", farm.url, "--name", name, "--threads", "1", "--blender", BLENDER,
                      "--work-dir", os.path.join(farm.root, f"work-{name}")],
                     os.path.join(farm.root, f"worker-{name}.log"), env=env)
    farm.workers[name] = worker
    wait_for(lambda: farm._registered(name, worker), 90, f"worker {name} to register")
    return worker


def local_render(blend: str, out_dir, env: dict[str, str]) -> Image.Image:
    """Frame 1 of `blend` rendered by `blender -b` in `env`."""
    done = subprocess.run([BLENDER, "-b", "-Y", blend, "-o", str(out_dir / "local_####"), "-f", "1"], env=env,
                          capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout.decode(errors="replace")[-2000:]
    return Image.open(out_dir / "local_0001.png")


def farm_frame(farm, task_id: int) -> Image.Image:
    status, data = farm.api.call("GET", f"/download_frame?task_id={task_id}&frame=1")
    assert status == 200
    return Image.open(io.BytesIO(data))


@pytest.mark.skipif(not os.path.exists("/usr/bin/Xvfb"), reason="needs Xvfb")
def test_a_worker_without_opengl_gets_no_eevee_frames_and_one_with_xvfb_renders_them(farm, engine_scenes,
                                                                                     tmp_path):
    farm.start_coordinator()
    no_gl = start_worker(farm, "no-gl", headless_env(tmp_path, without_opengl=True, xvfb=False))
    described = farm.api.workers()["no-gl"]
    assert described["engines"] == ["CYCLES"]
    assert "not EEVEE (Blender crashed rendering it" in no_gl.output()
    task_id = farm.api.submit(engine_scenes["BLENDER_EEVEE"], 1, 1, render_engine="BLENDER_EEVEE")
    reason = wait_for(lambda: farm.api.task(task_id)["waiting_reason"], 30, "the task's waiting reason")
    assert reason == "waiting: no live worker can render EEVEE"
    assert farm.api.task(task_id)["progress"]["queued"] == 1

    with_xvfb = start_worker(farm, "with-xvfb", headless_env(tmp_path, without_opengl=True, xvfb=True))
    assert "engines: Cycles, EEVEE, Workbench (on a virtual display: Xvfb)" in with_xvfb.output()
    task = farm.api.wait_task_ended(task_id, 180)
    assert task["status"] == "done"
    assert [frame["worker"] for frame in task["frames"]] == ["with-xvfb"]
    assert farm_frame(farm, task_id).size == (48, 27)


@pytest.mark.parametrize("engine", ["BLENDER_EEVEE", "BLENDER_WORKBENCH"])
def test_a_headless_worker_renders_eevee_and_workbench_as_a_local_render(farm, engine_scenes, tmp_path, engine):
    env = headless_env(tmp_path)
    farm.start_coordinator()
    start_worker(farm, "headless", env)
    assert engine in farm.api.workers()["headless"]["engines"]
    task_id = farm.api.submit(engine_scenes[engine], 1, 1, render_engine=engine)
    task = farm.api.wait_task_ended(task_id, 180)
    assert task["status"] == "done", task
    rendered = farm_frame(farm, task_id)
    local = local_render(engine_scenes[engine], tmp_path, env)
    assert (rendered.mode, rendered.size) == (local.mode, local.size)
    assert rendered.tobytes() == local.tobytes()
