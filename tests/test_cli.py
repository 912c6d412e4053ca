"""The `renderq` command line: parsing, help, error sentences and exit statuses (the client commands against a real
coordinator are in test_cli_coordinator.py)."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

import pytest
from harness import free_port

from renderq import cli
from renderq.progress import format_frame_list
from renderq.units import format_duration

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


# -- formatting ------------------------------------------------------------------------------------------------------


def test_formatting_helpers() -> None:
    assert format_frame_list([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert format_frame_list([]) == ""
    assert format_duration(None) == "-"
    assert format_duration(75) == "1m 15s"
    assert format_duration(3725) == "1h 02m"


def test_priority_must_be_a_number(capsys) -> None:
    assert cli.main(["priority", "7", "high"]) == 2
    assert "not a priority" in capsys.readouterr().err
