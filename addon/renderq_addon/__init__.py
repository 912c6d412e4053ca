"""RenderQ for Blender: send the open file to a RenderQ render farm and follow its tasks.

The panel is in Properties > Output > RenderQ; the coordinator's address and access token are in the add-on's
preferences. One zip (made by `build_addon.py` at the repository's root) installs as a legacy add-on in Blender
3.4 to 4.1 and as an extension in 4.2 and later. Installed as an extension the package is
`bl_ext.<repository>.renderq_addon` instead of `renderq_addon`; the names below are relative to it.

Modules, one job each (each registers its own classes):
    vendored   makes the bundled `renderq` client modules and `blender_asset_tracer` importable
    prefs      add-on preferences: coordinator URL, access token
    props      per-scene submit settings (`scene.renderq`)
    state      what this Blender session knows: submit progress, workers, tasks, the last error
    jobs       runs network and packing work in threads; results come back on the main thread
    client     the coordinator client with the token, the online-access check, connection test
    submit     checks before submitting, the snapshot of unsaved changes, the packing and upload job
    monitor    follows tasks: polling, completion notices, thumbnails, frame downloads, approve, cancel
    notify     tells the artist: console line, Info report, popup
    ops        the operators
    ui         the panels

Interface for scripts and tests:
    operators   renderq.submit, renderq.test_connection, renderq.refresh_workers, renderq.refresh_tasks,
                renderq.cancel_task(task_id), renderq.approve_task(task_id), renderq.download_frames(task_id),
                renderq.open_status_page
    preferences context.preferences.addons[<package>].preferences.coordinator_url / .token
    scene       scene.renderq: task_name, use_scene_range, frame_start, frame_end, frame_step, priority,
                assignment ('AUTO' or 'MANUAL'), selected_workers (items with .name), allow_missing,
                allow_outside, scout_frames
    jobs.drain(timeout=0.0) -> bool
                Runs the results of finished background jobs on the calling (main) thread, waiting up to
                `timeout` seconds for running jobs; True when none is left running. Blender's timers do this in
                the interface; they never fire in background mode, so scripts call it themselves.
    state.last_submitted_task_id() -> int | None   the task id of this session's last successful submit
    state.last_error() -> str | None               the last error sentence (cleared when a submit or a
                                                   connection test starts)
    state.SESSION.outside_files                    what stopped the last submit: files from outside the
                                                   project folder, links leading out, hidden files

An operator refused at once (file never saved, movie output, online access off...) reports an ERROR, which Blender
turns into a RuntimeError when the operator is called from a script; `state.last_error()` holds the sentence.
Problems found later by a background job (missing assets, files from outside the project folder or hidden ones,
coordinator errors) are reported by the job and also
land in `state.last_error()`.
"""

from . import vendored

# Blender 3.x reads this literal; extensions (4.2+) read blender_manifest.toml. build_addon.py checks both versions
# against pyproject.toml.
bl_info = {
    "name": "RenderQ",
    "author": "RenderQ developers",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "Properties > Output > RenderQ",
    "description": "Send the open file to a RenderQ render farm and follow its tasks",
    "category": "Render",
}
# Blender 4.2+ deletes `bl_info` from an extension once it is imported; the version is kept here.
VERSION: tuple[int, ...] = bl_info["version"]

# The bundled modules must be importable before the other modules import them, hence this side effect at import.
vendored.load()

# After load(), and all of them: scripts reach them as attributes of the package (jobs.drain, state.last_error).
from . import client, jobs, monitor, notify, ops, prefs, props, state, submit, ui  # noqa: E402, F401 - see above

state.ADDON_VERSION = VERSION

# Registration order: data types before the operators and panels that use them; unregistered in reverse.
_MODULES = (prefs, props, state, jobs, monitor, ops, ui)


def register() -> None:
    """Register every module's classes, properties and timers."""
    for module in _MODULES:
        module.register()


def unregister() -> None:
    """Undo `register`, in reverse order."""
    for module in reversed(_MODULES):
        module.unregister()
