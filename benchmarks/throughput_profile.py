"""The throughput benchmark's --profile: py-spy sampling the coordinator during a step, and a summary of where its
time went (per part of the coordinator, then per function). Used by benchmarks/throughput.py."""

from __future__ import annotations

import collections
import os
import re
import subprocess

from common import ROOT, stop_process

__all__ = ["PROFILE_PARTS", "Profiler", "profile_part", "summarize_profile"]


class Profiler:
    """py-spy sampling the coordinator for a while, its collapsed stacks written to a file."""

    def __init__(self, py_spy: str, pid: int, seconds: float, out_path: str, mode: str = "gil") -> None:
        command = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "200",
                   "--nonblocking", "--format", "raw", "--output", out_path]
        # gil: only the thread holding the GIL, i.e. where the coordinator's one core of Python goes;
        # idle: every thread, also those waiting (for a lock, a commit, the network).
        command += {"gil": ["--gil"], "idle": ["--idle"], "active": []}[mode]
        self.out_path = out_path
        self.popen = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self) -> str | None:
        """The collapsed-stack file, or None when py-spy failed (its complaint is printed)."""
        try:
            _, err = self.popen.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            stop_process(self.popen)
            return None
        if self.popen.returncode != 0 or not os.path.exists(self.out_path):
            print(f"  py-spy failed: {err.decode('utf-8', 'replace').strip()[-500:]}", flush=True)
            return None
        return self.out_path


# The parts of the coordinator a sample is charged to: the first rule matching a frame, from the innermost out.
PROFILE_PARTS = (
    ("coordinator/store/connection.py", ("transaction", "_end_turn", "_finish_batch", "_wait_for_commit"),
     "store: write turns and commits"),
    ("coordinator/store/", (), "store: SQL statements"),
    ("coordinator/blobs.py", (), "frame files: write, fsync, rename"),
    ("coordinator/auth.py", (), "access tokens"),
    ("coordinator/http_", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("coordinator/", (), "coordinator: endpoints and scheduler"),
    ("json/", (), "JSON"),
    ("flask/", (), "Flask and Werkzeug"),
    ("werkzeug/", (), "Flask and Werkzeug"),
    ("itsdangerous/", (), "Flask and Werkzeug"),
    ("uvicorn/", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("httptools/", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("a2wsgi/", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("asyncio/", (), "HTTP server: sockets, HTTP parsing, the gate, threads"),
    ("logging/", (), "logging"),
)


def profile_part(frames: list[str]) -> str:
    """The part of the coordinator a sampled stack (outermost frame first) is charged to."""
    for frame in reversed(frames):
        for where, functions, part in PROFILE_PARTS:
            if where in frame and (not functions or frame.split(" (", 1)[0].rsplit(".", 1)[-1] in functions):
                return part
    return "other"


def summarize_profile(path: str, top: int = 18) -> list[str]:
    """Lines naming where the sampled time went: per part of the coordinator, then per function, its own samples
    and those with its callees."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    parts: collections.Counter = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_short_frame(frame) for frame in stack.split(";")]
            parts[profile_part(frames)] += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; by part of the coordinator:"]
    lines += [f"    {100.0 * n / total:5.1f}%  {part}" for part, n in parts.most_common()]
    lines.append("  by function, with what it calls:")
    lines += [f"    {100.0 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines.append("  own time:")
    lines += [f"    {100.0 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return lines


def _short_frame(frame: str) -> str:
    """'claim (coordinator/scheduler.py:311)' -> 'claim (coordinator/scheduler.py)', library paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    if where.startswith(ROOT + os.sep):
        where = where[len(ROOT) + 1:]
    elif "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    else:
        where = re.sub(r"^.*/lib/python3\.\d+/", "", where)
    return f"{name} ({where})" if where else name
