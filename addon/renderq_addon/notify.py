"""Telling the artist: a console line always, an Info report and, for what must not be missed, a popup.

Called on the main thread (operators, job callbacks) and from timers, where there is no window in the context;
the first window of the window manager is used then. In background mode only the console line is written.
"""

from __future__ import annotations

import traceback

import bpy

from . import state, text

_ICONS = {"INFO": "INFO", "WARNING": "ERROR", "ERROR": "CANCEL"}


def tell(message: str, level: str = "INFO", *, popup: bool = False) -> None:
    """Show `message` (one sentence). `level` is INFO, WARNING or ERROR; ERROR also becomes `state.last_error()`."""
    print(f"RenderQ: {message}", flush=True)
    state.SESSION.last_message = message
    if level == "ERROR":
        state.set_error(message)
    window = _any_window()
    if window is None:
        return
    _report(window, message, level)
    if popup:
        _popup(window, message, level)


def _any_window() -> bpy.types.Window | None:
    if bpy.app.background:
        return None
    manager = getattr(bpy.context, "window_manager", None)
    if manager is None or not manager.windows:
        return None
    return bpy.context.window or manager.windows[0]


def _report(window: bpy.types.Window, message: str, level: str) -> None:
    """Put the message in the status bar and the Info editor, through an operator's report."""
    try:
        with bpy.context.temp_override(window=window, screen=window.screen):
            bpy.ops.renderq.report_message(level=level, message=message)
    except RuntimeError:
        pass  # an ERROR report comes back as RuntimeError when an operator is called from Python; it was shown
    except Exception:  # noqa: BLE001 - telling must never break the caller
        traceback.print_exc()


def _popup(window: bpy.types.Window, message: str, level: str) -> None:
    lines = text.wrap(message, 60)

    def draw(menu: bpy.types.Menu, _context: bpy.types.Context) -> None:
        for line in lines:
            menu.layout.label(text=line)

    try:
        with bpy.context.temp_override(window=window, screen=window.screen):
            bpy.context.window_manager.popup_menu(draw, title="RenderQ", icon=_ICONS.get(level, "INFO"))
    except Exception:  # noqa: BLE001 - a popup that cannot open must not break the caller
        traceback.print_exc()


def redraw_panels() -> None:
    """Redraw the Properties editors (the panel reads the session state) and the preferences."""
    manager = getattr(bpy.context, "window_manager", None)
    if manager is None:
        return
    for window in manager.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type in ("PROPERTIES", "PREFERENCES"):
                area.tag_redraw()
