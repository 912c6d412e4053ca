"""The soak's processes: a restartable child (coordinator, real or simulated worker) that can be killed, frozen and
thawed together with everything it started, and the /proc readings the soak takes of them."""

from __future__ import annotations

import contextlib
import collections
import os
import signal
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- processes ------------------------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ')' are plain.
        fields = stat[stat.rfind(")") + 2:].split()
        children[int(fields[1])].append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of one process; 0 when it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Child:
    """One process the soak started (coordinator, real or simulated worker), restartable under the same name.

    Each start gets its own session, so a signal to its process group reaches everything it started except
    Blender, which leads a group of its own: kill() and freeze() reach those groups too.
    """

    def __init__(self, name: str, kind: str, command: list[str], log_path: str, env: dict[str, str]) -> None:
        self.name = name
        self.kind = kind
        self.command = command
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen | None = None
        self.frozen_groups: list[int] = []
        self.thaw_at: float | None = None
        self.restart_at: float | None = None
        # Wall-clock (start, end) of each freeze: a request that spans one was slow because of the freeze.
        self.freezes: list[tuple[float, float]] = []
        self._frozen_since = 0.0

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True)
        self.restart_at = None

    def _groups(self) -> list[int]:
        """The process groups of this child and of everything below it (Blender's own group included)."""
        if not self.running:
            return []
        groups = [self.popen.pid]
        for pid in descendants(self.popen.pid):
            try:
                group = os.getpgid(pid)
            except OSError:
                continue
            if group not in groups:
                groups.append(group)
        return groups

    def _signal_groups(self, groups: list[int], signum: int) -> None:
        for group in groups:
            with contextlib.suppress(OSError):  # the group is gone already
                os.killpg(group, signum)

    def kill(self) -> list[int]:
        """SIGKILL the child and everything it started, reap it; returns processes below it that survived."""
        below = descendants(self.popen.pid) if self.running else []
        # SIGKILL ends stopped processes too: no SIGCONT needed for a frozen child.
        self._signal_groups(sorted(set(self.frozen_groups) | set(self._groups())), signal.SIGKILL)
        if self.thaw_at is not None:
            self.freezes.append((self._frozen_since, time.time()))
        self.frozen_groups, self.thaw_at = [], None
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        survivors = []
        deadline = time.monotonic() + 5.0
        for pid in below:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                survivors.append(pid)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return survivors

    def freeze(self, seconds: float) -> None:
        """SIGSTOP the child and everything below it for `seconds` (thaw() sends SIGCONT)."""
        self.frozen_groups = self._groups()
        self._signal_groups(self.frozen_groups, signal.SIGSTOP)
        self.thaw_at = time.monotonic() + seconds
        self._frozen_since = time.time()

    def thaw(self) -> None:
        self._signal_groups(self.frozen_groups, signal.SIGCONT)
        self.frozen_groups, self.thaw_at = [], None
        self.freezes.append((self._frozen_since, time.time()))

    def was_frozen(self, start: float, end: float) -> bool:
        """True when the wall-clock interval [start, end] overlaps one of this child's freezes."""
        return any(start <= thawed and frozen <= end for frozen, thawed in self.freezes)

    def stop(self, signum: int) -> None:
        """Ask the child to stop (it gives back its frames); wait_stopped() finishes the job."""
        if self.frozen_groups:
            self.thaw()
        if self.running:
            with contextlib.suppress(OSError):
                os.kill(self.popen.pid, signum)

    def wait_stopped(self, deadline: float) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(max(0.1, deadline - time.monotonic()))
        self.kill()

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"
