"""The `renderq` command line: parsing, help, error sentences and exit statuses, and the client commands against a
small standard-library stand-in for the coordinator."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from renderq import cli
from renderq.progress import format_duration, format_frame_list

CLIENT_COMMANDS = ["submit", "status", "workers", "worker-enable", "worker-disable", "cancel", "download", "logs"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.mark.parametrize("command, module", [("coordinator", "coordinator.server"), ("worker", "worker.agent")])
def test_help_of_server_parts(command: str, module: str, capsys) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        pytest.skip(f"{module} is not written yet")
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
                path = parts.path
                if path == "/upload_blend":
                    self.answer(200, {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
                                      "filename": query["filename"]})
                elif path == "/submit_task":
                    self.answer(201, {**finished_task(), **json.loads(body), "status": "queued"})
                elif path == "/task":
                    if query["task_id"] != "7":
                        self.answer(404, {"error": f"there is no task {query['task_id']}"})
                    else:
                        self.answer(200, finished_task())
                elif path == "/tasks":
                    task = finished_task()
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


def test_submit_sends_the_task(fake: FakeCoordinator, blend_file, capsys) -> None:
    code = cli.main(["submit", str(blend_file), "--coordinator", fake.url, "--frames", "1-250", "--step", "2",
                     "--worker", "node-01", "--priority", "3"])
    assert code == 0
    assert "submitted task 7" in capsys.readouterr().out
    submitted = json.loads(next(r for r in fake.requests if r[1] == "/submit_task")[3])
    assert submitted["name"] == "shot_010"
    assert submitted["blend_sha256"] == hashlib.sha256(blend_file.read_bytes()).hexdigest()
    assert (submitted["frame_start"], submitted["frame_end"], submitted["frame_step"]) == (1, 250, 2)
    assert submitted["workers"] == ["node-01"] and submitted["priority"] == 3


def test_submit_wait_downloads_and_reports_failed_frames(fake: FakeCoordinator, blend_file, tmp_path, capsys) -> None:
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


# -- formatting ------------------------------------------------------------------------------------------------------


def test_formatting_helpers() -> None:
    assert format_frame_list([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert format_frame_list([]) == ""
    assert format_duration(None) == "-"
    assert format_duration(75) == "1m15s"
    assert format_duration(3725) == "1h02m"
