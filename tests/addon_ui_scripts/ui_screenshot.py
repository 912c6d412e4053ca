"""In Blender's full interface (under a virtual X server): use the RenderQ panel as an artist would and take
screenshots of it.

Run as `blender FILE.blend --python ui_screenshot.py -- --out-dir DIR --worker NAME`, with a HOME whose preferences
have the add-on enabled and pointed at a live coordinator (install_addon.py). Timers drive the steps, since the
interface only draws between them: the Properties editor goes to the Output tab and fills the window; the
connection is tested and the workers listed; the worker NAME is picked and the file submitted; once the task has
ended and its thumbnail arrived (through the add-on's own timers), the view scrolls to the end, where the add-on's
panels are, and `panel.png` (the Properties editor) and `window.png` (the whole window) are written. Reports how
often each RenderQ panel drew, any error a draw raised, and what the add-on knows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy

import common

# Seconds the interface gets to settle and draw between steps.
SETTLE = 1.0
draws: dict[str, int] = {}
draw_errors: list[str] = []


def count_draws() -> list[str]:
    """Wrap the draw of every RenderQ panel to count its calls and keep its errors."""
    names = []
    for panel in _subclasses(bpy.types.Panel):
        name = getattr(panel, "bl_idname", "") or panel.__name__
        if not name.startswith("RENDERQ_PT_"):
            continue
        names.append(name)
        draws[name] = 0
        # Set on the panel class itself: Blender looks the method up by name at every draw. Blender passes as
        # many arguments as the function declares, so the wrappers take exactly (self, context): no defaults.
        panel.draw = _counted(name, panel.draw)
        if hasattr(panel, "draw_body"):
            # The add-on's panels catch their own errors (to draw a line saying so): record them inside that.
            panel.draw_body = _recorded(panel.draw_body)
    return names


def _counted(name: str, draw: Any) -> Any:
    def counted(self: Any, context: Any) -> None:
        draws[name] += 1
        draw(self, context)

    return counted


def _recorded(body: Any) -> Any:
    def recorded(self: Any, context: Any) -> None:
        try:
            body(self, context)
        except Exception:
            draw_errors.append(traceback.format_exc())
            raise

    return recorded


def _subclasses(cls: type) -> list[type]:
    """Every subclass of `cls`, at any depth."""
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def properties_area(window: Any) -> Any:
    """The window's largest Properties editor."""
    return max((a for a in window.screen.areas if a.type == "PROPERTIES"), key=lambda a: a.width * a.height)


def override(window: Any, area: Any, region_type: str = "WINDOW") -> Any:
    """A context for operators that act on `area` (timers run without a window in their context)."""
    region = next(r for r in area.regions if r.type == region_type)
    return bpy.context.temp_override(window=window, screen=window.screen, area=area, region=region)


def wait_for_jobs(deadline: float) -> Iterator[float]:
    """Yield until the add-on's own timer has delivered every job's result."""
    while common.addon_module("jobs").running_keys() and time.monotonic() < deadline:
        yield 0.2


def steps(out_dir: str, worker: str, wait: float) -> Iterator[float]:
    """The scenario; each yield gives the interface that many seconds to draw before the next step."""
    window = bpy.context.window_manager.windows[0]
    # The X server's pointer rests in the middle of the window: no tooltip or highlight over the panel.
    bpy.context.preferences.view.show_tooltips = False
    window.cursor_warp(0, 0)
    panels = count_draws()
    if "RENDERQ_PT_main" not in panels:
        raise RuntimeError(f"no RENDERQ_PT_main among the add-on's panels: {panels}")

    area = properties_area(window)
    area.spaces.active.context = "OUTPUT"
    with override(window, area):
        bpy.ops.screen.screen_full_area()
    yield SETTLE
    area = properties_area(window)
    deadline = time.monotonic() + wait

    # What an artist does: test the connection, pick a worker from the list, submit.
    settings = bpy.context.scene.renderq
    settings.task_name = "shot_010"
    settings.assignment = "MANUAL"
    with override(window, area):
        bpy.ops.renderq.test_connection()
        bpy.ops.renderq.refresh_workers()
    yield from wait_for_jobs(deadline)
    session = common.addon_module("state").SESSION
    with override(window, area):
        if worker not in [item.name for item in settings.selected_workers]:
            bpy.ops.renderq.toggle_worker(name=worker)
        bpy.ops.wm.save_mainfile()
        bpy.ops.renderq.submit()
    yield from wait_for_jobs(deadline)
    task_id = session.last_task_id
    if task_id is None:
        raise RuntimeError(f"the submit failed: {session.last_error}")
    # The add-on's monitor polls the task until it ends, then fetches the last frame as a thumbnail.
    while time.monotonic() < deadline and not (
            session.tasks.get(task_id, {}).get("status") == "done" and task_id in session.thumbnails):
        yield 0.5
    yield from wait_for_jobs(deadline)
    # The task's end opened a popup under the pointer; moving the pointer well away closes it, as for an artist.
    window.cursor_warp(15, int(window.height * 0.4))
    yield SETTLE

    # The add-on's panels come after Blender's own in the Output tab: scroll to the end.
    with override(window, area):
        bpy.ops.view2d.scroll_down(deltay=100000)
    area.tag_redraw()
    yield SETTLE
    drawn_before = dict(draws)
    area.tag_redraw()
    yield SETTLE

    panel_png = os.path.join(out_dir, "panel.png")
    window_png = os.path.join(out_dir, "window.png")
    with override(window, area):
        bpy.ops.screen.screenshot_area(filepath=panel_png)
        bpy.ops.screen.screenshot(filepath=window_png)
    task = session.tasks.get(task_id, {})
    common.report(
        panels=panels, draws=draws, drawn_before_last_redraw=drawn_before, draw_errors=draw_errors,
        panel_png=panel_png, window_png=window_png, area=[area.width, area.height],
        window=[window.width, window.height], workers=[w.get("name") for w in session.workers],
        connection={"ok": session.connection.ok, "text": session.connection.text},
        task_id=task_id, task_status=task.get("status"), thumbnail=task_id in session.thumbnails,
        last_error=session.last_error, running_keys=common.addon_module("jobs").running_keys(),
    )
    bpy.ops.wm.quit_blender()


def start(out_dir: str, worker: str, wait: float) -> None:
    """Run the scenario from a timer, one step per call, once the interface is up."""
    scenario = steps(out_dir, worker, wait)

    def tick() -> float | None:
        try:
            return next(scenario)
        except StopIteration:
            return None
        except BaseException:  # noqa: BLE001 - a failing step must end Blender, not leave it open until the timeout
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    bpy.app.timers.register(tick, first_interval=SETTLE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--wait", type=float, default=120.0, help="seconds the whole scenario may take")
    args = common.parse_args(parser)
    os.makedirs(args.out_dir, exist_ok=True)
    start(args.out_dir, args.worker, args.wait)


common.run(main)
