"""The operators. Each one checks what it can at once, starts a job and returns; the job's outcome is reported
when it arrives (see jobs.py). None of them pushes an undo step or changes the file, except picking workers, which
is a scene setting."""

from __future__ import annotations

import os

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import client, jobs, monitor, notify, state, submit


def _refuse(operator: bpy.types.Operator, sentence: str) -> set[str]:
    """Report a refusal at once; from a script, Blender turns the ERROR report into a RuntimeError."""
    state.set_error(sentence)
    operator.report({"ERROR"}, sentence)
    return {"CANCELLED"}


class _StartsJob:
    """An operator whose `start` checks what it can at once and starts a job.

    `start` returns a sentence to report as INFO (or None) and raises `client.Refused` to refuse; every such
    operator refuses the same way, which is why `execute` lives here once.
    """

    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            message = self.start(context)
        except client.Refused as refusal:
            return _refuse(self, str(refusal))
        if message is not None:
            self.report({"INFO"}, message)
        return {"FINISHED"}

    def start(self, context: bpy.types.Context) -> str | None:
        raise NotImplementedError


class RENDERQ_OT_submit(_StartsJob, bpy.types.Operator):
    """Pack this file with its assets and send it to the render farm"""

    bl_idname = "renderq.submit"
    bl_label = "Submit to RenderQ"

    def start(self, context: bpy.types.Context) -> str | None:
        state.set_error(None)
        return submit.start(context)


class RENDERQ_OT_test_connection(_StartsJob, bpy.types.Operator):
    """Check that the coordinator answers, runs a matching RenderQ and accepts the token"""

    bl_idname = "renderq.test_connection"
    bl_label = "Test Connection"

    def start(self, context: bpy.types.Context) -> str | None:
        state.set_error(None)
        problem = client.online_access_problem()
        if problem:
            state.SESSION.connection = state.ConnectionCheck(ok=False, text=problem)
            raise client.Refused(problem)
        settings = client.settings_from_prefs(context)

        def done(sentence: str) -> None:
            state.SESSION.connection = state.ConnectionCheck(ok=True, text=sentence)
            notify.tell(sentence)

        def failed(error: BaseException) -> None:
            sentence = str(error) if isinstance(error, client.ConnectionProblem) else client.error_sentence(error)
            state.SESSION.connection = state.ConnectionCheck(ok=False, text=sentence)
            notify.tell(sentence, "ERROR")

        if jobs.start("connection", lambda _progress: client.test_connection(settings), on_done=done, on_error=failed):
            state.SESSION.connection = state.ConnectionCheck(running=True)
        return f"Testing the connection to {settings.url}..."


class RENDERQ_OT_refresh_workers(_StartsJob, bpy.types.Operator):
    """Fetch the list of workers from the coordinator"""

    bl_idname = "renderq.refresh_workers"
    bl_label = "Refresh Workers"

    def start(self, context: bpy.types.Context) -> str | None:
        monitor.refresh_workers()
        return None


class RENDERQ_OT_refresh_tasks(_StartsJob, bpy.types.Operator):
    """Fetch the state of your tasks from the coordinator now"""

    bl_idname = "renderq.refresh_tasks"
    bl_label = "Refresh Tasks"

    def start(self, context: bpy.types.Context) -> str | None:
        monitor.poll()
        return None


class RENDERQ_OT_cancel_task(_StartsJob, bpy.types.Operator):
    """Cancel the frames of this task not rendered yet; rendered frames stay"""

    bl_idname = "renderq.cancel_task"
    bl_label = "Cancel Task"

    task_id: IntProperty(name="Task", min=1, options={"SKIP_SAVE"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)

    def start(self, context: bpy.types.Context) -> str | None:
        if self.task_id < 1:
            raise client.Refused("Say which task to cancel (task_id)")
        monitor.cancel(self.task_id)
        return f"Canceling task {self.task_id}..."


class RENDERQ_OT_approve_task(_StartsJob, bpy.types.Operator):
    """Render the rest of this task: its scout frames are done and it waits for your approval"""

    bl_idname = "renderq.approve_task"
    bl_label = "Approve Task"

    task_id: IntProperty(name="Task", min=1, options={"SKIP_SAVE"})

    def start(self, context: bpy.types.Context) -> str | None:
        if self.task_id < 1:
            raise client.Refused("Say which task to approve (task_id)")
        monitor.approve(self.task_id)
        return f"Approving task {self.task_id}..."


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


class RENDERQ_OT_download_frames(_StartsJob, bpy.types.Operator):
    """Download the task's rendered frames into the scene's output folder (frames already there are kept)"""

    bl_idname = "renderq.download_frames"
    bl_label = "Download Frames"

    task_id: IntProperty(name="Task", min=1, options={"SKIP_SAVE"})

    def start(self, context: bpy.types.Context) -> str | None:
        if self.task_id < 1:
            raise client.Refused("Say which task's frames to download (task_id)")
        folder = output_folder(context.scene)
        monitor.download(self.task_id, folder)
        return f"Downloading the frames of task {self.task_id} into {folder}..."


class RENDERQ_OT_open_video(_StartsJob, bpy.types.Operator):
    """Download the task's video into the scene's output folder and open it"""

    bl_idname = "renderq.open_video"
    bl_label = "Open Video"

    task_id: IntProperty(name="Task", min=1, options={"SKIP_SAVE"})

    def start(self, context: bpy.types.Context) -> str | None:
        if self.task_id < 1:
            raise client.Refused("Say which task's video to open (task_id)")
        folder = output_folder(context.scene)
        monitor.open_video(self.task_id, folder)
        return f"Downloading the video of task {self.task_id} into {folder}..."


class RENDERQ_OT_open_status_page(_StartsJob, bpy.types.Operator):
    """Open the coordinator's status page in the web browser"""

    bl_idname = "renderq.open_status_page"
    bl_label = "Open Status Page"

    def start(self, context: bpy.types.Context) -> str | None:
        url = client.settings_from_prefs(context).url
        problem = client.check_url(url)
        if problem:
            raise client.Refused(problem)
        if "://" not in url:
            url = "http://" + url
        bpy.ops.wm.url_open(url=url)
        return None


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
    RENDERQ_OT_approve_task,
    RENDERQ_OT_download_frames,
    RENDERQ_OT_open_video,
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
