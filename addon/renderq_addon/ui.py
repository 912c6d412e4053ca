"""The RenderQ panels in Properties > Output: connection, submit (with worker picking) and the task monitor.

Panels only read: the scene settings, the preferences and `state.SESSION`. A panel's draw never raises; a bug
shows as one line in the panel and a traceback in the console, once.
"""

from __future__ import annotations

import os
import traceback

import bpy

from renderq.model import TASK_APPROVABLE, TaskStatus, status_label
from renderq.units import estimate_text

from . import client, jobs, monitor, notify, prefs, props, state, submit, text
from .widgets import alert_box, listed_box

_reported_draw_errors: set[str] = set()


def progress_bar(layout: bpy.types.UILayout, fraction: float, label: str) -> None:
    """A progress bar: Blender's own from 4.0 on, a bar of characters before."""
    fraction = min(1.0, max(0.0, fraction))
    if hasattr(layout, "progress"):
        layout.progress(factor=fraction, type="BAR", text=label)
    else:
        layout.label(text=f"{text.text_bar(fraction)}  {label}")


def line_width(context: bpy.types.Context) -> int:
    """About how many characters fit on one line of the panel (labels do not wrap by themselves)."""
    region = getattr(context, "region", None)
    scale = context.preferences.system.ui_scale if context.preferences else 1.0
    if region is None or region.width <= 0:
        return 60
    return max(30, int(region.width / (7.0 * scale)) - 6)


class _SafePanel:
    """Runs `draw_body`, turning any exception into a line in the panel (Blender would print it every redraw)."""

    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "output"

    def draw(self, context: bpy.types.Context) -> None:
        try:
            self.draw_body(context)
        except Exception:  # noqa: BLE001 - a panel must never fail to draw
            name = type(self).__name__
            if name not in _reported_draw_errors:
                _reported_draw_errors.add(name)
                traceback.print_exc()
            try:
                self.layout.label(text="RenderQ could not draw this panel; see the console", icon="ERROR")
            except Exception:  # noqa: BLE001 - the traceback is printed above; nothing more can be drawn
                pass

    def draw_body(self, context: bpy.types.Context) -> None:
        raise NotImplementedError


class RENDERQ_PT_main(_SafePanel, bpy.types.Panel):
    """RenderQ: where the farm is and what went wrong last."""

    bl_label = "RenderQ"
    bl_idname = "RENDERQ_PT_main"

    def draw_body(self, context: bpy.types.Context) -> None:
        layout = self.layout
        preferences = prefs.get(context)
        if preferences is None:
            layout.label(text="Enable the RenderQ add-on in Preferences", icon="ERROR")
            return
        width = line_width(context)
        offline = client.online_access_problem()
        if offline:
            alert_box(layout, offline, icon="INTERNET_OFFLINE", width=width)
        row = layout.row(align=True)
        row.label(text=preferences.coordinator_url or "No coordinator URL set", icon="URL")
        row.operator("renderq.test_connection", text="", icon="FILE_REFRESH")
        row.operator("renderq.open_status_page", text="", icon="WORLD")
        prefs.draw_connection_status(layout, width)
        error = state.last_error()
        if error and error != state.SESSION.connection.text:
            alert_box(layout, error, width=width)


class RENDERQ_PT_submit(_SafePanel, bpy.types.Panel):
    """The submit settings of this scene and the Submit button, with the running submit's progress."""

    bl_label = "Submit"
    bl_idname = "RENDERQ_PT_submit"
    bl_parent_id = "RENDERQ_PT_main"

    def draw_body(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = context.scene
        settings = scene.renderq
        layout.use_property_split = True
        layout.use_property_decorate = False

        placeholder = os.path.splitext(bpy.path.basename(bpy.data.filepath))[0] or "the file's name"
        try:
            layout.prop(settings, "task_name", placeholder=placeholder)
        except TypeError:  # `placeholder` exists from Blender 4.1 on
            layout.prop(settings, "task_name", text=f"Name ({placeholder} when empty)")

        layout.prop(settings, "use_scene_range")
        column = layout.column(align=True)
        if settings.use_scene_range:
            column.enabled = False
            column.label(text=f"Frames {scene.frame_start}-{scene.frame_end}, step {scene.frame_step}")
        else:
            column.prop(settings, "frame_start", text="Frame Start")
            column.prop(settings, "frame_end", text="End")
            column.prop(settings, "frame_step", text="Step")
        layout.prop(settings, "priority")
        layout.prop(settings, "tags")
        layout.prop(settings, "device")
        layout.prop(settings, "render_order")
        layout.prop(settings, "scout_frames")
        layout.prop(settings, "allow_missing")
        layout.prop(settings, "allow_outside")
        row = layout.row(align=True)
        row.prop(settings, "make_video")
        container = row.row(align=True)
        container.enabled = settings.make_video
        container.prop(settings, "video_container", text="")
        layout.prop(settings, "notify_url")
        row = layout.row(align=True)
        row.prop(settings, "split_tiles")
        tiles = row.row(align=True)
        tiles.enabled = settings.split_tiles
        tiles.prop(settings, "tile_columns", text="")
        tiles.prop(settings, "tile_rows", text="")
        layout.prop(settings, "assignment", expand=True)
        if settings.assignment == "MANUAL":
            self._draw_workers(layout, scene, line_width(context))

        if not bpy.data.filepath:
            layout.label(text="Save the file before submitting", icon="INFO")
        note = submit.output_note(scene)
        if note:
            box = layout.box()
            for index, line in enumerate(text.wrap(note, line_width(context))):
                box.label(text=line, icon="FILE_MOVIE" if index == 0 else "BLANK1")
        if bpy.data.is_dirty and bpy.data.filepath:
            layout.label(text="Unsaved changes are rendered as you see them", icon="INFO")

        progress = state.SESSION.submit
        row = layout.row()
        row.scale_y = 1.4
        row.enabled = not progress.active
        row.operator("renderq.submit", text="Submitting..." if progress.active else "Submit", icon="RENDER_ANIMATION")
        if progress.active:
            fraction = progress.done / progress.total if progress.total else 0.0
            progress_bar(layout, fraction, progress.text)
        listed_box(layout, "Missing assets", state.SESSION.missing_assets, "LIBRARY_DATA_BROKEN")
        listed_box(layout, "Outside the project folder, or hidden", state.SESSION.outside_files, "ERROR")

    def _draw_workers(self, layout: bpy.types.UILayout, scene: bpy.types.Scene, width: int) -> None:
        """The live worker list with a pick toggle per worker."""
        session = state.SESSION
        picked = set(props.picked_workers(scene))
        box = layout.box()
        header = box.row()
        header.label(text="Workers", icon="NETWORK_DRIVE")
        header.operator("renderq.refresh_workers", text="", icon="FILE_REFRESH")
        if jobs.is_running("workers") and not session.workers:
            box.label(text="Asking the coordinator...")
        if session.workers_error:
            alert_box(box, session.workers_error, width=width)
        elif not session.workers and not jobs.is_running("workers"):
            box.label(text="Press refresh to list the farm's workers")
        listed = set()
        for worker in session.workers:
            name = str(worker.get("name", ""))
            listed.add(name)
            row = box.row(align=True)
            toggle = row.operator("renderq.toggle_worker", text="", depress=name in picked,
                                  icon="CHECKBOX_HLT" if name in picked else "CHECKBOX_DEHLT")
            toggle.name = name
            alive = bool(worker.get("alive"))
            row.label(text=name, icon="CHECKMARK" if alive else "X")
            row.label(text=("alive" if alive else "offline") + (", ON" if worker.get("enabled") else ", OFF"))
            row.label(text=f"Blender {worker.get('blender_version') or '?'}")
            tags = [str(tag) for tag in worker.get("tags") or []]
            if tags:
                row.label(text=", ".join(tags), icon="BOOKMARKS")
            current = worker.get("current") or []
            doing = ", ".join(f"task {c.get('task_id')} frame {c.get('frame')}" for c in current[:2]) or "idle"
            row.label(text=doing)
        for name in sorted(picked - listed):
            row = box.row(align=True)
            toggle = row.operator("renderq.toggle_worker", text="", depress=True, icon="CHECKBOX_HLT")
            toggle.name = name
            row.label(text=f"{name} (not in the list)", icon="QUESTION")


class RENDERQ_PT_tasks(_SafePanel, bpy.types.Panel):
    """The artist's tasks: progress, ETA, problems, thumbnail, and what can be done with them."""

    bl_label = "Tasks"
    bl_idname = "RENDERQ_PT_tasks"
    bl_parent_id = "RENDERQ_PT_main"

    def draw_body(self, context: bpy.types.Context) -> None:
        layout = self.layout
        preferences = prefs.get(context)
        show_mine = bool(preferences and preferences.show_all_my_tasks)
        row = layout.row(align=True)
        if preferences is not None:
            row.prop(preferences, "show_all_my_tasks")
        row.operator("renderq.refresh_tasks", text="", icon="FILE_REFRESH")
        row.operator("renderq.open_status_page", text="", icon="WORLD")
        session = state.SESSION
        if session.tasks_error:
            alert_box(layout, f"Cannot follow the tasks: {session.tasks_error}", width=line_width(context))
        task_ids = state.shown_task_ids(show_mine)
        if not task_ids:
            layout.label(text="No tasks yet" if not show_mine else "No tasks of yours on the farm")
            return
        for task_id in task_ids[:20]:
            self._draw_task(layout, session.tasks[task_id])

    def _draw_task(self, layout: bpy.types.UILayout, task: dict) -> None:
        task_id = task.get("task_id")
        status = str(task.get("status", "?"))
        progress = task.get("progress") or {}
        done, total = state.as_int(progress.get("done")), state.as_int(progress.get("total"))
        box = layout.box()
        header = box.row(align=True)
        header.label(text=f"{task_id}  {task.get('name', '')}", icon=_STATUS_ICONS.get(status, "QUESTION"))
        header.label(text=status_label(status))
        dismiss = header.operator("renderq.dismiss_task", text="", icon="X", emboss=False)
        dismiss.task_id = task_id
        eta = text.format_eta(progress.get("eta_seconds"), progress.get("eta_low_seconds"),
                              progress.get("eta_high_seconds"))
        eta_text = "" if state.is_final(task) else f", ETA {eta}"
        progress_bar(box, done / total if total else 0.0, f"{done}/{total} frames{eta_text}")
        rendering = state.as_int(progress.get("rendering"))
        if rendering and not state.is_final(task):
            box.label(text=f"Rendering {rendering} frame(s)", icon="RENDER_STILL")
        if task.get("waiting_reason"):
            box.label(text=str(task["waiting_reason"]), icon="TIME")
        estimate = estimate_text(task.get("estimate"))
        if estimate:
            box.label(text=f"The frames left: {estimate}", icon="TIME")
        failed = task.get("failed_frames") or []
        if failed:
            box.label(text=f"Failed frames: {text.frame_list(failed)}", icon="ERROR")
        missing = task.get("missing_assets") or []
        if missing:
            box.label(text=f"Submitted with {len(missing)} missing asset(s)", icon="LIBRARY_DATA_BROKEN")
        icon = monitor.thumbnail_icon(task_id)
        if icon:
            box.template_icon(icon_value=icon, scale=6.0)
        download_text = state.SESSION.downloads.get(task_id)
        if download_text:
            box.label(text=download_text)
        if status in TASK_APPROVABLE:
            box.label(text="Waiting for approval: look at the scout frames", icon="HIDE_OFF")
            approve_row = box.row(align=True)
            approve_row.enabled = not jobs.is_running(f"approve:{task_id}")
            approve_row.operator("renderq.approve_task", text="Approve", icon="CHECKMARK").task_id = task_id
        row = box.row(align=True)
        cancel_column = row.row(align=True)
        cancel_column.enabled = not state.is_final(task) and not jobs.is_running(f"cancel:{task_id}")
        cancel = cancel_column.operator("renderq.cancel_task", text="Cancel", icon="CANCEL")
        cancel.task_id = task_id
        download_column = row.row(align=True)
        download_column.enabled = done > 0 and not jobs.is_running(f"download:{task_id}")
        download = download_column.operator("renderq.download_frames", text="Download Frames", icon="IMPORT")
        download.task_id = task_id
        if task.get("video"):
            video_row = box.row(align=True)
            video_row.enabled = state.is_final(task) and not jobs.is_running(f"video:{task_id}")
            video_row.operator("renderq.open_video", text="Open Video", icon="FILE_MOVIE").task_id = task_id


_STATUS_ICONS = {
    TaskStatus.QUEUED: "SORTTIME",
    TaskStatus.RUNNING: "RENDER_ANIMATION",
    TaskStatus.DONE: "CHECKMARK",
    TaskStatus.FAILED: "ERROR",
    TaskStatus.CANCELED: "CANCEL",
    TaskStatus.PAUSED: "PAUSE",
    TaskStatus.AWAITING_APPROVAL: "HIDE_OFF",
}

_CLASSES = (RENDERQ_PT_main, RENDERQ_PT_submit, RENDERQ_PT_tasks)


def register() -> None:
    """Register the panels and redraw them whenever job results arrive."""
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    jobs.on_drained(notify.redraw_panels)


def unregister() -> None:
    """Unregister the panels."""
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
