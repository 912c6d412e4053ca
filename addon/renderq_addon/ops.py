"""The operators. Each one checks what it can at once, starts a job and returns; the job's outcome is reported
when it arrives (see jobs.py). None of them pushes an undo step or changes the file, except picking workers, which
is a scene setting."""

from __future__ import annotations

import os

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import client, jobs, monitor, notify, prefs, state, submit


def _refuse(operator: bpy.types.Operator, sentence: str) -> set[str]:
    """Report a refusal at once; from a script, Blender turns the ERROR report into a RuntimeError."""
    state.set_error(sentence)
    operator.report({"ERROR"}, sentence)
    return {"CANCELLED"}


class RENDERQ_OT_submit(bpy.types.Operator):
    """Pack this file with its assets and send it to the render farm"""

    bl_idname = "renderq.submit"
    bl_label = "Submit to RenderQ"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        state.set_error(None)
        try:
            message = submit.start(context)
        except submit.Refused as refusal:
            return _refuse(self, str(refusal))
        self.report({"INFO"}, message)
        return {"FINISHED"}


class RENDERQ_OT_test_connection(bpy.types.Operator):
    """Check that the coordinator answers, runs a matching RenderQ and accepts the token"""

    bl_idname = "renderq.test_connection"
    bl_label = "Test Connection"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        state.set_error(None)
        problem = client.online_access_problem()
        if problem:
            state.SESSION.connection = state.ConnectionCheck(ok=False, text=problem)
            return _refuse(self, problem)
        preferences = prefs.get(context)
        if preferences is None:
            return _refuse(self, "The RenderQ add-on is not enabled")
        settings = client.settings_from_prefs(preferences)

        def done(sentence: str) -> None:
            state.SESSION.connection = state.ConnectionCheck(ok=True, text=sentence)
            notify.tell(sentence)

        def failed(error: BaseException) -> None:
            sentence = str(error) if isinstance(error, client.ConnectionProblem) else client.error_sentence(error)
            state.SESSION.connection = state.ConnectionCheck(ok=False, text=sentence)
            notify.tell(sentence, "ERROR")

        if jobs.start("connection", lambda _progress: client.test_connection(settings), on_done=done, on_error=failed):
            state.SESSION.connection = state.ConnectionCheck(running=True)
        self.report({"INFO"}, f"Testing the connection to {settings.url}...")
        return {"FINISHED"}


class RENDERQ_OT_refresh_workers(bpy.types.Operator):
    """Fetch the list of workers from the coordinator"""

    bl_idname = "renderq.refresh_workers"
    bl_label = "Refresh Workers"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            monitor.refresh_workers()
        except monitor.Refused as refusal:
            return _refuse(self, str(refusal))
        return {"FINISHED"}


class RENDERQ_OT_refresh_tasks(bpy.types.Operator):
    """Fetch the state of your tasks from the coordinator now"""

    bl_idname = "renderq.refresh_tasks"
    bl_label = "Refresh Tasks"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            monitor.poll()
        except monitor.Refused as refusal:
            return _refuse(self, str(refusal))
        return {"FINISHED"}


class RENDERQ_OT_cancel_task(bpy.types.Operator):
    """Cancel the frames of this task not rendered yet; rendered frames stay"""

    bl_idname = "renderq.cancel_task"
    bl_label = "Cancel Task"
    bl_options = {"REGISTER"}

    task_id: IntProperty(name="Task", min=1, options={"SKIP_SAVE"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.task_id < 1:
            return _refuse(self, "Say which task to cancel (task_id)")
        try:
            monitor.cancel(self.task_id)
        except monitor.Refused as refusal:
            return _refuse(self, str(refusal))
        self.report({"INFO"}, f"Canceling task {self.task_id}...")
        return {"FINISHED"}


def output_folder(scene: bpy.types.Scene) -> str:
    """The folder of the scene's output path, absolute; raises monitor.Refused when it cannot be known."""
    raw = scene.render.filepath
    if raw.startswith("//") and not bpy.data.filepath:
        raise monitor.Refused("The output path is relative to the file, which was never saved: save it first, "
                              "or set an absolute output path")
    path = bpy.path.abspath(raw)
    folder = path if path.endswith(("/", "\\")) else os.path.dirname(path)
    if not folder:
        raise monitor.Refused("The scene has no output folder: set the output path in Output Properties")
    return os.path.normpath(folder)


class RENDERQ_OT_download_frames(bpy.types.Operator):
    """Download the task's rendered frames into the scene's output folder (frames already there are kept)"""

    bl_idname = "renderq.download_frames"
    bl_label = "Download Frames"
    bl_options = {"REGISTER"}

    task_id: IntProperty(name="Task", min=1, options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.task_id < 1:
            return _refuse(self, "Say which task's frames to download (task_id)")
        try:
            folder = output_folder(context.scene)
            monitor.download(self.task_id, folder)
        except monitor.Refused as refusal:
            return _refuse(self, str(refusal))
        self.report({"INFO"}, f"Downloading the frames of task {self.task_id} into {folder}...")
        return {"FINISHED"}


class RENDERQ_OT_open_status_page(bpy.types.Operator):
    """Open the coordinator's status page in the web browser"""

    bl_idname = "renderq.open_status_page"
    bl_label = "Open Status Page"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        preferences = prefs.get(context)
        if preferences is None:
            return _refuse(self, "The RenderQ add-on is not enabled")
        url = client.settings_from_prefs(preferences).url
        problem = client.check_url(url)
        if problem:
            return _refuse(self, problem)
        if "://" not in url:
            url = "http://" + url
        bpy.ops.wm.url_open(url=url)
        return {"FINISHED"}


class RENDERQ_OT_toggle_worker(bpy.types.Operator):
    """Pick this worker for the task, or unpick it"""

    bl_idname = "renderq.toggle_worker"
    bl_label = "Pick Worker"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    name: StringProperty(name="Worker", options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        picked = context.scene.renderq.selected_workers
        for index, item in enumerate(picked):
            if item.name == self.name:
                picked.remove(index)
                return {"FINISHED"}
        if self.name:
            picked.add().name = self.name
        return {"FINISHED"}


class RENDERQ_OT_dismiss_task(bpy.types.Operator):
    """Stop showing this task here (it stays on the farm)"""

    bl_idname = "renderq.dismiss_task"
    bl_label = "Hide Task"
    bl_options = {"REGISTER", "INTERNAL"}

    task_id: IntProperty(name="Task", options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        state.forget_task(self.task_id)
        return {"FINISHED"}


class RENDERQ_OT_report_message(bpy.types.Operator):
    """Show a RenderQ message in the status bar and the Info editor (used by timers, which cannot report)"""

    bl_idname = "renderq.report_message"
    bl_label = "RenderQ Message"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=(("INFO", "Info", ""), ("WARNING", "Warning", ""), ("ERROR", "Error", "")),
                        options={"SKIP_SAVE"})
    message: StringProperty(options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({self.level}, self.message)
        return {"FINISHED"}


_CLASSES = (
    RENDERQ_OT_submit,
    RENDERQ_OT_test_connection,
    RENDERQ_OT_refresh_workers,
    RENDERQ_OT_refresh_tasks,
    RENDERQ_OT_cancel_task,
    RENDERQ_OT_download_frames,
    RENDERQ_OT_open_status_page,
    RENDERQ_OT_toggle_worker,
    RENDERQ_OT_dismiss_task,
    RENDERQ_OT_report_message,
)


def register() -> None:
    """Register the operators."""
    for cls in _CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    """Unregister the operators."""
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
