"""The add-on's panels in Blender 3.4's full interface, under a virtual X server: used like an artist would (test
the connection, pick a worker, submit, follow the task to its end), they draw without an error, and a screenshot
of them is taken.

Set RENDERQ_PANEL_SCREENSHOT to a path to keep the panel's screenshot there (docs/addon-panel.png is made so).
"""

from __future__ import annotations

import os
import re

import pytest
from PIL import Image

from addon_ui_scripts.addon_testing import (
    RESULT_PREFIX, blender_env, build_addon_zip, farm_token, run_blender_side, script, xvfb_run_or_none,
)
from harness import Farm, find_blender_or_none

BLENDER = find_blender_or_none()
XVFB_RUN = xvfb_run_or_none()
pytestmark = [
    pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)"),
    pytest.mark.skipif(XVFB_RUN is None,
                       reason="xvfb-run is not installed (scripts/test.sh installs Xvfb with apt-get)"),
]

FAST = ("--heartbeat", "1", "--alive-timeout", "4")
# The virtual screen: the Properties editor fills the window, tall enough for Blender's Output panels and ours.
SCREEN = "900x1500x24"


def _renderq_errors(log: str) -> list[str]:
    """Python tracebacks, and error lines that name RenderQ, in Blender's output."""
    found = []
    if "Traceback" in log:
        start = log.index("Traceback")
        found.append(log[start:start + 3000])
    found += [line for line in log.splitlines() if not line.startswith(RESULT_PREFIX)
              and re.search(r"error", line, re.I) and re.search(r"renderq", line, re.I)]
    return found


def _looks_like_a_screenshot(path: str, min_size: tuple[int, int]) -> None:
    assert os.path.getsize(path) > 20_000, f"{path} is only {os.path.getsize(path)} bytes"
    with Image.open(path) as image:
        assert image.width >= min_size[0] and image.height >= min_size[1], image.size
        rgb = image.convert("RGB")
        # An interface, not a blank or one-colour frame: many colours, both dark and light.
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50, f"{path} has only {len(colours)} colours"
        low, high = rgb.convert("L").getextrema()
        assert high - low > 100, (low, high)


def test_panel_in_the_interface(tmp_path, farm: Farm) -> None:
    from renderq.scenes import make_scene

    farm.start_coordinator(*FAST)
    farm.start_worker("node-34")
    scene = make_scene(str(tmp_path / "shot" / "shot_010.blend"), blender=BLENDER, frames=2, resolution=(160, 90),
                       samples=2)

    addon_zip = build_addon_zip(str(tmp_path / "addon"))
    env = blender_env(str(tmp_path / "home"))
    installed, _ = run_blender_side(
        [BLENDER, "-b", "--factory-startup", "--python", script("install_addon.py"), "--",
         "--zip", addon_zip, "--url", farm.url, "--token", farm_token(farm)],
        env, "installing the add-on", timeout=120, log_path=str(tmp_path / "install.log"),
    )
    assert installed["module"] == "renderq_addon"

    # No --factory-startup here: the saved preferences, with the add-on enabled, must load.
    out_dir = str(tmp_path / "shots")
    log_path = str(tmp_path / "interface.log")
    result, log = run_blender_side(
        [XVFB_RUN, "-a", "-s", f"-screen 0 {SCREEN}", BLENDER, scene, "--python", script("ui_screenshot.py"),
         "--", "--out-dir", out_dir, "--worker", "node-34"],
        env, "Blender's interface with the add-on", timeout=240, log_path=log_path,
    )

    assert result["draw_errors"] == [], result["draw_errors"]
    assert _renderq_errors(log) == [], f"see {log_path}"
    assert set(result["panels"]) >= {"RENDERQ_PT_main"}, result["panels"]
    # Every RenderQ panel drew again after the last scroll and redraw, so the screenshot shows them drawn.
    for panel in result["panels"]:
        assert result["draws"][panel] > result["drawn_before_last_redraw"][panel] >= 1, (panel, result)
    assert result["connection"]["ok"] is True, result["connection"]
    assert result["workers"] == ["node-34"], result
    # The task went through the panel, the farm rendered it, and the panel followed it to the end.
    assert result["last_error"] is None, result["last_error"]
    assert result["task_status"] == "done" and result["thumbnail"] is True, result
    task = farm.api.task(result["task_id"])
    assert task["name"] == "shot_010" and task["workers"] == ["node-34"], task
    assert task["progress"]["done"] == 2 and {f["worker"] for f in task["frames"]} == {"node-34"}

    _looks_like_a_screenshot(result["window_png"], (800, 1200))
    _looks_like_a_screenshot(result["panel_png"], (600, 1000))
    keep = os.environ.get("RENDERQ_PANEL_SCREENSHOT")
    if keep:
        _save_last_panel(result["panel_png"], keep)


def _save_last_panel(screenshot: str, dest: str) -> None:
    """Save the part of the Properties editor's screenshot below the last gap between panels: the RenderQ panel,
    which comes last in the Output tab (the view is scrolled to the end). The whole screenshot if no gap is found.

    Top-level panels are separated by a band two pixels high of the region's background, the same colour across
    the editor's width; nothing inside a panel draws such a band.
    """
    with Image.open(screenshot) as image:
        rgb = image.convert("RGB")
    columns = [int(rgb.width * fraction) for fraction in (0.3, 0.6, 0.9)]

    def band(y: int) -> bool:
        colour = rgb.getpixel((columns[0], y))
        return (all(rgb.getpixel((x, y)) == colour and rgb.getpixel((x, y + 1)) == colour for x in columns)
                and all(rgb.getpixel((x, y - 1)) != colour and rgb.getpixel((x, y + 2)) != colour for x in columns))

    gaps = [y for y in range(1, rgb.height - 3) if band(y)]
    if not gaps:
        rgb.save(dest, optimize=True)
        return
    gap = gaps[-1]
    background = rgb.getpixel((columns[0], gap))
    # The panel starts where the region's background does: the editor's tab column on the left is left out.
    left = next((x for x in range(rgb.width // 4) if rgb.getpixel((x, gap)) == background), 0)
    rgb.crop((left, max(0, gap - 4), rgb.width, rgb.height)).save(dest, optimize=True)
