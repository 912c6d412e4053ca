"""Untrusted input: Python inside .blend files, frames that hang, and names from the coordinator that could lead a
download out of its folder.

The farm tests run a real coordinator and workers with the real Blender. The download tests talk to a small stand-in
coordinator, since the real one never hands out a hostile name.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import Farm, find_blender_or_none, wait_for
from renderq import cli

BLENDER = find_blender_or_none()
needs_blender = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")

FAST = ("--heartbeat", "1", "--alive-timeout", "4")
SMALL = {"resolution": (64, 36), "samples": 4}


@pytest.fixture
def markers(tmp_path, monkeypatch):
    """The folder the test scenes' Python writes its markers into. Workers started from now on inherit the variable
    naming it, and their Blender inherits it from them."""
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv("RENDERQ_TEST_MARKER_DIR", str(folder))
    return folder


def marker_names(folder) -> list[str]:
    return sorted(os.listdir(folder))


# -- Python inside .blend files ---------------------------------------------------------------------------------------


@needs_blender
def test_python_in_a_file_runs_only_on_a_worker_that_allows_it(farm: Farm, scenes, markers):
    blend = scenes("python-marker", frames=3, python_marker=True, **SMALL)
    farm.start_coordinator(*FAST)
    farm.start_worker("careful")
    task_id = farm.api.submit(blend, 1, 3, name="scripted")

    # The worker opens the file with scripts off, finds its Python and gives the frame back: the task now waits.
    task = wait_for(lambda: (t := farm.api.task(task_id))["waiting_reason"] and t, 120,
                    "the task to wait for a worker that allows Python")
    assert "--allow-blend-python" in task["waiting_reason"] and "Python" in task["waiting_reason"]
    assert task["needs_python"] is True
    assert task["progress"]["done"] == 0 and task["progress"]["failed"] == 0
    assert all(frame["status"] == "queued" and not frame.get("failures") for frame in task["frames"])
    assert farm.api.workers()["careful"]["allows_python"] is False
    # The worker's log says why (it reaches the coordinator shortly after the report).
    log = wait_for(lambda: (text := farm.api.get(f"/get_log?task_id={task_id}")["text"])
                   and "not rendered on this worker" in text and text, 30, "the log to say why")
    assert "renderq_marker.py" in log and "--allow-blend-python" in log
    assert marker_names(markers) == []

    farm.start_worker("trusting", "--allow-blend-python")
    assert farm.api.workers()["trusting"]["allows_python"] is True
    task = farm.api.wait_task_ended(task_id, 300)
    assert task["status"] == "done", task
    assert {frame["worker"] for frame in task["frames"]} == {"trusting"}
    # The file's registered text block and its scripted driver ran for every frame, on the worker that allows it.
    names = set(marker_names(markers))
    assert {f"frame_{n:04d}" for n in (1, 2, 3)} <= names
    assert {f"driver_{n:04d}" for n in (1, 2, 3)} <= names
    assert "Traceback" not in farm.workers["careful"].output()


@needs_blender
def test_a_hung_frame_is_stopped_and_rendered_again_by_a_fresh_blender(farm: Farm, scenes, markers):
    blend = scenes("hang-frame-2", frames=4, hang_frames=[2], **SMALL)
    farm.start_coordinator(*FAST)
    farm.start_worker("trusting", "--allow-blend-python")
    task_id = farm.api.submit(blend, 1, 4, name="hangs", needs_python=True, frame_timeout=20,
                              no_progress_timeout=15)
    submitted = farm.api.task(task_id)
    assert (submitted["frame_timeout"], submitted["no_progress_timeout"]) == (20, 15), submitted

    task = farm.api.wait_task_ended(task_id, 400)
    assert task["status"] == "done", task
    assert task["progress"]["done"] == 4
    assert len({frame["output"] for frame in task["frames"]}) == 4
    assert farm.api.workers()["trusting"]["frames_done"] == 4
    attempts = {frame["frame"]: frame["attempts"] for frame in task["frames"]}
    assert attempts == {1: 1, 2: 2, 3: 1, 4: 1}, task["frames"]
    assert farm.api.workers()["trusting"]["frames_failed"] == 1
    # The first try of frame 2 hung (and recorded it); Blender was stopped and the failure says why.
    assert marker_names(markers) == ["hang_0002"]
    log = farm.api.get(f"/get_log?task_id={task_id}")["text"]
    assert "frame 2 failed: Blender made no progress for 15 s (no output) and was stopped" in log
    assert "hanging on frame 2" in log


# -- downloads never leave their folder ------------------------------------------------------------------------------


FRAME_BYTES = b"\x89PNG\r\n\x1a\n frame"
FRAME_SHA = hashlib.sha256(FRAME_BYTES).hexdigest()


class StandIn:
    """A coordinator that answers /task, /download_frame and /download_frames_zip with what a test sets."""

    def __init__(self) -> None:
        self.frame_name = "f_0001.png"  # what Content-Disposition names the frame
        self.listed_name = "f_0001.png"  # what the task's frame list names it
        self.downloads = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path == "/task":
                    frame = {"frame": 1, "status": "done", "output": stand_in.listed_name,
                             "output_sha256": FRAME_SHA}
                    body = json.dumps({"task_id": 7, "name": "t", "status": "done", "frames": [frame]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                elif path in ("/download_frame", "/download_frames_zip"):
                    stand_in.downloads += 1
                    body = FRAME_BYTES
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    name = stand_in.frame_name.replace("\\", "\\\\")
                    self.send_header("Content-Disposition", f'attachment; filename="{name}"')
                else:
                    body = b'{"error": "no such thing"}'
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    server.close()


@pytest.fixture
def outside(tmp_path):
    """A folder next to the download folder with one file in it, which no download may touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    return folder


def assert_untouched(outside) -> None:
    assert sorted(os.listdir(outside)) == ["keep.txt"] and (outside / "keep.txt").read_text() == "mine"


def download(stand_in: StandIn, dest, *extra: str) -> int:
    return cli.main(["download", "7", str(dest), "--coordinator", stand_in.url, *extra])


def test_a_plain_download_lands_in_its_folder(stand_in, tmp_path, capsys):
    dest = tmp_path / "frames"
    assert download(stand_in, dest) == 0
    assert (dest / "f_0001.png").read_bytes() == FRAME_BYTES


@pytest.mark.parametrize("name", ["../outside/evil.png", "..\\outside\\evil.png", "/tmp/evil.png", "C:evil.png",
                                  "c:\\evil.png", "sub/evil.png", ".."])
def test_a_frame_name_that_leaves_the_folder_is_refused(stand_in, tmp_path, outside, capsys, name):
    stand_in.frame_name = stand_in.listed_name = name
    dest = tmp_path / "frames"
    assert download(stand_in, dest) != 0
    error = capsys.readouterr().err.splitlines()
    assert error[-2].startswith("renderq: frame 1 of task 7 skipped: the file name ")
    assert error[-1] == "renderq: 1 of the 1 rendered frame(s) of task 7 skipped"
    assert_untouched(outside)
    assert not dest.exists() or os.listdir(dest) == []
    assert stand_in.downloads == 0


@pytest.mark.parametrize("same_bytes", [True, False])
def test_a_link_planted_in_the_download_folder_is_not_written_through(stand_in, tmp_path, outside, capsys,
                                                                      same_bytes):
    dest = tmp_path / "frames"
    dest.mkdir()
    target = outside / "keep.txt"
    if same_bytes:
        # Would pass for the frame already downloaded if the link were read through.
        target.write_bytes(FRAME_BYTES)
    os.symlink(target, dest / "f_0001.png")
    before = target.read_bytes()
    assert download(stand_in, dest) != 0
    error = capsys.readouterr().err
    assert "f_0001.png is a symbolic link; refusing to write through it" in error
    assert target.read_bytes() == before and os.path.islink(dest / "f_0001.png")
    assert stand_in.downloads <= 1


def test_a_link_planted_where_the_zip_goes_is_not_written_through(stand_in, tmp_path, outside, capsys):
    dest = tmp_path / "frames"
    dest.mkdir()
    os.symlink(outside / "keep.txt", dest / "renderq-7.zip")
    assert download(stand_in, dest, "--zip") != 0
    assert "renderq-7.zip is a symbolic link" in capsys.readouterr().err
    assert_untouched(outside)
    assert sorted(os.listdir(dest)) == ["renderq-7.zip"]  # no temporary file left behind


def test_a_hostile_name_in_the_frame_list_is_not_used_for_local_files(stand_in, tmp_path, outside, capsys):
    # The frame list names a file outside; the download itself would come under a plain name.
    (outside / "keep.txt").write_bytes(FRAME_BYTES)
    stand_in.listed_name = "../outside/keep.txt"
    dest = tmp_path / "frames"
    assert download(stand_in, dest) == 1
    assert stand_in.downloads == 0  # skipped, not "already there" because of the file outside
    assert "frame 1 of task 7 skipped" in capsys.readouterr().err
    assert (outside / "keep.txt").read_bytes() == FRAME_BYTES
    assert os.listdir(dest) == []


def test_a_hostile_name_in_the_download_header_is_not_used_for_local_files(stand_in, tmp_path, outside, capsys):
    # The frame list names the frame plainly; the coordinator's answer names a file outside.
    stand_in.frame_name = "../outside/keep.txt"
    dest = tmp_path / "frames"
    assert download(stand_in, dest) == 0
    assert_untouched(outside)
    assert os.listdir(dest) == ["f_0001.png"] and (dest / "f_0001.png").read_bytes() == FRAME_BYTES
