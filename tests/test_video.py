"""A task's video: encoded on the farm with FFmpeg once every frame is done, as the task's last, fenced job.

Real coordinator, real workers with Blender 3.4, real FFmpeg (ffprobe checks what came out), real HTTP. Scenes are
tiny (32x18, one sample) so each test takes seconds of rendering.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import wave

import pytest

from harness import ROOT, Api, find_blender_or_none, wait_for
from test_addon_blender34 import addon_zip, run_addon  # noqa: F401 - addon_zip: its fixture
from renderq.model import VIDEO_FRAME
from renderq.scenes import make_scene

BLENDER = find_blender_or_none()
FFMPEG, FFPROBE = shutil.which("ffmpeg"), shutil.which("ffprobe")
FAST = ("--heartbeat", "1", "--alive-timeout", "4")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
# RENDERQ_SCREENSHOTS=DIR saves the task page with its video into DIR (the README's picture: RENDERQ_SCREENSHOTS=docs).
SCREENSHOTS = os.environ.get("RENDERQ_SCREENSHOTS")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIDEO_SCENE_SCRIPT = os.path.join(ROOT, "tests", "blender_scripts", "video_scene.py")
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a73000000164944415478da63f8cfc0f09f81e13f03c3"
    "7f060600437a07f9b9c0b4a40000000049454e44ae426082")

pytestmark = [
    pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)"),
    pytest.mark.skipif(FFMPEG is None or FFPROBE is None,
                       reason="FFmpeg is not installed (scripts/test.sh installs it)"),
]


def renderq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `renderq` command line, in its own process."""
    return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def write_tone(path: str, seconds: float = 1.0, rate: int = 48000) -> None:
    """A 440 Hz stereo tone as a 16-bit WAV file."""
    with wave.open(path, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        samples = (int(12000 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(int(seconds * rate)))
        out.writeframes(b"".join(struct.pack("<hh", s, s) for s in samples))


def video_scene(folder: str, *, fps: int, movie: bool = False, sound: bool = False) -> str:
    """A 12-frame scene at `fps` in a project folder of its own; with `movie` its output is an MP4 (H.264), with
    `sound` it plays a tone from a sound strip."""
    os.makedirs(folder, exist_ok=True)
    blend = make_scene(os.path.join(folder, "shot.blend"), blender=BLENDER, frames=12, resolution=(32, 18),
                       samples=1)
    options = ["--fps", str(fps)] + (["--movie"] if movie else [])
    if sound:
        write_tone(os.path.join(folder, "tone.wav"))
        options += ["--sound", os.path.join(folder, "tone.wav")]
    subprocess.run([BLENDER, "-b", "-Y", "--factory-startup", blend, "--python", VIDEO_SCENE_SCRIPT, "--", *options],
                   check=True, capture_output=True, timeout=120)
    return blend


def probe(path: str) -> dict:
    """ffprobe's view of a video: its streams, with the video stream's frames counted."""
    out = subprocess.run([FFPROBE, "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json",
                          path], check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def video_stream(info: dict) -> dict:
    return next(s for s in info["streams"] if s["codec_type"] == "video")


def start_farm(farm, *worker_extra: str) -> None:
    farm.start_coordinator(*FAST)
    farm.start_worker("w1", *worker_extra)


@pytest.mark.timeout(300)
def test_a_task_with_video_mp4_ends_done_with_a_video_ffprobe_confirms(farm, tmp_path) -> None:
    blend = video_scene(str(tmp_path / "project"), fps=25)
    start_farm(farm)
    farm.start_worker("w2", "--ffmpeg", "none")
    workers = farm.api.workers()
    assert workers["w1"]["video_encoders"].startswith("ffmpeg ") and "libx264" in workers["w1"]["video_encoders"]
    assert "video: ffmpeg" in farm.workers["w1"].output()
    assert workers["w2"]["video_encoders"] == "" and "video: none" in farm.workers["w2"].output()
    out = tmp_path / "out"

    submitted = renderq("submit", blend, "--video", "mp4", "--wait", "--output", str(out), *farm.cli_flags())

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    task_id = int(submitted.stdout.split("submitted task ")[1].split()[0])
    task = farm.api.task(task_id)
    assert task["status"] == "done" and task["video"] == {"container": "mp4"}
    assert task["progress"]["done"] == task["progress"]["total"] == 13  # 12 frames and the video
    assert task["frames"][-1]["kind"] == "encode" and task["frames"][-1]["worker"] == "w1"  # w2 has no FFmpeg
    files = sorted(os.listdir(out))
    assert [f for f in files if f.endswith(".png")] == [f"f_{n:04d}.png" for n in range(1, 13)]
    assert "shot.mp4" in files  # the default download brings the video with the frames
    stream = video_stream(probe(str(out / "shot.mp4")))
    assert stream["codec_name"] == "h264"
    assert int(stream["nb_read_frames"]) == 12
    assert stream["r_frame_rate"] == "25/1"

    only = renderq("download", str(task_id), str(tmp_path / "only"), "--video", *farm.cli_flags())
    assert only.returncode == 0, only.stderr
    assert os.listdir(tmp_path / "only") == ["shot.mp4"]


@pytest.mark.timeout(300)
def test_a_movie_output_scene_with_sound_gives_png_frames_and_the_scenes_mp4_with_audio(farm, tmp_path) -> None:
    blend = video_scene(str(tmp_path / "project"), fps=24, movie=True, sound=True)
    start_farm(farm)
    out = tmp_path / "out"

    submitted = renderq("submit", blend, "--wait", "--output", str(out), *farm.cli_flags())  # no --video

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "writes a movie" in submitted.stdout
    files = sorted(os.listdir(out))
    assert [f for f in files if f.endswith(".png")] == [f"movie_{n:04d}.png" for n in range(1, 13)]
    assert [f for f in files if not f.endswith(".png")] == ["shot.mp4"]  # not twelve one-frame movies
    info = probe(str(out / "shot.mp4"))
    stream = video_stream(info)
    assert stream["codec_name"] == "h264" and stream["r_frame_rate"] == "24/1"
    assert int(stream["nb_read_frames"]) == 12
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert len(audio) == 1 and audio[0]["codec_name"] == "aac"


@pytest.mark.timeout(400)
def test_the_addon_submits_a_movie_output_scene_unchanged_and_opens_its_video(farm, tmp_path, request) -> None:
    built = request.getfixturevalue("addon_zip")  # built as tests/test_addon_blender34.py builds it
    blend = video_scene(str(tmp_path / "project"), fps=24, movie=True)
    start_farm(farm)

    result = run_addon(tmp_path, built, farm.url, "movie", blend, token=farm.token("artist"))

    assert "farm makes the movie" in result["note"]
    task = farm.api.task(result["task_id"])
    assert task["status"] == "done" and task["video"] == {"container": "scene"}
    outputs = [f["output"] for f in task["frames"]]
    assert outputs == [f"movie_{n:04d}.png" for n in range(1, 13)] + ["shot.mp4"]
    video = os.path.join(os.path.dirname(blend), "render", "shot.mp4")
    assert result["video"] == f"The video of task {task['task_id']} is {video}"
    stream = video_stream(probe(video))
    assert (stream["codec_name"], stream["r_frame_rate"], int(stream["nb_read_frames"])) == ("h264", "24/1", 12)


def register(api: Api, name: str, encoders: str = "") -> int:
    body = {"name": name, "blender_version": "3.4.1", **({"video_encoders": encoders} if encoders else {})}
    return api.post("/register_worker", body)["worker_id"]


def claim(api: Api, worker_id: int) -> dict | None:
    return api.post("/frames/claim", {"worker_id": worker_id})["frame"]


def finish(api: Api, worker_id: int, frame: dict, filename: str, data: bytes) -> int:
    query = (f"/frames/finish?worker_id={worker_id}&task_id={frame['task_id']}&frame={frame['frame']}"
             f"&lease_id={frame['lease_id']}&filename={filename}")
    return api.call("POST", query, raw=data, content_type="application/octet-stream")[0]


@pytest.mark.both_databases
def test_the_encode_job_goes_to_a_worker_with_ffmpeg_and_is_fenced(farm, tmp_path) -> None:
    farm.start_coordinator(*FAST)
    api = farm.api
    blend = tmp_path / "tiny.blend"
    blend.write_bytes(b"BLENDER-v304REND" + b"\0" * 64)
    task_id = api.submit(str(blend), 1, 2, video={"container": "mp4"})
    plain = register(api, "no-ffmpeg")
    for _ in range(2):
        frame = claim(api, plain)
        assert frame is not None and frame.get("kind", "render") == "render"
        assert finish(api, plain, frame, f"f_{frame['frame']:04d}.png", PNG_1PX) == 200

    # Every frame is done: the task waits for its video, which the worker without FFmpeg is never given.
    assert claim(api, plain) is None
    task = api.task(task_id)
    assert task["status"] == "running" and "FFmpeg" in (task["waiting_reason"] or "")
    encoder = register(api, "encoder", "ffmpeg 5.1 (libx264)")
    job = claim(api, encoder)
    assert job["kind"] == "encode" and job["frame"] == VIDEO_FRAME
    assert job["video"] == {"container": "mp4"}
    listed = api.get(f"/video_frames?task_id={task_id}")
    assert [(f["frame"], f["output"]) for f in listed["frames"]] == [(1, "f_0001.png"), (2, "f_0002.png")]
    assert listed["frames_next"] is None
    assert [f["frame"] for f in api.get(f"/video_frames?task_id={task_id}&frames_after=1")["frames"]] == [2]

    # The encoder loses its lease (it registers again, as a restarted worker does): its video is refused, the job
    # goes back to the queue, and only the new lease delivers.
    register(api, "encoder", "ffmpeg 5.1 (libx264)")
    assert finish(api, encoder, job, "tiny.mp4", b"\0\0\0\x18ftypisom" + b"\0" * 64) == 409
    assert api.task(task_id)["status"] == "running"
    again = claim(api, encoder)
    assert again["frame"] == VIDEO_FRAME and again["lease_id"] != job["lease_id"]
    assert finish(api, encoder, again, "tiny.mp4", b"\0\0\0\x18ftypisom" + b"\0" * 64) == 200
    task = api.task(task_id)
    assert task["status"] == "done"
    assert [f["kind"] for f in task["frames"]] == ["render", "render", "encode"]


def test_ffmpeg_is_offered_beside_engines_and_tags_and_the_encode_job_needs_both(farm, tmp_path) -> None:
    """A worker's FFmpeg is one more thing it offers: registered with its devices, engines and tags, shown in
    `renderq workers` and the farm page's feed, and the encode job of a tagged task goes only to a worker with the
    tag and FFmpeg."""
    farm.start_coordinator(*FAST)
    api = farm.api
    blend = tmp_path / "tiny.blend"
    blend.write_bytes(b"BLENDER-v304REND" + b"\0" * 64)
    task_id = api.submit(str(blend), 1, 1, video={"container": "mp4"}, tags=["lighting"])
    register_body = {"blender_version": "3.4.1", "engines": ["CYCLES"]}
    renderer = api.post("/register_worker", {"name": "renderer", "tags": ["lighting"], **register_body})["worker_id"]
    untagged = api.post("/register_worker", {"name": "untagged", "video_encoders": "ffmpeg 5.1 (libx264)",
                                             **register_body})["worker_id"]
    frame = claim(api, renderer)
    assert frame is not None and finish(api, renderer, frame, "f_0001.png", PNG_1PX) == 200

    assert claim(api, untagged) is None and claim(api, renderer) is None
    assert api.task(task_id)["waiting_reason"] == "waiting: its video is to be encoded and no live worker has FFmpeg"
    encoder = api.post("/register_worker", {"name": "encoder", "tags": ["lighting"],
                                            "video_encoders": "ffmpeg 5.1 (libx264)", **register_body})["worker_id"]
    job = claim(api, encoder)
    assert job is not None and job["kind"] == "encode"

    listed = renderq("workers", *farm.cli_flags())
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert "VIDEO" in header.split()
    shown = {row.split()[0]: row for row in rows}
    assert "ffmpeg 5.1 (libx264)" in shown["encoder"] and "ffmpeg 5.1 (libx264)" in shown["untagged"]
    assert "ffmpeg" not in shown["renderer"]
    # The farm page's Offers cell shows it from the page's feed.
    page_workers = {w["name"]: w for w in api.get("/status/updates")["snapshot"]["workers"].values()}
    assert (page_workers["encoder"]["video"], page_workers["renderer"]["video"]) == ("ffmpeg 5.1 (libx264)", "")


@pytest.mark.both_databases
def test_an_encode_that_keeps_failing_on_the_one_ffmpeg_worker_fails_the_task_with_its_error(farm, tmp_path) -> None:
    farm.start_coordinator(*FAST)
    api = farm.api
    blend = tmp_path / "tiny.blend"
    blend.write_bytes(b"BLENDER-v304REND" + b"\0" * 64)
    task_id = api.submit(str(blend), 1, 1, video={"container": "webm"})
    worker_id = register(api, "encoder", "ffmpeg 5.1 (libvpx-vp9)")
    frame = claim(api, worker_id)
    assert finish(api, worker_id, frame, "f_0001.png", PNG_1PX) == 200
    error = "FFmpeg failed (exit code 1): Error while opening encoder"
    for attempt in range(3):  # the coordinator's frame_fail_workers, counted on one worker for the encode job
        job = claim(api, worker_id)
        assert job is not None and job["kind"] == "encode", (attempt, job)
        api.post("/update_task", {"worker_id": worker_id, "task_id": task_id, "frame": VIDEO_FRAME,
                                  "lease_id": job["lease_id"], "status": "failed", "error": error,
                                  "log_tail": "[libvpx-vp9] lines\n" + error})
    task = api.task(task_id)
    assert task["status"] == "failed" and task["failed_frames"] == [VIDEO_FRAME]
    encode = next(f for f in task["frames"] if f["kind"] == "encode")
    assert encode["status"] == "failed" and encode["error"] == error and encode["attempts"] == 3
    shown = renderq("status", str(task_id), *farm.cli_flags())
    assert f"video      webm: failed: {error}" in shown.stdout, shown.stdout + shown.stderr


def test_a_failing_encode_reports_ffmpegs_last_lines(tmp_path) -> None:
    """A frame FFmpeg cannot read fails the encode with FFmpeg's own last lines (the real Blender reads the scene,
    the real FFmpeg fails)."""
    from renderq.model import Lease
    from worker.encode import EncodeJob, encode_video

    blend = video_scene(str(tmp_path / "project"), fps=24)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture at all")
    lease = Lease.from_dict({"task_id": 7, "frame": VIDEO_FRAME, "lease_id": "x", "blend_sha256": "0" * 64,
                             "blend_filename": "shot.blend", "task_name": "shot", "kind": "encode",
                             "video": {"container": "mp4"}})
    job = EncodeJob(lease=lease, ffmpeg=FFMPEG, blender=BLENDER, work_dir=str(tmp_path / "work"),
                    output_dir=str(tmp_path), download=lambda _sha, path: shutil.copy(broken, path),
                    list_frames=lambda: [{"frame": 1, "output": "f_0001.png", "sha256": "1" * 64}],
                    blend_path=lambda: blend, should_stop=lambda: False, on_log_line=lambda _line: None)

    result = encode_video(job)

    assert not result.ok and not result.aborted
    assert result.error.startswith("FFmpeg failed (exit code ")
    assert "Invalid PNG signature" in result.log_tail  # FFmpeg's own words about the frame it could not read
    assert result.log_tail.splitlines()[-1] in result.error
    assert not os.path.exists(tmp_path / "work" / "encode-7")  # nothing left behind


def deliver_video_task(api: Api, tmp_path, video: bytes, filename: str) -> int:
    """A task with a video, its two frames and its video delivered over the workers' API."""
    blend = tmp_path / "tiny.blend"
    blend.write_bytes(b"BLENDER-v304REND" + b"\0" * 64)
    task_id = api.submit(str(blend), 1, 2, name="clip", video={"container": "mp4"})
    worker_id = register(api, "encoder", "ffmpeg 5.1 (libx264)")
    for _ in range(3):
        frame = claim(api, worker_id)
        name = filename if frame.get("kind") == "encode" else f"f_{frame['frame']:04d}.png"
        assert finish(api, worker_id, frame, name, video if frame.get("kind") == "encode" else PNG_1PX) == 200
    assert api.task(task_id)["status"] == "done"
    return task_id


def test_the_task_page_plays_the_video_in_chromium(farm, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed "
                                   "(source scripts/setup-browser.sh to install it)")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (source scripts/setup-browser.sh to install it)")
    clip = tmp_path / "clip.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x36:rate=24:duration=0.5",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(clip)], check=True)
    farm.start_coordinator(*FAST)
    task_id = deliver_video_task(farm.api, tmp_path, clip.read_bytes(), "clip.mp4")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # The page's own Content-Security-Policy stays on: the video must load under it.
            page = browser.new_context().new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(farm.url + "/")
            page.fill("#token", farm.api.token)
            page.click("button[type=submit]")
            page.wait_for_url(farm.url + "/")
            page.goto(f"{farm.url}/tasks/{task_id}")
            state = wait_for(lambda: page.evaluate(
                "(() => { const v = document.getElementById('task-video');"
                " return v && !v.hidden && v.readyState >= 1 && !v.error"
                " && {duration: v.duration, width: v.videoWidth,"
                " link: document.getElementById('video-link').getAttribute('href')}; })()"), 30,
                "the video to load in the page")
            if SCREENSHOTS:
                os.makedirs(SCREENSHOTS, exist_ok=True)
                page.set_viewport_size({"width": 1440, "height": 900})
                page.wait_for_timeout(1000)  # the progress bar's transition
                page.screenshot(path=os.path.join(SCREENSHOTS, "status-video.png"))
        finally:
            browser.close()
    assert abs(state["duration"] - 0.5) < 0.1 and state["width"] == 64
    assert state["link"] == f"/download_frame?task_id={task_id}&frame={VIDEO_FRAME}"
    assert errors == []


def test_the_scenes_rate_is_kept_exactly_and_its_container_and_codec_are_ffmpegs_own(tmp_path) -> None:
    """30 / 1.001 fps stays 30000/1001; a scene set to QuickTime/ProRes or WebM/VP9 gets that from the real FFmpeg."""
    from fractions import Fraction

    from worker.encode import ffmpeg_command, frame_rate

    assert frame_rate({"fps": 30, "fps_base": 1.001}) == Fraction(30000, 1001)
    frames = tmp_path / "frames"
    frames.mkdir()
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=33x19:rate=24", "-frames:v", "6",
                    str(frames / "%06d.png")], check=True)
    cases = {"mov": ({"format": "QUICKTIME", "codec": "PRORES"}, "prores"),
             "webm": ({"format": "WEBM", "codec": "WEBM", "crf": "HIGH"}, "vp9")}
    for extension, (settings, codec) in cases.items():
        scene = {"fps": 30, "fps_base": 1.001, "is_movie": True, **settings}
        out = tmp_path / f"out.{extension}"
        subprocess.run(ffmpeg_command(FFMPEG, "scene", scene, str(frames / "%06d.png"), None, str(out)),
                       check=True, timeout=120)
        stream = video_stream(probe(str(out)))
        assert (stream["codec_name"], stream["r_frame_rate"], int(stream["nb_read_frames"])) == \
            (codec, "30000/1001", 6), extension
