"""BlenderSession against the real Blender: several frames in one process, failing frames, abort, crash, close,
frame limits and Python in .blend files. The limits are also tested against a stand-in Blender, a small script."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from worker.blender_session import (
    BlenderNotFoundError,
    BlenderSession,
    FrameResult,
    SessionError,
    blender_version,
    find_blender,
)

try:
    BLENDER: str | None = find_blender()
except SessionError:
    BLENDER = None

needs_blender = pytest.mark.skipif(
    BLENDER is None, reason="Blender is not installed (set RENDERQ_BLENDER or put it on PATH)"
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = {"resolution": (64, 36), "samples": 4}


def wait_until(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def process_gone(pid: int) -> bool:
    """True once `pid` no longer runs; a zombie not yet reaped counts as gone where /proc tells."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def sessions():
    """Sessions opened by a test, closed (or killed) at its end whatever happened."""
    opened: list[BlenderSession] = []

    def open_session(blend: str, output_dir: str, **options) -> BlenderSession:
        session = BlenderSession(BLENDER, blend, output_dir, threads=1, **options)
        opened.append(session)
        session.start()
        return session

    yield open_session
    for session in opened:
        session.abort(grace=1.0)
        session.close(grace=1.0)


class Started:
    """Waits, as the worker's loop does, until the session says Blender began the frame."""

    def __init__(self, session: BlenderSession, frame: int) -> None:
        self.session, self.frame = session, frame

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.session.started_at(self.frame) is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


def render_in_thread(session: BlenderSession, frame: int):
    """Start render(frame) in a thread; returns (a waiter for its start, holder dict filled with the result, thread)."""
    holder: dict[str, object] = {}

    def run() -> None:
        holder["result"] = session.render(frame)
        holder["returned_at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return Started(session, frame), holder, thread


@needs_blender
def test_renders_several_frames_in_one_process(scenes, sessions, tmp_path):
    blend = scenes("basic", frames=3, **SMALL)
    lines: list[str] = []
    session = sessions(blend, str(tmp_path / "out"), on_log_line=lines.append)
    pid = session.pid
    assert session.alive and pid
    assert session.hello["blender_version"] == blender_version(BLENDER)
    assert session.hello["output_path"] == "//render/f_"

    for frame in (1, 2, 3):
        assert session.started_at(frame) is None
        result = session.render(frame)
        assert isinstance(result, FrameResult)
        assert result.ok, result.error
        assert result.error is None and not result.aborted
        assert result.output_path == str(tmp_path / "out" / f"f_{frame:04d}.png")
        with open(result.output_path, "rb") as image:
            assert image.read(8) == PNG_SIGNATURE
        assert result.started_at is not None and result.ended_at is not None
        assert session.started_at(frame) == result.started_at
        assert result.started_at < result.ended_at
        assert result.render_seconds is not None and result.render_seconds > 0
        assert abs((result.ended_at - result.started_at) - result.render_seconds) < 0.5
        assert f"f_{frame:04d}.png" in result.log_tail
        assert session.pid == pid and session.alive

    assert sorted(os.listdir(tmp_path / "out")) == ["f_0001.png", "f_0002.png", "f_0003.png"]
    assert any(line.startswith("Fra:") for line in lines)
    assert not any(line.endswith("\n") for line in lines)


@needs_blender
def test_frames_have_exactly_the_pixels_of_plain_blender(scenes, sessions, tmp_path):
    """The session renders what `blender -b FILE -a` renders with the same settings, pixel for pixel, whatever
    frames it is asked for and in whatever order."""
    import subprocess

    from PIL import Image

    blend = scenes("basic", frames=3, **SMALL)
    plain = tmp_path / "plain"
    subprocess.run([BLENDER, "-b", "-Y", blend, "-o", str(plain / "f_"), "-t", "1", "-s", "1", "-e", "3", "-a"],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    session = sessions(blend, str(tmp_path / "out"))
    for frame in (3, 1, 2):
        result = session.render(frame)
        assert result.ok, result.error
        with Image.open(result.output_path) as ours, Image.open(plain / f"f_{frame:04d}.png") as theirs:
            assert (ours.size, ours.mode) == (theirs.size, theirs.mode)
            assert ours.tobytes() == theirs.tobytes(), f"frame {frame} differs from plain Blender's"
    # The comparison can tell frames apart: the torus moves.
    with Image.open(plain / "f_0001.png") as first, Image.open(plain / "f_0002.png") as second:
        assert first.tobytes() != second.tobytes()


@needs_blender
def test_failing_frame_reports_blender_error_and_session_goes_on(scenes, sessions, tmp_path):
    blend = scenes("fail2", frames=3, fail_frames=[2], **SMALL)
    session = sessions(blend, str(tmp_path / "out"))
    pid = session.pid

    good = session.render(1)
    assert good.ok, good.error

    bad = session.render(2)
    assert not bad.ok and not bad.aborted
    assert bad.output_path is None
    assert bad.error
    assert bad.log_tail
    if "OpenImageDenoise" in bad.error:  # the mechanism used on builds without OpenImageDenoise
        assert bad.error == "Render error: Build without OpenImageDenoiser"
        assert "Build without OpenImageDenoiser" in bad.log_tail
    else:  # the other builds: Blender fires render_write but writes nothing
        assert "does not exist" in bad.error
        assert "Stereo 3D not supported for MultiLayer image" in bad.log_tail

    assert session.alive and session.pid == pid
    after = session.render(3)
    assert after.ok, after.error
    assert os.path.basename(after.output_path).startswith("f_0003.")
    assert session.pid == pid


@needs_blender
def test_frame_written_without_a_file_is_a_failure(scenes, sessions, tmp_path):
    # Blender fires render_write for these frames but prints "Stereo 3D not supported for MultiLayer image"
    # instead of saving the file.
    blend = scenes("fail2-stereo", frames=3, fail_frames=[2], fail_mechanism="stereo_multilayer", **SMALL)
    session = sessions(blend, str(tmp_path / "out"))
    assert session.render(1).ok
    bad = session.render(2)
    assert not bad.ok and not bad.aborted
    expected = str(tmp_path / "out" / "f_0002.exr")
    assert bad.error == f"Blender reported frame 2 written to {expected}, but the file does not exist"
    assert "Stereo 3D not supported for MultiLayer image" in bad.log_tail
    assert bad.output_path is None
    after = session.render(3)
    assert after.ok and after.output_path == str(tmp_path / "out" / "f_0003.exr")


@needs_blender
def test_abort_stops_a_heavy_frame_within_seconds(scenes, sessions, tmp_path):
    blend = scenes("heavy", frames=2, heavy=True, **SMALL)
    session = sessions(blend, str(tmp_path / "out"))
    pid = session.pid
    started, holder, thread = render_in_thread(session, 1)
    assert started.wait(60), "the heavy frame never started"

    asked_at = time.monotonic()
    session.abort(grace=3.0)
    thread.join(10)
    assert not thread.is_alive(), "render() did not return after abort()"
    assert holder["returned_at"] - asked_at < 10
    result = holder["result"]
    assert result.aborted and not result.ok
    assert "aborted" in result.error
    wait_until(lambda: process_gone(pid), 10, "Blender to be gone")
    assert not session.alive
    again = session.render(2)
    assert not again.ok and again.error


@needs_blender
def test_blender_crash_mid_frame_fails_the_frame(scenes, sessions, tmp_path):
    blend = scenes("heavy", frames=2, heavy=True, **SMALL)
    sampling = threading.Event()
    session = sessions(
        blend, str(tmp_path / "out"), on_log_line=lambda line: "Sample" in line and sampling.set()
    )
    started, holder, thread = render_in_thread(session, 1)
    assert started.wait(60), "the heavy frame never started"
    assert sampling.wait(60), "Cycles never started sampling"

    os.kill(session.pid, signal.SIGSEGV)
    thread.join(30)
    assert not thread.is_alive(), "render() did not return after Blender crashed"
    result = holder["result"]
    assert not result.ok and not result.aborted
    assert result.error == "Blender exited with code -11 (SIGSEGV) while rendering frame 1"
    assert result.started_at is not None and result.ended_at is None
    assert "Fra:1" in result.log_tail
    assert not session.alive


@needs_blender
def test_close_ends_blender(scenes, tmp_path):
    blend = scenes("basic", frames=3, **SMALL)
    session = BlenderSession(BLENDER, blend, str(tmp_path / "out"), threads=1)
    session.start()
    pid = session.pid
    assert session.render(1).ok
    asked_at = time.monotonic()
    session.close(grace=10.0)
    assert time.monotonic() - asked_at < 5, "Blender did not quit when asked"
    assert not session.alive
    assert process_gone(pid)
    session.close()  # a second close is harmless


@needs_blender
def test_abort_while_idle_and_render_after_close(scenes, tmp_path):
    blend = scenes("basic", frames=3, **SMALL)
    with BlenderSession(BLENDER, blend, str(tmp_path / "out"), threads=1) as session:
        pid = session.pid
        session.abort(grace=5.0)
        assert process_gone(pid)
        result = session.render(1)
    assert not result.ok and result.aborted
    assert "Cannot render frame 1" in result.error


@needs_blender
def test_unreadable_blend_raises_session_error_with_blender_output(tmp_path):
    broken = tmp_path / "broken.blend"
    broken.write_bytes(b"this is not a blend file")
    session = BlenderSession(BLENDER, str(broken), str(tmp_path / "out"))
    with pytest.raises(SessionError) as raised:
        session.start()
    message = str(raised.value)
    assert "exited with code 1 before it was ready" in message
    assert "broken.blend" in message
    assert not session.alive

    with pytest.raises(SessionError, match="does not exist"):
        BlenderSession(BLENDER, str(tmp_path / "missing.blend"), str(tmp_path / "out")).start()


@needs_blender
def test_find_blender_and_version(monkeypatch, tmp_path):
    assert find_blender(BLENDER) == os.path.abspath(BLENDER)
    monkeypatch.setenv("RENDERQ_BLENDER", BLENDER)
    assert find_blender() == os.path.abspath(BLENDER)
    monkeypatch.setenv("RENDERQ_BLENDER", str(tmp_path / "nope"))
    with pytest.raises(BlenderNotFoundError, match="RENDERQ_BLENDER"):
        find_blender()
    with pytest.raises(BlenderNotFoundError, match="install Blender"):
        find_blender(str(tmp_path / "nope"))
    version = blender_version(BLENDER)
    assert version[0].isdigit() and version.count(".") >= 1


# -- frame limits, against a stand-in Blender -------------------------------------------------------------------------

# Speaks the frame script's side channel like Blender would, and then misbehaves as FAKE_BLENDER_MODE says:
# "silent" never answers a render and ignores SIGINT (only SIGKILL ends it), "chatty" prints a line every 0.2 s
# forever (SIGINT ends it), "done" writes the frame at once.
FAKE_BLENDER = r'''
import json, os, signal, socket, sys, time

args = sys.argv[1:]
with open(os.environ["FAKE_BLENDER_ARGV"], "w") as record:
    json.dump(args, record)
blend = args[args.index("-Y") + 1]
after = args[args.index("--") + 1:]
port = int(after[after.index("--port") + 1])
output_dir = after[after.index("--output-dir") + 1]
mode = os.environ.get("FAKE_BLENDER_MODE", "done")
if mode == "silent":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
conn = socket.create_connection(("127.0.0.1", port))


def send(**message):
    conn.sendall((json.dumps(message) + "\n").encode())


send(type="hello", token=os.environ["RENDERQ_SESSION_TOKEN"], protocol=1, blender_version="3.4.1", pid=os.getpid(),
     scene="Scene", blend_file=blend, python_found=json.loads(os.environ.get("FAKE_BLENDER_PYTHON", "[]")))
for line in conn.makefile("rb"):
    message = json.loads(line)
    if message["type"] == "quit":
        break
    frame = message["frame"]
    if mode == "silent":
        while True:
            time.sleep(1)
    send(type="started", frame=frame, time=time.time())
    if mode == "chatty":
        while True:
            print(f"Fra:{frame} Sample 1/1000000", flush=True)
            time.sleep(0.2)
    path = os.path.join(output_dir, f"f_{frame:04d}.png")
    with open(path, "wb") as image:
        image.write(b"png")
    send(type="written", frame=frame, path=path, time=time.time(), render_seconds=0.01)
    print("\x1erenderq-frame-done %d" % frame, flush=True)
    send(type="finished", frame=frame, ok=True, error=None, path=path, canceled=False)
'''


@pytest.fixture
def fake_blender(tmp_path, monkeypatch):
    """Open sessions on the stand-in Blender: `open_session(mode, **options)`; they are killed at the end."""
    executable = tmp_path / "fake-blender"
    executable.write_text(f"#!{sys.executable}\n{FAKE_BLENDER}")
    executable.chmod(0o755)
    blend = tmp_path / "scene.blend"
    blend.write_bytes(b"BLENDER-v304")
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_BLENDER_ARGV", str(argv_file))
    opened: list[BlenderSession] = []

    def open_session(mode: str, python_found: list[str] | None = None, **options) -> BlenderSession:
        monkeypatch.setenv("FAKE_BLENDER_MODE", mode)
        monkeypatch.setenv("FAKE_BLENDER_PYTHON", json.dumps(python_found or []))
        session = BlenderSession(str(executable), str(blend), str(tmp_path / "out"), **options)
        opened.append(session)
        session.start()
        session.argv = json.loads(argv_file.read_text())
        return session

    yield open_session
    for session in opened:
        session.abort(grace=0.5)
        session.close(grace=0.5)


def test_a_silent_blender_is_stopped_after_the_no_progress_limit(fake_blender):
    session = fake_blender("silent", stop_grace=0.5)
    pid = session.pid
    asked_at = time.monotonic()
    result = session.render(3, frame_timeout=60, no_progress_timeout=1.0)
    took = time.monotonic() - asked_at
    assert result.timed_out and not result.ok and not result.aborted
    assert result.error == "Blender made no progress for 1 s (no output) and was stopped"
    assert 1.0 <= took < 15, took
    # It ignored SIGINT, so the grace ran out and it was killed.
    assert process_gone(pid) and session._proc.returncode == -signal.SIGKILL
    assert not session.alive
    again = session.render(4)
    assert not again.ok and not again.timed_out and "Cannot render frame 4" in again.error


def test_a_frame_that_keeps_printing_is_stopped_at_the_frame_limit(fake_blender):
    session = fake_blender("chatty", stop_grace=5.0)
    asked_at = time.monotonic()
    result = session.render(3, frame_timeout=1.5, no_progress_timeout=1.0)
    took = time.monotonic() - asked_at
    assert result.timed_out and not result.ok
    assert result.error == "timed out: frame 3 rendered longer than the task's limit of 1.5 s"
    assert result.started_at is not None
    assert "Fra:3 Sample 1/1000000" in result.log_tail
    # SIGINT was enough: no waiting for the whole grace period.
    assert 1.5 <= took < 5, took
    assert not session.alive


def test_frames_within_their_limits_render_as_usual(fake_blender):
    session = fake_blender("done")
    for frame in (1, 2):
        result = session.render(frame, frame_timeout=30, no_progress_timeout=30)
        assert result.ok and not result.timed_out, result.error
    assert session.alive


def test_blender_always_starts_with_scripts_off(fake_blender):
    found = ["the text block 'rig.py' is registered to run when the file is opened"]
    refusing = fake_blender("silent", python_found=found)
    assert refusing.argv[:2] == ["-b", "-Y"] and "--allow-python" not in refusing.argv
    assert refusing.python_found == found
    # The stand-in would hang on a render: a prompt answer shows nothing was asked of it.
    result = refusing.render(1, no_progress_timeout=30)
    assert result.needs_python and not result.ok and not result.timed_out
    assert "'rig.py'" in result.error and refusing.alive

    allowing = fake_blender("done", python_found=found, allow_python=True)
    assert allowing.argv[:2] == ["-b", "-Y"] and allowing.argv[-1] == "--allow-python"
    assert allowing.render(1).ok


# -- frame limits and Python in .blend files, with the real Blender -------------------------------------------------


@pytest.fixture
def markers(tmp_path, monkeypatch):
    """The folder the test scenes' Python writes its markers into; Blender inherits the variable naming it."""
    folder = tmp_path / "markers"
    monkeypatch.setenv("RENDERQ_TEST_MARKER_DIR", str(folder))
    return folder


def marker_names(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@needs_blender
def test_python_in_the_file_runs_only_when_allowed(scenes, sessions, tmp_path, markers):
    blend = scenes("python-marker", frames=3, python_marker=True, **SMALL)
    refusing = sessions(blend, str(tmp_path / "out"))
    found = " ".join(refusing.python_found)
    assert "'renderq_marker.py' is registered to run" in found
    assert "1 scripted driver needs Python (e.g. 'renderq_marker_driver(frame)' on Object 'Torus')" in found
    result = refusing.render(1)
    assert result.needs_python and not result.ok
    refusing.close()
    assert marker_names(markers) == []

    allowing = sessions(blend, str(tmp_path / "out"), allow_python=True)
    assert allowing.hello["python_allowed"] is True
    for frame in (1, 3):
        result = allowing.render(frame)
        assert result.ok, result.error
    # The registered text block's render_pre handler and the scripted driver both ran, for each frame.
    names = marker_names(markers)
    assert {"frame_0001", "frame_0003", "driver_0001", "driver_0003"} <= set(names)
    assert "frame_0002" not in names


@needs_blender
def test_a_silent_hang_is_stopped_and_a_new_blender_renders_the_frame(scenes, sessions, tmp_path, markers):
    blend = scenes("hang-silent", frames=3, hang_frames=[2], **SMALL)
    session = sessions(blend, str(tmp_path / "out"), allow_python=True, stop_grace=2.0)
    pid = session.pid
    assert session.render(1, frame_timeout=60, no_progress_timeout=5).ok
    hung = session.render(2, frame_timeout=60, no_progress_timeout=5)
    assert hung.timed_out and not hung.ok
    assert hung.error == "Blender made no progress for 5 s (no output) and was stopped"
    assert "hanging on frame 2" in hung.log_tail
    wait_until(lambda: process_gone(pid), 10, "the hung Blender to be gone")
    assert marker_names(markers) == ["hang_0002"]

    again = sessions(blend, str(tmp_path / "out"), allow_python=True)
    for frame in (2, 3):
        result = again.render(frame, frame_timeout=60, no_progress_timeout=30)
        assert result.ok, result.error


@needs_blender
def test_a_hang_that_keeps_printing_is_stopped_at_the_frame_limit(scenes, sessions, tmp_path, markers):
    blend = scenes("hang-chatty", frames=2, hang_frames=[1], hang_print_seconds=0.5, **SMALL)
    session = sessions(blend, str(tmp_path / "out"), allow_python=True, stop_grace=2.0)
    hung = session.render(1, frame_timeout=6, no_progress_timeout=4)
    assert hung.timed_out
    assert hung.error == "timed out: frame 1 rendered longer than the task's limit of 6 s"
    assert "still hanging on frame 1" in hung.log_tail
    assert not session.alive


def test_blenders_end_is_told_with_the_signals_name_when_it_has_one() -> None:
    from worker.frame_events import describe_exit

    assert describe_exit(-9) == "exited with code -9 (SIGKILL)"
    assert describe_exit(-99) == "exited with code -99"  # no such signal: the number alone
    assert describe_exit(1) == "exited with code 1" and describe_exit(None) == "is still running"
