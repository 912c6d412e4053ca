"""The `renderq` command line: parsing, help, error sentences and exit statuses, and the client commands against a
small standard-library stand-in for the coordinator."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from harness import find_blender_or_none, free_port

from renderq import cli, packing
from renderq.http_client import CoordinatorClient
from renderq.packing import PackedFile, PackResult
from renderq.progress import format_frame_list
from renderq.units import format_bytes, format_duration

CLIENT_COMMANDS = [
    "submit", "status", "workers", "worker-enable", "worker-disable", "cancel", "download", "logs", "disk",
    "delete-files",
]


@pytest.fixture
def blend_file(tmp_path):
    path = tmp_path / "shot_010.blend"
    path.write_bytes(b"BLENDER-v304" + b"\0" * 64)
    return path


# -- parsing ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("1-250", (1, 250)), ("5", (5, 5)), ("0", (0, 0)), (" 3 - 4 ", (3, 4))])
def test_parse_frames_accepts(text: str, expected: tuple[int, int]) -> None:
    assert cli.parse_frames(text) == expected


@pytest.mark.parametrize("text", ["0-", "10-3", "-5", "a-b", "1-2-3", ""])
def test_parse_frames_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_frames(text)


@pytest.mark.parametrize("frames, phrase", [("0-", "not a frame"), ("10-3", "ends before it starts")])
def test_bad_frames_exit_2_with_a_sentence(blend_file, capsys, frames: str, phrase: str) -> None:
    assert cli.main(["submit", str(blend_file), "--frames", frames]) == 2
    err = capsys.readouterr().err
    assert phrase in err
    assert "Traceback" not in err


def test_submit_options_parse(blend_file) -> None:
    args = cli.build_parser("submit").parse_args(
        ["submit", str(blend_file), "--frames", "1-250", "--step", "2", "--worker", "a", "--worker", "b",
         "--priority", "5", "--wait", "--output", "out"]
    )
    assert args.frames == (1, 250)
    assert args.step == 2
    assert args.worker == ["a", "b"]
    assert args.priority == 5 and args.wait and args.output == "out"


def test_output_needs_wait(blend_file, capsys) -> None:
    assert cli.main(["submit", str(blend_file), "--frames", "1", "--output", "x"]) == 2
    assert "--wait" in capsys.readouterr().err


def test_submit_missing_file_is_bad_input(tmp_path, capsys) -> None:
    assert cli.main(["submit", str(tmp_path / "nope.blend"), "--frames", "1-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"renderq: {tmp_path / 'nope.blend'} is not a file"


def test_submit_without_frames_or_blender_asks_for_frames(blend_file, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RENDERQ_BLENDER", str(blend_file.parent / "no-blender-here"))
    assert cli.main(["submit", str(blend_file)]) == 2
    assert "--frames" in capsys.readouterr().err


def test_bad_task_id(capsys) -> None:
    assert cli.main(["cancel", "seven"]) == 2
    assert "task id" in capsys.readouterr().err


def test_coordinator_default_comes_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("RENDERQ_COORDINATOR", "http://farm:5000")
    assert cli.build_parser("status").parse_args(["status"]).coordinator == "http://farm:5000"
    monkeypatch.delenv("RENDERQ_COORDINATOR")
    assert cli.build_parser("status").parse_args(["status"]).coordinator == cli.DEFAULT_COORDINATOR


# -- help ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[]] + [[name] for name in CLIENT_COMMANDS + ["demo"]])
def test_help_works(command: list[str], capsys) -> None:
    assert cli.main(command + ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: renderq")


@pytest.mark.parametrize("command, module", [("coordinator", "coordinator.server"), ("worker", "worker.command_line")])
def test_help_of_server_parts(command: str, module: str, capsys) -> None:
    assert importlib.util.find_spec(module) is not None
    assert cli.main([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: renderq {command}")


def test_every_flag_has_help() -> None:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"renderq {name} {action.option_strings or action.dest} has no help text"


def test_client_commands_do_not_import_flask() -> None:
    code = "import sys; from renderq import cli; cli.main(['status', '--help']); print('flask' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


# -- against an unreachable coordinator ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["workers"], ["cancel", "3"], ["logs", "3"], ["worker-enable", "a"]])
def test_unreachable_coordinator_is_one_sentence_exit_1(command: list[str], capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(command + ["--coordinator", url]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines == [f"renderq: cannot reach the coordinator at {url} (connection refused)"]
    assert captured.out == ""


def test_malformed_coordinator_url_is_bad_input(capsys) -> None:
    assert cli.main(["status", "--coordinator", "ftp://farm"]) == 2
    assert "not an http" in capsys.readouterr().err


# -- against a stand-in coordinator ----------------------------------------------------------------------------------

PNG = b"\x89PNG fake frame"
PNG_SHA = hashlib.sha256(PNG).hexdigest()


def finished_task() -> dict:
    """A task whose frame 1 rendered and frame 2 failed for good."""
    return {
        "task_id": 7, "name": "shot_010", "status": "failed", "priority": 0, "frame_start": 1, "frame_end": 2,
        "frame_step": 1, "workers": [], "submitted_by": "anna", "blend_sha256": "ab" * 32,
        "blend_filename": "shot_010.blend", "settings": {}, "created_at": 1.0, "started_at": 2.0, "ended_at": 9.0,
        "progress": {"total": 2, "done": 1, "failed": 1, "rendering": 0, "queued": 0, "percent": 50.0,
                     "eta_seconds": None, "workers_rendering": 0, "current": []},
        "failed_frames": [2],
        "frames": [
            {"frame": 1, "status": "done", "worker": "node-01", "attempts": 1, "render_seconds": 4.25,
             "output": "f_0001.png", "output_sha256": PNG_SHA, "output_size": len(PNG), "error": None},
            {"frame": 2, "status": "failed", "worker": "node-02", "attempts": 3, "render_seconds": None,
             "output": None, "output_sha256": None, "error": "Blender crashed", "log_tail": "..."},
        ],
    }


class FakeCoordinator:
    """Just enough of the API for the client commands; records the requests it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.log = "line one\nline two\n".encode()
        self.stored: dict[str, bytes] = {}
        self.task_fields: dict = {}
        self.zip_bytes = b"PK\x05\x06" + b"\0" * 18
        self.zip_status = 200
        # When set, the task controls answer 401 unless they carry `Authorization: Bearer <required_token>`.
        self.required_token: str | None = None
        self.authorizations: dict[str, str | None] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.requests.append((self.command, parts.path, query, body))
                fake.authorizations[parts.path] = self.headers.get("Authorization")
                path = parts.path
                controls = ("/set_task_priority", "/pause_task", "/resume_task", "/retry_failed_frames",
                            "/cancel_task", "/set_worker_enabled")
                if (path in controls and fake.required_token is not None
                        and self.headers.get("Authorization") != f"Bearer {fake.required_token}"):
                    self.answer(401, {"error": "this needs the admin token"})
                elif path in controls and path != "/set_worker_enabled":
                    request = json.loads(body)
                    status = {"/pause_task": "paused", "/cancel_task": "canceled"}.get(path, "running")
                    task = {**finished_task(), "status": status, "priority": request.get("priority", 0)}
                    task["progress"] = {**task["progress"], "queued": 1}
                    self.answer(200, task)
                elif path == "/missing_files":
                    hashes = json.loads(body)["sha256"]
                    if len(hashes) > 100_000:
                        self.answer(400, {"error": "too many hashes"})
                    else:
                        self.answer(200, {"missing": sorted({h for h in hashes if h not in fake.stored})})
                elif path == "/upload_file":
                    actual = hashlib.sha256(body).hexdigest()
                    if actual != query["sha256"]:
                        self.answer(400, {"error": f"the file's bytes hash to {actual}, not {query['sha256']}"})
                    else:
                        fake.stored[actual] = body
                        self.answer(200, {"sha256": actual, "size": len(body)})
                elif path == "/download_frames_zip" and fake.zip_status != 200:
                    error = f"task {query['task_id']} has no rendered frames to download"
                    self.answer(fake.zip_status, {"error": error})
                elif path == "/download_frames_zip":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/zip")
                    self.send_header("Content-Length", str(len(fake.zip_bytes)))
                    self.end_headers()
                    self.wfile.write(fake.zip_bytes)
                elif path == "/disk_usage":
                    self.answer(200, {"total": 100 * 2**30, "free": 40 * 2**30, "reserve": 2**30, "tasks": [
                        {"task_id": 7, "name": "shot_010", "status": "failed", "bytes": 3 * 2**20},
                        {"task_id": 5, "name": "shot_005", "status": "running", "bytes": 2**20}]})
                elif path == "/delete_task_files":
                    task_id = json.loads(body)["task_id"]
                    if task_id == 5:
                        self.answer(409, {"error": "task 5 is still running; cancel it first"})
                    else:
                        self.answer(200, {"task_id": task_id, "files_deleted": 12, "bytes_freed": 3 * 2**20})
                elif path == "/upload_blend":
                    self.answer(200, {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
                                      "filename": query["filename"]})
                elif path == "/submit_task":
                    self.answer(201, {**finished_task(), **json.loads(body), "status": "queued"})
                elif path == "/task":
                    if query["task_id"] != "7":
                        self.answer(404, {"error": f"there is no task {query['task_id']}"})
                    else:
                        self.answer(200, {**finished_task(), **fake.task_fields})
                elif path == "/tasks":
                    task = {**finished_task(), **fake.task_fields}
                    del task["frames"]
                    self.answer(200, {"tasks": [task]})
                elif path == "/download_frame":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PNG)))
                    self.send_header("Content-Disposition", 'attachment; filename="f_0001.png"')
                    self.end_headers()
                    self.wfile.write(PNG)
                elif path == "/get_log":
                    offset = int(query.get("offset", 0))
                    self.answer(200, {"text": fake.log[offset:].decode(), "offset": offset,
                                      "next_offset": len(fake.log)})
                elif path == "/set_worker_enabled":
                    request = json.loads(body)
                    self.answer(200, {"worker_id": 3, "name": request["name"], "enabled": request["enabled"]})
                else:
                    self.answer(404, {"error": f"no such path {path}"})

            do_GET = handle_any
            do_POST = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def paths(self) -> list[str]:
        return [request[1] for request in self.requests]


@pytest.fixture
def fake() -> Iterator[FakeCoordinator]:
    coordinator = FakeCoordinator()
    thread = threading.Thread(target=coordinator.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield coordinator
    coordinator.server.shutdown()
    coordinator.server.server_close()


class StandInPack:
    """Replaces renderq.packing.pack_project: a tree of three real files, main.blend "rewritten" into staging."""

    def __init__(self, tmp_path) -> None:
        self.project = tmp_path / "project"
        (self.project / "textures").mkdir(parents=True)
        (self.project / "textures" / "wood.png").write_bytes(b"wood texture" * 100)
        (self.project / "lib").mkdir()
        (self.project / "lib" / "prop.blend").write_bytes(b"BLENDER-v304 prop library")
        self.missing: list[str] = []
        self.staging_dirs: list[str] = []
        self.sha_override: dict[str, str] = {}

    def __call__(self, blend_path: str, staging_dir: str, *, project_root=None, progress=None) -> PackResult:
        self.staging_dirs.append(staging_dir)
        staged = os.path.join(staging_dir, "main.blend")
        with open(staged, "wb") as out:
            out.write(b"BLENDER-v304 rewritten main")
        sources = {"main.blend": staged, "textures/wood.png": str(self.project / "textures" / "wood.png"),
                   "lib/prop.blend": str(self.project / "lib" / "prop.blend")}
        files = []
        for tree_path, source in sorted(sources.items()):
            data = open(source, "rb").read()
            sha256 = self.sha_override.get(tree_path, hashlib.sha256(data).hexdigest())
            files.append(PackedFile(tree_path, sha256, len(data), source))
        return PackResult(main_file="main.blend", files=files, missing=list(self.missing), blender_version="3.4",
                          staging_dir=staging_dir, rewritten=["main.blend"], project_root=str(self.project))


@pytest.fixture
def stand_in_pack(tmp_path, monkeypatch) -> StandInPack:
    pack = StandInPack(tmp_path)
    monkeypatch.setattr(packing, "pack_project", pack)
    return pack


def submitted_body(fake: FakeCoordinator) -> dict:
    return json.loads(next(r for r in fake.requests if r[1] == "/submit_task")[3])


def test_submit_sends_the_task(fake: FakeCoordinator, stand_in_pack: StandInPack, blend_file, capsys) -> None:
    code = cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1-250", "--step", "2",
                     "--worker", "node-01", "--priority", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "submitted task 7" in out and "Blender 3.4 or newer" in out
    submitted = submitted_body(fake)
    assert submitted["name"] == "shot_010"
    assert submitted["main_file"] == "main.blend"
    assert [entry["path"] for entry in submitted["manifest"]] == ["lib/prop.blend", "main.blend", "textures/wood.png"]
    assert all(set(entry) == {"path", "sha256", "size"} for entry in submitted["manifest"])
    assert submitted["blender_version"] == "3.4" and submitted["blender_version_exact"] is False
    assert submitted["missing_assets"] == []
    assert (submitted["frame_start"], submitted["frame_end"], submitted["frame_step"]) == (1, 250, 2)
    assert submitted["workers"] == ["node-01"] and submitted["priority"] == 3
    # Every file of the manifest is on the coordinator before the task is submitted.
    assert {entry["sha256"] for entry in submitted["manifest"]} <= set(fake.stored)
    assert fake.paths().index("/submit_task") > max(i for i, p in enumerate(fake.paths()) if p == "/upload_file")
    # The staging folder (the rewritten main.blend) is gone afterwards.
    assert stand_in_pack.staging_dirs and not os.path.exists(stand_in_pack.staging_dirs[0])
    assert not {"frame_timeout", "no_progress_timeout", "needs_python"} & set(submitted)  # coordinator defaults


def test_submit_sends_timeouts_and_needs_python(fake: FakeCoordinator, stand_in_pack: StandInPack, blend_file,
                                                capsys) -> None:
    code = cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1-3", "--frame-timeout", "90",
                     "--no-progress-timeout", "30", "--needs-python"])
    assert code == 0
    submitted = submitted_body(fake)
    assert (submitted["frame_timeout"], submitted["no_progress_timeout"], submitted["needs_python"]) == (90, 30, True)
    assert cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1-3",
                     "--frame-timeout", "0"]) == 2
    assert "between 1 second and 7 days" in capsys.readouterr().err


def test_submit_uploads_only_what_the_coordinator_lacks(
    fake: FakeCoordinator, stand_in_pack: StandInPack, blend_file, capsys
) -> None:
    wood = (stand_in_pack.project / "textures" / "wood.png").read_bytes()
    fake.stored[hashlib.sha256(wood).hexdigest()] = wood
    assert cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1"]) == 0
    out = capsys.readouterr().out
    uploaded = [r for r in fake.requests if r[1] == "/upload_file"]
    assert len(uploaded) == 2
    assert all(hashlib.sha256(r[3]).hexdigest() == r[2]["sha256"] for r in uploaded)
    assert "uploaded 2 of 3 files (" in out and "1 already on the coordinator" in out
    assert "shot_010.blend: 3 file(s), 1.2 KiB, 1 .blend rewritten, saved by Blender 3.4" in out

    assert cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1"]) == 0
    assert "uploaded 0 of 3 files (0 B); 3 already on the coordinator" in capsys.readouterr().out
    assert len([r for r in fake.requests if r[1] == "/upload_file"]) == 2


def test_missing_assets_stop_the_submission(
    fake: FakeCoordinator, stand_in_pack: StandInPack, blend_file, capsys
) -> None:
    stand_in_pack.missing = ["textures/gone.png", "/mnt/library/hdri.exr"]
    assert cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1"]) == 2
    err = capsys.readouterr().err
    assert "missing assets (2), referenced but not on disk:\n  textures/gone.png\n  /mnt/library/hdri.exr\n" in err
    assert err.strip().splitlines()[-1] == (
        "renderq: 2 asset(s) are missing (listed above); relink them in Blender, or submit anyway with --allow-missing"
    )
    assert "/upload_file" not in fake.paths() and "/submit_task" not in fake.paths()
    assert not os.path.exists(stand_in_pack.staging_dirs[0])


def test_allow_missing_submits_and_records_them(
    fake: FakeCoordinator, stand_in_pack: StandInPack, blend_file, capsys
) -> None:
    stand_in_pack.missing = ["textures/gone.png"]
    assert cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1", "--allow-missing"]) == 0
    captured = capsys.readouterr()
    assert "textures/gone.png" in captured.err and "submitted task 7" in captured.out
    assert submitted_body(fake)["missing_assets"] == ["textures/gone.png"]


def test_blender_version_flag_asks_for_an_exact_match(
    fake: FakeCoordinator, stand_in_pack: StandInPack, blend_file, capsys
) -> None:
    assert cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1",
                     "--blender-version", "4.02"]) == 0
    assert "Blender 4.2 exactly" in capsys.readouterr().out
    submitted = submitted_body(fake)
    assert submitted["blender_version"] == "4.2" and submitted["blender_version_exact"] is True


@pytest.mark.parametrize("version", ["4", "4.x", "v4.2", "4.2.1", ""])
def test_blender_version_flag_is_validated(blend_file, capsys, version: str) -> None:
    assert cli.main(["submit", str(blend_file), "--frames", "1", "--blender-version", version]) == 2
    err = capsys.readouterr().err
    assert "is not a Blender version; write major.minor, e.g. 4.2" in err and "Traceback" not in err


def test_upload_refused_names_the_file(fake: FakeCoordinator, stand_in_pack: StandInPack, blend_file, capsys) -> None:
    stand_in_pack.sha_override["textures/wood.png"] = "0" * 64  # as if the file changed after it was hashed
    assert cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("renderq: could not upload textures/wood.png: the file's bytes hash to ")
    assert "did it change while it was being uploaded?" in err
    assert "/submit_task" not in fake.paths()


def test_a_file_that_is_not_a_blend_is_bad_input(fake: FakeCoordinator, tmp_path, capsys) -> None:
    path = tmp_path / "notes.blend"
    path.write_text("not a blend")
    assert cli.main(["submit", str(path), "--coordinator", fake.url, "--frames", "1"]) == 2
    assert "is not a .blend file" in capsys.readouterr().err
    assert fake.requests == []


def test_submit_wait_downloads_and_reports_failed_frames(
    fake: FakeCoordinator, stand_in_pack: StandInPack, blend_file, tmp_path, capsys
) -> None:
    out_dir = tmp_path / "frames"
    code = cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1-2", "--wait",
                     "--output", str(out_dir)])
    assert code == 1
    captured = capsys.readouterr()
    assert (out_dir / "f_0001.png").read_bytes() == PNG
    assert f"are in {out_dir}" in captured.out
    assert "failed frames: 2" in captured.err


def test_download_skips_frames_already_present(fake: FakeCoordinator, tmp_path, capsys) -> None:
    assert cli.main(["download", "7", str(tmp_path), "--coordinator", fake.url]) == 0
    assert fake.paths().count("/download_frame") == 1
    assert cli.main(["download", "7", str(tmp_path), "--coordinator", fake.url]) == 0
    assert fake.paths().count("/download_frame") == 1
    assert "1 already there" in capsys.readouterr().out


def test_download_replaces_a_local_file_that_differs(fake: FakeCoordinator, tmp_path, capsys) -> None:
    (tmp_path / "f_0001.png").write_bytes(b"an older render")
    assert cli.main(["download", "7", str(tmp_path), "--coordinator", fake.url]) == 0
    assert (tmp_path / "f_0001.png").read_bytes() == PNG
    assert fake.paths().count("/download_frame") == 1
    assert "already there" not in capsys.readouterr().out


def test_download_zip(fake: FakeCoordinator, tmp_path, capsys) -> None:
    dest = tmp_path / "out"
    assert cli.main(["download", "7", str(dest), "--zip", "--coordinator", fake.url]) == 0
    assert (dest / "renderq-7.zip").read_bytes() == fake.zip_bytes
    assert [name for name in os.listdir(dest)] == ["renderq-7.zip"]
    assert f"are in {dest / 'renderq-7.zip'}" in capsys.readouterr().out
    assert "/download_frame" not in fake.paths()


def test_download_zip_of_a_task_without_frames(fake: FakeCoordinator, tmp_path, capsys) -> None:
    fake.zip_status = 404
    dest = tmp_path / "out"
    assert cli.main(["download", "7", str(dest), "--zip", "--coordinator", fake.url]) == 1
    assert capsys.readouterr().err == "renderq: task 7 has no rendered frames to download\n"
    assert not dest.exists()


def test_status_shows_why_a_task_waits(fake: FakeCoordinator, capsys) -> None:
    fake.task_fields = {"status": "queued", "waiting_reason": "waiting: no worker with Blender >= 4.2",
                        "main_file": "shots/main.blend", "files_count": 5, "files_bytes": 2048,
                        "blender_version": "4.2", "blender_version_exact": False,
                        "missing_assets": ["textures/gone.png"]}
    assert cli.main(["status", "7", "--coordinator", fake.url]) == 0
    detail = capsys.readouterr().out
    assert "  waiting: no worker with Blender >= 4.2\n" in detail
    assert "shots/main.blend (5 file(s), 2.0 KiB)" in detail
    assert "4.2 or newer" in detail and "textures/gone.png" in detail
    assert cli.main(["status", "--coordinator", fake.url]) == 0
    assert "task 7: waiting: no worker with Blender >= 4.2" in capsys.readouterr().out


def test_disk_and_delete_files(fake: FakeCoordinator, capsys) -> None:
    assert cli.main(["disk", "--coordinator", fake.url]) == 0
    out = capsys.readouterr().out
    assert "40.0 GiB free of 100.0 GiB" in out
    assert "shot_010" in out and "3.0 MiB" in out and "shot_005" in out
    assert cli.main(["delete-files", "7", "--coordinator", fake.url]) == 0
    assert capsys.readouterr().out == "task 7: deleted 12 file(s), freed 3.0 MiB\n"
    assert cli.main(["delete-files", "5", "--coordinator", fake.url]) == 1
    assert capsys.readouterr().err == "renderq: task 5 is still running; cancel it first\n"


def test_client_asks_for_missing_files_in_batches(fake: FakeCoordinator) -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(45_000)]
    fake.stored[hashes[3]] = b"x"
    missing = CoordinatorClient(fake.url).missing_files(hashes + hashes[:10])
    assert len(missing) == 44_999 and hashes[3] not in missing
    batches = [json.loads(r[3])["sha256"] for r in fake.requests if r[1] == "/missing_files"]
    assert len(batches) == 3 and all(len(batch) <= 100_000 for batch in batches)


def test_status_table_and_detail(fake: FakeCoordinator, capsys) -> None:
    assert cli.main(["status", "--coordinator", fake.url]) == 0
    table = capsys.readouterr().out
    assert "shot_010" in table and "1/2" in table and "50%" in table
    assert cli.main(["status", "7", "--coordinator", fake.url]) == 0
    detail = capsys.readouterr().out
    assert "Blender crashed" in detail and "4.25" in detail
    assert cli.main(["status", "7", "--json", "--coordinator", fake.url]) == 0
    assert json.loads(capsys.readouterr().out)["task_id"] == 7


def test_refusal_is_one_sentence_exit_1(fake: FakeCoordinator, capsys) -> None:
    assert cli.main(["status", "8", "--coordinator", fake.url]) == 1
    assert capsys.readouterr().err == "renderq: there is no task 8\n"


def test_logs_prints_the_log(fake: FakeCoordinator, capsys) -> None:
    assert cli.main(["logs", "7", "--coordinator", fake.url]) == 0
    assert capsys.readouterr().out == "line one\nline two\n"
    assert cli.main(["logs", "7", "--follow", "--coordinator", fake.url]) == 0
    assert capsys.readouterr().out == "line one\nline two\n"


def test_worker_disable(fake: FakeCoordinator, capsys) -> None:
    assert cli.main(["worker-disable", "node-01", "--coordinator", fake.url]) == 0
    assert "worker node-01 is OFF" in capsys.readouterr().out
    sent = json.loads(next(r for r in fake.requests if r[1] == "/set_worker_enabled")[3])
    assert sent == {"name": "node-01", "enabled": False}


# -- a real project through the command line ------------------------------------------------------------------------

BLENDER = find_blender_or_none()


@pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
def test_submit_a_real_project_uploads_its_tree_once(fake: FakeCoordinator, tmp_path, capsys) -> None:
    from project import make_project

    paths = make_project(str(tmp_path / "work"), BLENDER)
    # shared_assets/outside.png is outside the project folder: the artist allows it.
    assert cli.main(["submit", paths["main"], "--coordinator", fake.url, "--allow-outside"]) == 0
    out = capsys.readouterr().out
    submitted = submitted_body(fake)
    assert (submitted["frame_start"], submitted["frame_end"]) == (1, 3)  # the scene's range, read with Blender
    assert submitted["main_file"] == "main.blend" and len(submitted["manifest"]) == 5
    assert submitted["blender_version"] == "3.4"
    total = sum(entry["size"] for entry in submitted["manifest"])
    assert sum(len(data) for data in fake.stored.values()) == total
    assert f"uploaded 5 of 5 files ({format_bytes(total)})" in out

    fake.requests.clear()
    assert cli.main(["submit", paths["main"], "--coordinator", fake.url, "--frames", "1", "--allow-outside"]) == 0
    assert "uploaded 0 of 5 files (0 B); 5 already on the coordinator" in capsys.readouterr().out
    assert "/upload_file" not in fake.paths()


# -- formatting ------------------------------------------------------------------------------------------------------


def test_formatting_helpers() -> None:
    assert format_frame_list([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert format_frame_list([]) == ""
    assert format_duration(None) == "-"
    assert format_duration(75) == "1m 15s"
    assert format_duration(3725) == "1h 02m"


# -- the admin token and the task controls ---------------------------------------------------------------------------


def test_task_controls_send_the_token(fake: FakeCoordinator, capsys, monkeypatch) -> None:
    fake.required_token = "the-admin-token-1234"
    monkeypatch.delenv("RENDERQ_TOKEN", raising=False)
    token = ["--coordinator", fake.url, "--token", "the-admin-token-1234"]
    assert cli.main(["priority", "7", "-5", *token]) == 0
    assert "now has priority -5" in capsys.readouterr().out
    assert json.loads(next(r for r in fake.requests if r[1] == "/set_task_priority")[3]) == {
        "task_id": 7, "priority": -5}
    assert cli.main(["pause", "7", *token]) == 0
    assert "is paused" in capsys.readouterr().out
    assert cli.main(["resume", "7", *token]) == 0
    assert "again" in capsys.readouterr().out
    assert cli.main(["retry", "7", *token]) == 0
    assert "1 frame(s) queued" in capsys.readouterr().out
    assert cli.main(["cancel", "7", *token]) == 0
    for path in ("/set_task_priority", "/pause_task", "/resume_task", "/retry_failed_frames", "/cancel_task"):
        assert fake.authorizations[path] == "Bearer the-admin-token-1234"


def test_token_from_the_environment(fake: FakeCoordinator, capsys, monkeypatch) -> None:
    fake.required_token = "from-the-environment"
    monkeypatch.setenv("RENDERQ_TOKEN", "from-the-environment")
    assert cli.main(["worker-disable", "node-01", "--coordinator", fake.url]) == 0
    assert fake.authorizations["/set_worker_enabled"] == "Bearer from-the-environment"


def test_refused_token_is_one_clear_sentence(fake: FakeCoordinator, capsys, monkeypatch) -> None:
    fake.required_token = "the-admin-token-1234"
    monkeypatch.delenv("RENDERQ_TOKEN", raising=False)
    assert cli.main(["pause", "7", "--coordinator", fake.url]) == 1
    assert fake.authorizations["/pause_task"] is None
    err = capsys.readouterr().err
    assert err.startswith("renderq: ") and err.endswith("; pass the token with --token TOKEN or set RENDERQ_TOKEN\n")
    assert err.count("\n") == 1
    assert cli.main(["cancel", "7", "--coordinator", fake.url, "--token", "wrong"]) == 1
    assert "--token TOKEN" in capsys.readouterr().err


def test_priority_must_be_a_number(capsys) -> None:
    assert cli.main(["priority", "7", "high"]) == 2
    assert "not a priority" in capsys.readouterr().err
