"""The add-on's preferences: where the coordinator is and the access token, with a connection test."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, StringProperty

from . import state
from .widgets import alert_box

DEFAULT_COORDINATOR_URL = "http://127.0.0.1:5000"


class RENDERQ_AddonPreferences(bpy.types.AddonPreferences):
    """RenderQ settings kept in Blender's preferences, not in .blend files."""

    # The add-on's module name: "renderq_addon", or "bl_ext.<repository>.renderq_addon" as an extension.
    bl_idname = __package__

    coordinator_url: StringProperty(
        name="Coordinator URL",
        description="Address of the RenderQ coordinator, e.g. http://farm:5000, or a cluster's as a comma-separated "
        "list (the next is used when one stops answering)",
        default=DEFAULT_COORDINATOR_URL,
    )
    token: StringProperty(
        name="Access Token",
        description="Your artist token from the farm's admin (the coordinator's artist_token file, or one made "
        "for you with --add-artist); sent with every request and stored in Blender's preferences",
        subtype="PASSWORD",
        default="",
    )
    show_all_my_tasks: BoolProperty(
        name="All My Tasks",
        description="Also show the tasks you submitted from elsewhere (same user name), not only this session's",
        default=False,
    )

    def draw(self, context: bpy.types.Context) -> None:
        """Address, token and the connection test with its outcome."""
        layout = self.layout
        layout.prop(self, "coordinator_url")
        layout.prop(self, "token")
        row = layout.row()
        row.operator("renderq.test_connection", icon="URL")
        draw_connection_status(layout)


def draw_connection_status(layout: bpy.types.UILayout, width: int = 70) -> None:
    """The outcome of the last connection test, if any."""
    check = state.SESSION.connection
    if check.running:
        layout.label(text="Testing the connection...", icon="SORTTIME")
    elif check.ok is True:
        layout.label(text=check.text, icon="CHECKMARK")
    elif check.ok is False:
        alert_box(layout, check.text, width=width)


def get(context: bpy.types.Context | None = None) -> RENDERQ_AddonPreferences | None:
    """The add-on's preferences, or None while the add-on is not enabled."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def register() -> None:
    """Register the preferences class."""
    bpy.utils.register_class(RENDERQ_AddonPreferences)


def unregister() -> None:
    """Unregister the preferences class."""
    bpy.utils.unregister_class(RENDERQ_AddonPreferences)
