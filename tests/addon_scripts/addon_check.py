"""Drive the RenderQ add-on inside a real Blender, in background mode, for tests/test_addon_blender34.py.

    blender -b [scene.blend] -Y --python-exit-code 1 --python addon_check.py -- --zip ZIP --url URL --case CASE

Installs and enables the add-on from the zip, points it at the coordinator, runs one case and prints one line
`RENDERQ_RESULT {json}` for the test to read. Checks that must hold inside Blender are asserted here; a failed
assertion makes Blender exit with status 1.

Cases:
    submit      make the open scene dirty (resolution 50 %), submit, wait for the job; the file, its path and its
                dirty flag must be unchanged, no texture packed into the session, no temporary copy left behind;
                then follow the task to its end
    unsaved     no file open: the submit is refused with a sentence
    refusals    a missing image stops the submit before upload
    movie       the open file's output is a movie (FFmpeg): the panel says the farm makes it, the file is submitted
                unchanged with the scene's own video; once the task is done its video is downloaded (Open Video)
                into the output folder
    allow_missing   a missing image with "allow missing" ticked: submitted, the missing asset recorded
    outside     the open file is tests/blender_scripts/make_exposed_project.py's attack.blend (a hidden key, a file
                outside the project folder, a link leading out): refused with the list, also once "Allow Files
                Outside the Project Folder" is ticked (the key); then --clean (the same without the key) is opened:
                refused until the box is ticked, then submitted; the Submit panel draws the box and the list
    notify      a Notify URL the coordinator refuses (ftp://) stops the submit with its sentence; then --notify-url is
                set in the Submit panel's field and the task is submitted with it
    follow      list the user's tasks, wait until --task-id is done, download its frames into the output folder;
                test the connection to the coordinator, to a closed port and to a web server that is not RenderQ
"""

import argparse
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
import time

import bpy

RESULT_PREFIX = "RENDERQ_RESULT "
DRAIN_TIMEOUT = 180.0


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="addon_check.py")
    parser.add_argument("--zip", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--case", required=True, choices=("submit", "unsaved", "refusals", "allow_missing", "outside",
                                                                 "follow", "movie", "notify", "order"))
    parser.add_argument("--task-id", type=int, default=0)
    parser.add_argument("--clean", default="", help="outside: the project's .blend without the hidden key")
    parser.add_argument("--notify-url", default="", help="notify: the webhook URL to submit with")
    return parser.parse_args(argv)


def install(zip_path: str, url: str):
    """Install and enable the add-on like an artist would, and set the coordinator URL."""
    bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True)
    bpy.ops.preferences.addon_enable(module="renderq_addon")
    import renderq_addon  # noqa: F401 - installed by the line above

    preferences = bpy.context.preferences.addons["renderq_addon"].preferences
    preferences.coordinator_url = url
    preferences.token = os.environ.get("RENDERQ_TEST_TOKEN", "")  # the artist token, as the farm's admin hands out
    return preferences


def drain_all(timeout: float = DRAIN_TIMEOUT) -> None:
    """Apply job results until no job runs, as the interface's timer would."""
    from renderq_addon import jobs

    deadline = time.monotonic() + timeout
    while not jobs.drain(0.5):
        still_running = jobs.running_keys()
        assert time.monotonic() < deadline, f"background jobs still running after {timeout:.0f} s: {still_running}"


def refused(operator) -> str:
    """Run an operator that must be refused at once; return the sentence it gave."""
    from renderq_addon import state

    try:
        operator()
    except RuntimeError as error:
        sentence = state.last_error()
        assert sentence, "the refusal left no sentence in state.last_error()"
        assert sentence in str(error), (sentence, str(error))
        return sentence
    raise AssertionError("the operator was not refused")


def hidden_copies(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".renderq-"))


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def case_submit() -> dict:
    from renderq_addon import state

    scene = bpy.context.scene
    filepath = bpy.data.filepath
    folder = os.path.dirname(filepath)
    original_hash = sha256_of(filepath)
    # A texture next to the file, and "Automatically Pack Resources" on: saving the copy must not pack it into
    # the session (a real save would), and the texture must travel with the task.
    os.makedirs(os.path.join(folder, "textures"))
    texture = bpy.data.images.new("renderq-texture", 8, 8)
    texture.filepath_raw = os.path.join(folder, "textures", "wood.png")
    texture.file_format = "PNG"
    texture.save()
    texture.filepath = "//textures/wood.png"
    texture.use_fake_user = True
    bpy.data.use_autopack = True
    # A change the artist made and did not save: the farm must render it.
    scene.render.resolution_percentage = 50
    bpy.ops.ed.undo_push(message="RenderQ test change")
    assert bpy.data.is_dirty, "the test change did not make the file dirty"

    assert bpy.ops.renderq.submit() == {"FINISHED"}
    drain_all()

    assert state.last_error() is None, state.last_error()
    task_id = state.last_submitted_task_id()
    assert isinstance(task_id, int), task_id
    assert bpy.data.filepath == filepath, (bpy.data.filepath, filepath)
    assert bpy.data.is_dirty, "submitting cleared the dirty flag"
    assert scene.render.resolution_percentage == 50
    assert bpy.data.use_autopack and texture.packed_file is None, "saving the copy packed the session's texture"
    assert sha256_of(filepath) == original_hash, "submitting changed the saved file"
    assert hidden_copies(folder) == [], hidden_copies(folder)
    listing = sorted(os.listdir(folder))
    # Follow the task to its end, as the interface's timer would: the end is announced once.
    wait_until_ended(task_id)
    assert task_id in state.SESSION.announced
    return {"task_id": task_id, "listing": listing}


def wait_until_ended(task_id: int) -> dict:
    """Refresh the tasks until `task_id` has ended; return its last state."""
    from renderq_addon import state

    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        bpy.ops.renderq.refresh_tasks()
        drain_all()
        task = state.SESSION.tasks.get(task_id)
        if task is not None and state.is_final(task):
            return task
        assert time.monotonic() < deadline, f"task {task_id} did not end: {task}"
        time.sleep(1.0)


def case_unsaved() -> dict:
    from renderq_addon import jobs

    assert bpy.data.filepath == ""
    sentence = refused(bpy.ops.renderq.submit)
    assert jobs.running_keys() == [], jobs.running_keys()
    return {"error": sentence}


def add_missing_image() -> None:
    """An image the file uses whose file is not on disk (kept by a fake user), as an unsaved change."""
    image = bpy.data.images.new("renderq-missing", 4, 4)
    image.source = "FILE"
    image.filepath = "//textures/not_there.png"
    image.use_fake_user = True
    bpy.ops.ed.undo_push(message="RenderQ test image")


def case_refusals() -> dict:
    from renderq_addon import state

    folder = os.path.dirname(bpy.data.filepath)
    listing = sorted(os.listdir(folder))

    add_missing_image()
    assert bpy.ops.renderq.submit() == {"FINISHED"}
    drain_all()
    assert state.last_submitted_task_id() is None
    assert hidden_copies(folder) == []
    assert sorted(os.listdir(folder)) == listing, "a refused submit left files behind"
    return {
        "missing_error": state.last_error(),
        "missing_listed": list(state.SESSION.missing_assets),
    }


def case_allow_missing() -> dict:
    from renderq_addon import state

    add_missing_image()
    bpy.context.scene.renderq.allow_missing = True
    assert bpy.ops.renderq.submit() == {"FINISHED"}
    drain_all()
    assert state.last_error() is None, state.last_error()
    return {"task_id": state.last_submitted_task_id(), "missing_listed": list(state.SESSION.missing_assets)}


def case_order() -> dict:
    """The panel's Order choice: Whole Shot First by default, In Order when picked; what reaches the farm."""
    settings = bpy.context.scene.renderq
    default = settings.render_order
    settings.render_order = "sequential"
    submitted = submit_and_drain()
    return {"default": default, "drawn": submit_panel_draws(), **submitted}


def submit_and_drain() -> dict:
    """Submit the open file and wait for the job; what the add-on then says and lists."""
    from renderq_addon import state

    assert bpy.ops.renderq.submit() == {"FINISHED"}
    drain_all()
    return {"error": state.last_error(), "listed": list(state.SESSION.outside_files),
            "task_id": state.last_submitted_task_id()}


class _Recorder:
    """Stands in for a panel's layout: records every call, and every row, box or column made from it is itself."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self

        return record


def submit_panel_draws() -> dict:
    """What the Submit panel draws: the properties it shows and its labels (background mode has no interface)."""
    from renderq_addon import ui

    layout = _Recorder()
    panel = type("Panel", (), {"layout": layout, "_draw_workers": lambda *args: None})()
    ui.RENDERQ_PT_submit.draw_body(panel, bpy.context)
    return {
        "props": [args[1] for name, args, _ in layout.calls if name == "prop"],
        "labels": [kwargs.get("text", "") for name, _, kwargs in layout.calls if name == "label"],
    }


def case_outside(clean: str) -> dict:
    settings = bpy.context.scene.renderq
    assert settings.allow_outside is False
    refused = submit_and_drain()
    drawn = submit_panel_draws()
    settings.allow_outside = True
    refused_hidden = submit_and_drain()
    # The same project without the key, as a new file: its box starts unticked.
    bpy.ops.wm.open_mainfile(filepath=clean)
    settings = bpy.context.scene.renderq
    assert settings.allow_outside is False
    clean_refused = submit_and_drain()
    settings.allow_outside = True
    allowed = submit_and_drain()
    return {"refused": refused, "drawn": drawn, "refused_hidden": refused_hidden, "clean_refused": clean_refused,
            "allowed": allowed}


class _NotRenderQ(http.server.BaseHTTPRequestHandler):
    """A web server that is not a RenderQ coordinator."""

    def do_GET(self) -> None:
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def connection_sentence(preferences, url: str) -> tuple[bool, str]:
    from renderq_addon import state

    preferences.coordinator_url = url
    try:
        bpy.ops.renderq.test_connection()
    finally:
        drain_all(30)
    check = state.SESSION.connection
    return bool(check.ok), check.text


def case_movie() -> dict:
    from renderq_addon import state, submit

    scene = bpy.context.scene
    filepath = bpy.data.filepath
    original_hash = sha256_of(filepath)
    assert scene.render.is_movie_format
    note = submit.output_note(scene)
    assert bpy.ops.renderq.submit() == {"FINISHED"}
    drain_all()
    assert state.last_error() is None, state.last_error()
    task_id = state.last_submitted_task_id()
    assert isinstance(task_id, int), task_id
    assert sha256_of(filepath) == original_hash and scene.render.image_settings.file_format == "FFMPEG"
    wait_until_ended(task_id)
    assert bpy.ops.renderq.open_video(task_id=task_id) == {"FINISHED"}
    drain_all()
    assert state.last_error() is None, state.last_error()
    return {"task_id": task_id, "note": note, "video": state.SESSION.downloads.get(task_id, "")}


def case_notify(url: str) -> dict:
    from renderq_addon import state

    settings = bpy.context.scene.renderq
    settings.notify_url = "ftp://example.com/hook"
    assert bpy.ops.renderq.submit() == {"FINISHED"}
    drain_all()
    assert state.last_submitted_task_id() is None
    error = state.last_error()
    settings.notify_url = url
    assert bpy.ops.renderq.submit() == {"FINISHED"}
    drain_all()
    assert state.last_error() is None, state.last_error()
    return {"error": error, "task_id": state.last_submitted_task_id()}


def case_follow(task_id: int, preferences) -> dict:
    from renderq_addon import state

    url = preferences.coordinator_url
    preferences.show_all_my_tasks = True
    wait_until_ended(task_id)
    assert task_id in state.shown_task_ids(True)
    assert task_id not in state.SESSION.announced  # it ended before this session saw it running
    assert bpy.ops.renderq.download_frames(task_id=task_id) == {"FINISHED"}
    drain_all()
    assert state.last_error() is None, state.last_error()
    download_text = state.SESSION.downloads.get(task_id, "")
    # Again: the frames are there with the same content, so nothing is fetched twice.
    assert bpy.ops.renderq.download_frames(task_id=task_id) == {"FINISHED"}
    drain_all()
    second_download_text = state.SESSION.downloads.get(task_id, "")

    connections = {"coordinator": connection_sentence(preferences, url)}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    connections["closed"] = connection_sentence(preferences, f"http://127.0.0.1:{closed_port}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotRenderQ)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        connections["other"] = connection_sentence(preferences, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    preferences.coordinator_url = url
    return {
        "status": state.SESSION.tasks[task_id].get("status"),
        "download": download_text,
        "second_download": second_download_text,
        "connections": connections,
    }


def main() -> None:
    args = parse_args()
    preferences = install(args.zip, args.url)
    if args.case == "submit":
        result = case_submit()
    elif args.case == "unsaved":
        result = case_unsaved()
    elif args.case == "refusals":
        result = case_refusals()
    elif args.case == "allow_missing":
        result = case_allow_missing()
    elif args.case == "outside":
        result = case_outside(args.clean)
    elif args.case == "movie":
        result = case_movie()
    elif args.case == "notify":
        result = case_notify(args.notify_url)
    elif args.case == "order":
        result = case_order()
    else:
        result = case_follow(args.task_id, preferences)
    result["blender"] = list(bpy.app.version)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":  # Blender runs a --python script as __main__; the other scripts import it
    main()
