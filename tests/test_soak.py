"""A short soak run: a real coordinator, two real Blender workers and 200 simulated ones under kills and stalls.

Runs `benchmarks/soak.py --quick` as its own process (it starts and stops everything it needs) and checks what it
printed: no frame lost, none acknowledged twice.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from harness import ROOT, find_blender_or_none

SOAK = os.path.join(ROOT, "benchmarks", "soak.py")
SIM_WORKERS = 200


def figure(output: str, label: str) -> int:
    """The number the soak's figure table shows for `label`."""
    match = re.search(rf"^  {re.escape(label)} +(\d+)\b", output, re.MULTILINE)
    assert match, f"the soak printed no '{label}' figure:\n{output[-4000:]}"
    return int(match[1])


@pytest.mark.timeout(900)
@pytest.mark.skipif(find_blender_or_none() is None, reason="Blender is not installed")
def test_quick_soak_loses_and_duplicates_no_frame():
    completed = subprocess.run(
        [sys.executable, SOAK, "--quick", "--sim-workers", str(SIM_WORKERS), "--seed", "6"],
        check=False, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=840,
    )
    output = completed.stdout.decode("utf-8", "replace")
    assert completed.returncode == 0, f"the soak failed (exit {completed.returncode}):\n{output[-6000:]}"
    assert "soak: PASSED" in output
    assert figure(output, "frames lost") == 0
    assert figure(output, "duplicates") == 0
    assert figure(output, "frames") > 0
    assert figure(output, "frames by real workers") > 0, "the real Blender workers rendered nothing"
    assert figure(output, "kills of real workers") > 0
    assert figure(output, "kills of simulated workers") > 0


def test_simulated_frames_are_valid_pngs_that_name_their_lease():
    from PIL import Image

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from simworker import frame_png

    data = frame_png(7, 12, "ab" * 16)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (8, 8)
    assert image.text["renderq-sim"] == f"task=7 frame=12 lease={'ab' * 16}"
    assert frame_png(7, 12, "cd" * 16) != data
