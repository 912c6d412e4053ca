"""Boxes of text drawn into any layout: shared by the panels (ui.py) and the preferences (prefs.py), so that
neither has to import the other."""

from __future__ import annotations

import bpy

from . import text


def alert_box(layout: bpy.types.UILayout, sentence: str, icon: str = "ERROR", width: int = 60) -> None:
    """A red box with a sentence wrapped over several labels."""
    box = layout.box()
    box.alert = True
    for index, line in enumerate(text.wrap(sentence, width)):
        box.label(text=line, icon=icon if index == 0 else "BLANK1")


def listed_box(layout: bpy.types.UILayout, title: str, lines: list[str], icon: str, shown: int = 12) -> None:
    """A box with a title and the first `shown` lines of a list (nothing when the list is empty)."""
    if not lines:
        return
    box = layout.box()
    box.label(text=f"{title} ({len(lines)}):", icon=icon)
    for line in lines[:shown]:
        box.label(text=line)
    if len(lines) > shown:
        box.label(text=f"... and {len(lines) - shown} more (see the console)")
