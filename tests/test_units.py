"""renderq.units: the one size grammar and the one way sizes and durations are written, and the status page's
JavaScript `duration` (coordinator/pages/static/common.js) agreeing with it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from renderq.units import format_bytes, format_duration, parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON_JS = os.path.join(ROOT, "coordinator", "pages", "static", "common.js")
NODE = shutil.which("node")
SAMPLE_SECONDS = [0, 4.24, 9.5, 10, 42.4, 59.4, 60, 60.5, 62.5, 75, 3599, 3600, 3725, 86399, 90000, 200000]


@pytest.mark.parametrize(
    "text, size",
    [("500M", 500 * 1024**2), ("4G", 4 * 1024**3), ("1.5G", 1536 * 1024**2), ("1048576", 1048576),
     ("64KiB", 65536), ("2 gb", 2 * 1024**3), ("1T", 1024**4)],
)
def test_sizes_are_read_in_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "M", "-1G", "1X", "1.2.3M", "lots"])
def test_a_bad_size_is_refused_with_a_sentence(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a size such as"):
        parse_size(bad)


def test_sizes_and_durations_are_written_one_way() -> None:
    assert [format_bytes(n) for n in (0, 512, 1536, 3 * 1024**2, 20 * 1024**3)] == [
        "0 B", "512 B", "1.5 KiB", "3.0 MiB", "20.0 GiB"]
    assert [format_duration(s) for s in (None, 4.24, 42, 185, 3725, 183600)] == [
        "-", "4.2s", "42s", "3m 05s", "1h 02m", "2d 03h"]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_status_page_writes_durations_like_the_python_side() -> None:
    with open(COMMON_JS, encoding="utf-8") as source:
        match = re.search(r"^  function duration\(seconds\) \{.*?^  \}$", source.read(), re.MULTILINE | re.DOTALL)
    assert match, "common.js no longer defines duration(seconds)"
    script = f"{match.group(0)}\nconsole.log(JSON.stringify({json.dumps(SAMPLE_SECONDS)}.map(duration)));"
    completed = subprocess.run([NODE, "-e", script], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(completed.stdout) == [format_duration(seconds) for seconds in SAMPLE_SECONDS]
