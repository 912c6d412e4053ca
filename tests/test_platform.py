"""renderq.platform: each branch that can run on this (Linux) machine, the native one and the portable one.

Not provable here (no Windows or macOS machine): msvcrt.locking itself, CTRL_BREAK_EVENT reaching Blender, and
CREATE_NEW_PROCESS_GROUP; those branches' choice of call is all that is checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from renderq import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def alive(pid: int) -> bool:
    """Whether a process of ours is still running (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def run_python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})


# -- file locks ----------------------------------------------------------------------------------------------------


def test_a_lock_file_keeps_out_another_process_until_it_is_closed(tmp_path):
    path = str(tmp_path / "x.lock")
    held = platform.hold_lock_file(path)
    assert held is not None and open(path, encoding="utf-8").read() == f"{os.getpid()}\n"
    probe = ("import sys; from renderq import platform; "
             f"print(platform.hold_lock_file({path!r}) is None)")
    other = run_python(probe)
    assert other.communicate(timeout=30)[0].strip() == "True"
    assert platform.hold_lock_file(path) is None  # another open file in this process too
    held.close()
    assert run_python(probe).communicate(timeout=30)[0].strip() == "False"


def test_a_lock_held_elsewhere_is_reported_as_lock_held(tmp_path):
    path = str(tmp_path / "x.lock")
    held = platform.hold_lock_file(path)
    with open(path, "a+", encoding="utf-8") as handle, pytest.raises(platform.LockHeld, match="locked by another"):
        platform.lock_file(handle)
    held.close()


# -- hard links ----------------------------------------------------------------------------------------------------


def test_link_or_copy_links_where_it_can(tmp_path):
    source = tmp_path / "a"
    source.write_bytes(b"frame")
    assert platform.link_or_copy(str(source), str(tmp_path / "b")) is True
    assert os.path.samefile(source, tmp_path / "b")


def test_link_or_copy_copies_where_links_are_refused(tmp_path):
    source = tmp_path / "a"
    source.write_bytes(b"frame" * 100_000)
    assert platform.link_or_copy(str(source), str(tmp_path / "b"), link=False) is False
    assert not os.path.samefile(source, tmp_path / "b") and (tmp_path / "b").read_bytes() == source.read_bytes()
    other_fs = "/dev/shm"  # another file system: os.link fails there with EXDEV and the copy path runs for real
    if os.path.isdir(other_fs) and os.stat(other_fs).st_dev != os.stat(tmp_path).st_dev:
        target = os.path.join(other_fs, f"renderq-test-{os.getpid()}")
        try:
            assert platform.link_or_copy(str(source), target) is False
            assert open(target, "rb").read() == source.read_bytes()
        finally:
            os.unlink(target)


@pytest.mark.parametrize("link", [True, False])
def test_link_or_copy_never_builds_over_a_file_or_through_a_link(tmp_path, link):
    source, outside = tmp_path / "a", tmp_path / "outside"
    source.write_bytes(b"frame")
    outside.write_bytes(b"keep")
    os.symlink(outside, tmp_path / "b")
    with pytest.raises(FileExistsError):
        platform.link_or_copy(str(source), str(tmp_path / "b"), link=link)
    assert outside.read_bytes() == b"keep"


# -- child processes -----------------------------------------------------------------------------------------------

PARENT = """
import sys, time
from renderq import platform
child = platform.spawn_tied({sleeper!r}, system={system!r})
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("system, dies", [(platform.SYSTEM, True), ("darwin", False)])
def test_a_tied_child_dies_with_its_parent_only_where_the_system_does_it(system, dies):
    if dies and not platform.dies_with_parent():
        pytest.skip("this machine has no PR_SET_PDEATHSIG")
    parent = run_python(PARENT.format(sleeper=SLEEPER, system=system))
    child = int(parent.stdout.readline())
    try:
        assert os.getsid(child) == child  # its own session and process group, on either path
        parent.kill()
        parent.wait(timeout=10)
        assert wait_gone(child, 10 if dies else 1) is dies
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_windows_branch_asks_for_a_new_process_group():
    assert platform.own_group_args("win32") == {"creationflags": 0x200}
    assert platform.own_group_args("darwin") == {"start_new_session": True}
    assert not platform.dies_with_parent("win32") and not platform.dies_with_parent("darwin")


GROUP = ("import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
         "print(g.pid, flush=True); time.sleep(60)")


def start_group() -> tuple[subprocess.Popen, int]:
    """A child in its own group that started a grandchild in that group: (child, grandchild pid)."""
    child = platform.spawn_tied([sys.executable, "-c", GROUP], stdout=subprocess.PIPE, text=True)
    return child, int(child.stdout.readline())


@pytest.mark.parametrize("stop", [platform.interrupt_child, platform.kill_child])
def test_stopping_a_child_reaches_everything_in_its_group(stop):
    child, grandchild = start_group()
    try:
        stop(child)
        child.wait(timeout=10)
        assert wait_gone(grandchild)
        assert child.returncode == (-signal.SIGINT if stop is platform.interrupt_child else -signal.SIGKILL)
    finally:
        if alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_the_windows_branch_signals_the_child_itself():
    # On Windows that is CTRL_BREAK_EVENT (here, without it, SIGTERM): to the child, not to a POSIX group.
    child, grandchild = start_group()
    try:
        platform.interrupt_child(child, system="win32")
        child.wait(timeout=10)
        assert alive(grandchild)
        platform.kill_child(child, system="win32")  # already gone: nothing happens
    finally:
        os.kill(grandchild, signal.SIGKILL)
        child.stdout.close()


# -- the programs that use them ------------------------------------------------------------------------------------


def test_a_second_worker_on_the_same_work_dir_refuses_to_start(farm):
    if not farm.blender:
        pytest.skip("no Blender: a worker checks it before its work folder")
    farm.start_coordinator()
    farm.start_worker("first")
    work_dir = os.path.join(farm.root, "work-first")
    second = subprocess.run(
        [sys.executable, "-m", "renderq", "worker", "--coordinator", farm.url, "--name", "second", "--work-dir",
         work_dir, "--blender", farm.blender, "--token", farm.token("worker")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    assert "another worker is already using the work folder" in second.stderr and "Traceback" not in second.stderr
    assert "second" not in farm.api.workers()
    assert farm.workers["first"].popen.poll() is None  # the first one goes on


def test_a_second_coordinator_on_the_same_data_dir_refuses_to_start(farm):
    farm.start_coordinator()
    second = subprocess.run(
        [sys.executable, "-m", "renderq", "coordinator", "--host", "127.0.0.1", "--port", "0", "--data-dir",
         farm.data_dir], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=60)
    assert second.returncode == 1 and "another coordinator is already using" in second.stderr, second.stderr
    assert farm.api.call("GET", "/health")[0] == 200


def test_the_programs_import_without_the_modules_only_posix_has():
    # What Windows lacks: before, a top-level need for any of them kept the coordinator from importing there.
    code = ("import sys\nfor name in ('fcntl', 'resource', 'termios', 'pwd', 'grp'): sys.modules[name] = None\n"
            "import coordinator.server, coordinator.app, worker.cache, worker.command_line, worker.blender_session\n"
            "print('imported')")
    assert run_python(code).communicate(timeout=60)[0].strip() == "imported"
