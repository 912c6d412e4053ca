"""The test side of the add-on tests: build the add-on's zip, find what runs it, run a Blender-side script of this
folder and read the result it printed.

Not a test file and not run by Blender: the test modules import it (`from addon_ui_scripts.addon_testing import ...`).
The Blender-side scripts next to it print one `RESULT_PREFIX` line of JSON (see common.py).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(SCRIPTS))
RESULT_PREFIX = "RENDERQ_TEST_RESULT "
_OUTPUT_TAIL_LINES = 60

# Blender's own variables that would send it to another user's folders than the fresh HOME the tests give it.
_BLENDER_LOCATION_VARIABLES = ("BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS", "BLENDER_USER_DATAFILES",
                               "BLENDER_USER_RESOURCES", "BLENDER_USER_EXTENSIONS", "BLENDER_SYSTEM_SCRIPTS")


def script(name: str) -> str:
    """The path of a Blender-side script of this folder."""
    return os.path.join(SCRIPTS, name)


def bpy_python_or_none() -> str | None:
    """A Python that can `import bpy` (Blender 5 as a module): $RENDERQ_BPY_PYTHON, else the repo's .venv-bpy."""
    explicit = os.environ.get("RENDERQ_BPY_PYTHON")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    candidate = os.path.join(ROOT, ".venv-bpy", "bin", "python")
    return candidate if os.access(candidate, os.X_OK) else None


def build_addon_zip(dest: str) -> str:
    """Build the add-on with the repo's build script into `dest`; return the one zip it made."""
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "build_addon.py"), "--output", dest], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, check=False,
    )
    zips = glob.glob(os.path.join(dest, "renderq_addon-*.zip"))
    if completed.returncode != 0 or len(zips) != 1:
        raise AssertionError(f"build_addon.py failed (exit {completed.returncode}, zips {zips}):\n{completed.stdout}")
    return zips[0]


def blender_env(home: str, **extra: str) -> dict[str, str]:
    """The environment for a Blender that must see only a fresh user: its HOME, its config and temp folders."""
    env = {key: value for key, value in os.environ.items() if key not in _BLENDER_LOCATION_VARIABLES}
    os.makedirs(home, exist_ok=True)
    temp = os.path.join(home, "tmp")
    os.makedirs(temp, exist_ok=True)
    # Blender 4+ reads XDG_CONFIG_HOME; TMPDIR keeps its quit.blend and autosaves out of the shared temp folder.
    env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"), TMPDIR=temp, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run_blender_side(command: list[str], env: dict[str, str], what: str, timeout: float,
                     log_path: str | None = None) -> tuple[dict[str, Any], str]:
    """Run a Blender-side script; return the JSON it reported and the whole output (stdout and stderr).

    Fails the test with the output's tail when the process fails or reports nothing.
    """
    # A session of its own, so a timeout also ends what the command started (xvfb-run's X server and Blender).
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    returncode: int | None
    try:
        output, _ = process.communicate(timeout=timeout)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode = None
    if log_path is not None:
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(output)
    results = [line[len(RESULT_PREFIX):] for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if returncode != 0 or not results:
        tail = "\n".join(output.splitlines()[-_OUTPUT_TAIL_LINES:])
        state = "timed out" if returncode is None else f"exit code {returncode}"
        raise AssertionError(f"{what} failed ({state}, {len(results)} result line(s)):\n{tail}")
    return json.loads(results[-1]), output


def xvfb_run_or_none() -> str | None:
    return shutil.which("xvfb-run")


def farm_token(farm: Any) -> str:
    """The artist token of the farm's (started) coordinator, which the add-on sends as an artist would."""
    return farm.token("artist")
