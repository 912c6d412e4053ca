"""BlenderSession against the real Blender: several frames in one process, failing frames, abort, crash, close."""

from __future__ import annotations

import os
import signal
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

pytestmark = pytest.mark.skipif(
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


def render_in_thread(session: BlenderSession, frame: int):
    """Start render(frame) in a thread; returns (started event, holder dict filled with the result, thread)."""
    started = threading.Event()
    holder: dict[str, object] = {}

    def run() -> None:
        holder["result"] = session.render(frame, on_started=lambda wall_time: started.set())
        holder["returned_at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return started, holder, thread


def test_renders_several_frames_in_one_process(scenes, sessions, tmp_path):
    blend = scenes("basic", frames=3, **SMALL)
    lines: list[str] = []
    session = sessions(blend, str(tmp_path / "out"), on_log_line=lines.append)
    pid = session.pid
    assert session.alive and pid
    assert session.hello["blender_version"] == blender_version(BLENDER)
    assert session.hello["output_path"] == "//render/f_"

    for frame in (1, 2, 3):
        started: list[float] = []
        result = session.render(frame, on_started=started.append)
        assert isinstance(result, FrameResult)
        assert result.ok, result.error
        assert result.error is None and not result.aborted
        assert result.output_path == str(tmp_path / "out" / f"f_{frame:04d}.png")
        with open(result.output_path, "rb") as image:
            assert image.read(8) == PNG_SIGNATURE
        assert result.started_at is not None and result.ended_at is not None
        assert started == [result.started_at]
        assert result.started_at < result.ended_at
        assert result.render_seconds is not None and result.render_seconds > 0
        assert abs((result.ended_at - result.started_at) - result.render_seconds) < 0.5
        assert f"f_{frame:04d}.png" in result.log_tail
        assert session.pid == pid and session.alive

    assert sorted(os.listdir(tmp_path / "out")) == ["f_0001.png", "f_0002.png", "f_0003.png"]
    assert any(line.startswith("Fra:") for line in lines)
    assert not any(line.endswith("\n") for line in lines)


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


def test_abort_while_idle_and_render_after_close(scenes, tmp_path):
    blend = scenes("basic", frames=3, **SMALL)
    with BlenderSession(BLENDER, blend, str(tmp_path / "out"), threads=1) as session:
        pid = session.pid
        session.abort(grace=5.0)
        assert process_gone(pid)
        result = session.render(1)
    assert not result.ok and result.aborted
    assert "Cannot render frame 1" in result.error


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
