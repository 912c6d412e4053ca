"""Names that break downloads and manifests that break workers (issue 12), tried against a real coordinator.

One path rule (renderq.paths) is shared by the coordinator, the worker, the command line and the add-on: the
coordinator refuses what a worker or an artist's disk could not hold, frames of a task never share an output name,
and a download skips (and reports) a frame it cannot save instead of stopping.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import itertools
import os
import sqlite3
import subprocess
import sys
import unicodedata
import urllib.parse
import zipfile

import pytest

from harness import ROOT, Farm, find_blender_or_none
from renderq.paths import (
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    check_file_name,
    check_path_set,
    check_relative_path,
    collision_key,
    is_safe_file_name,
)
from test_api_bad_input import snapshot

BLEND = b"BLENDER-v304REND" + b"\0" * 512
NFC = unicodedata.normalize("NFC", "\u00e9.png")
NFD = unicodedata.normalize("NFD", "\u00e9.png")
NUMBERS = itertools.count(1)


# -- the rule itself ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, reason", [
    ("", "not a file path"), (None, "not a file path"), (7, "not a file path"),
    ("/etc/passwd", "absolute"), ("a//b", "empty"), ("a/", "empty"), ("./a", "'.'"), ("a/../b", "'..'"),
    (".", "'.'"), ("..", "'..'"),
    ("a\\b", "Windows does not allow"), ("tex/C:x.png", "':'"), ("a.png:ads", "':'"), ("C:/x", "':'"),
    ("a<b", "'<'"), ("a>b", "'>'"), ('a"b', "'\"'"), ("a|b", "'|'"), ("a?b", "'?'"), ("a*b", "'\\*'"),
    ("a\x00b", "U\\+0000"), ("a\x1fb", "U\\+001F"), ("\x7f", "U\\+007F"), ("a\x85b", "U\\+0085"),
    ("a\u202egnp.exe", "U\\+202E"), ("a\u200bb", "U\\+200B"), ("a\u2028b", "U\\+2028"), ("a\ud800b", "U\\+D800"),
    ("trailing. ", "ending in"), ("dir./x", "ending in"), ("x ", "ending in"),
    ("CON", "device name"), ("con", "device name"), ("nul.png", "device name"), ("a/Aux.tar.gz", "device name"),
    ("COM1", "device name"), ("lpt9.txt", "device name"), ("COM\u00b9", "device name"), ("NUL .png", "device name"),
    ("x" * (MAX_COMPONENT_BYTES + 1), "255 bytes"), ("\u00e9" * 128, "255 bytes"),
    ("a/" * (MAX_PATH_BYTES // 2) + "b", "1024 bytes"),
])
def test_the_rule_refuses_with_a_sentence(path, reason):
    with pytest.raises(ValueError, match=reason) as refused:
        check_relative_path(path)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("path", ["main.blend", "tex/wood 01.png", "_outside_project/C/Users/x.exr", "..hidden",
                                  "a..b/c", "CONSOLE.png", "COM10", "com0.txt", "\u00e9t\u00e9/\u65e5\u672c.png",
                                  "x" * MAX_COMPONENT_BYTES, "\u00e9" * 127, ".blend1", "a.b.c"])
def test_the_rule_accepts_ordinary_paths(path):
    assert check_relative_path(path) == path


def test_a_file_name_is_one_component():
    assert check_file_name("f_0001.png") == "f_0001.png"
    with pytest.raises(ValueError, match="the file name 'a/b.png' holds '/'"):
        check_file_name("a/b.png")
    with pytest.raises(ValueError, match="^the file name 'CON' uses"):
        check_file_name("CON")
    assert is_safe_file_name("f.png") and not is_safe_file_name(".") and not is_safe_file_name(None)


def test_collision_key_folds_case_and_unicode_form():
    assert NFC != NFD and collision_key(NFC) == collision_key(NFD)
    assert collision_key("A.PNG") == collision_key("a.png")
    assert collision_key("STRASSE") == collision_key("stra\u00dfe")
    assert collision_key("\u212b") == collision_key("\u00e5")  # the Angstrom sign is the letter on macOS
    assert collision_key("a.png") != collision_key("a.png ")


@pytest.mark.parametrize("paths, reason", [
    (["a.png", "A.PNG"], "differ only in case"),
    ([NFC, NFD], "two Unicode forms"),
    (["scene.blend", "scene.blend/x.png"], "needs it as a folder"),
    (["scene.blend/x.png", "Scene.Blend"], "needs it as a folder"),
    (["Tex/a.png", "tex"], "needs it as a folder"),
    (["x", "x"], "listed twice"),
])
def test_a_set_of_paths_that_collide_is_refused(paths, reason):
    with pytest.raises(ValueError, match=reason):
        check_path_set(paths)


def test_a_set_of_distinct_paths_is_accepted():
    check_path_set(["a/b.png", "a/c.png", "b", "tex/a.png", "tex2/a.png"])


# -- the coordinator ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    farm = Farm(str(tmp_path_factory.mktemp("attacks-paths")))
    farm.start_coordinator()
    yield farm
    farm.stop()


@pytest.fixture(scope="module")
def blobs(farm):
    """SHA-256 of an uploaded .blend and of a small texture."""
    status, blend = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    assert status == 200, blend
    status, texture = farm.api.call("POST", f"/upload_file?sha256={hashlib.sha256(b'tex').hexdigest()}", raw=b"tex")
    assert status == 200, texture
    return {"blend": blend["sha256"], "tex": texture["sha256"]}


def manifest_task(blobs: dict, *paths: str) -> dict:
    """A submission of main.blend plus the texture under each of `paths`."""
    entries = [{"path": "main.blend", "sha256": blobs["blend"], "size": len(BLEND)}]
    entries += [{"path": path, "sha256": blobs["tex"], "size": 3} for path in paths]
    return {"name": "paths", "manifest": entries, "main_file": "main.blend", "frame_start": 1, "frame_end": 1}


def assert_refused(farm: Farm, method: str, path: str, expected: int, phrase: str, body=None, raw=None) -> dict:
    """The request gets `expected` with a one-sentence JSON error holding `phrase`, and nothing stored changes."""
    before = snapshot(farm)
    status, answer = farm.api.call(method, path, body=body, raw=raw)
    assert status == expected, answer
    assert isinstance(answer, dict) and phrase in answer["error"] and "\n" not in answer["error"], answer
    assert snapshot(farm) == before
    return answer


@pytest.mark.parametrize("bad, phrase", [
    ("tex/C:x.png", "':'"), ("a.png:ads", "':'"), ("x" * 4096, "255 bytes"), ("\x7f.png", "U+007F"),
    ("a\u202egnp.exe", "U+202E"), ("CON", "device name"), ("tex/nul.png", "device name"),
    ("trailing. ", "ending in"), ("tex/../../x.png", "'..'"), ("/etc/passwd", "absolute"), ("a\\b.png", "'\\\\'"),
])
def test_a_manifest_path_no_worker_can_write_is_refused(farm, blobs, bad, phrase):
    answer = assert_refused(farm, "POST", "/submit_task", 400, phrase, body=manifest_task(blobs, bad))
    assert answer["error"].startswith("a manifest path cannot be written on every worker: the path ")


@pytest.mark.parametrize("paths, phrase", [
    (["tex/a.png", "tex/A.PNG"], "differ only in case"),
    ([NFC, NFD], "two Unicode forms"),
    (["main.blend/x.png"], "needs it as a folder"),
    (["Tex/a.png", "tex/b.png", "tex"], "needs it as a folder"),
])
def test_a_manifest_whose_paths_collide_is_refused(farm, blobs, paths, phrase):
    answer = assert_refused(farm, "POST", "/submit_task", 400, phrase, body=manifest_task(blobs, *paths))
    assert answer["error"].startswith("the manifest cannot be written on every worker: ")


def test_a_main_file_or_blend_name_no_machine_can_write_is_refused(farm, blobs):
    body = manifest_task(blobs)
    body["main_file"] = "main.blend:x"
    assert_refused(farm, "POST", "/submit_task", 400, "'main_file' cannot be written", body=body)
    body = {"blend_sha256": blobs["blend"], "blend_filename": "con.blend", "frame_start": 1, "frame_end": 1}
    assert_refused(farm, "POST", "/submit_task", 400, "device name", body=body)


def test_a_manifest_of_ordinary_paths_is_accepted(farm, blobs):
    status, answer = farm.api.call("POST", "/submit_task", manifest_task(blobs, "tex/a.png", NFC, "Tex2/b.png"))
    assert status == 201, answer
    manifest = farm.api.get(f"/task_manifest?task_id={answer['task_id']}")
    assert sorted(f["path"] for f in manifest["files"]) == sorted(["main.blend", "tex/a.png", NFC, "Tex2/b.png"])


# -- frame output names ---------------------------------------------------------------------------------------------


class Worker:
    """A worker speaking the coordinator's worker API, as worker/agent.py does (without Blender)."""

    def __init__(self, farm: Farm, name: str) -> None:
        self.api = farm.api
        self.worker_id = self.api.post("/register_worker", {"name": name, "host": "h", "blender_version": "3.4.1",
                                                            "cpu_count": 1})["worker_id"]

    def claim(self, task_id: int) -> dict:
        frame = self.api.get(f"/get_task?worker_id={self.worker_id}&prefer_task_id={task_id}")["frame"]
        assert frame is not None and frame["task_id"] == task_id, frame
        return frame

    def upload_path(self, lease: dict, filename: str) -> str:
        query = urllib.parse.urlencode({"worker_id": self.worker_id, "task_id": lease["task_id"],
                                        "frame": lease["frame"], "lease_id": lease["lease_id"], "filename": filename})
        return f"/upload_frame?{query}"

    def upload(self, lease: dict, filename: str, data: bytes) -> tuple[int, dict]:
        return self.api.call("POST", self.upload_path(lease, filename), raw=data)

    def done(self, lease: dict) -> None:
        self.api.post("/update_task", {"worker_id": self.worker_id, "task_id": lease["task_id"],
                                       "frame": lease["frame"], "lease_id": lease["lease_id"], "status": "done"})

    def render(self, task_id: int, filename: str) -> dict:
        """Claim the task's next frame, upload `filename` with frame-specific bytes and report it done."""
        lease = self.claim(task_id)
        status, answer = self.upload(lease, filename, frame_bytes(lease["frame"]))
        assert status == 200, answer
        self.done(lease)
        return lease


def frame_bytes(frame: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + f"frame {frame}".encode()


def new_task(farm: Farm, blobs: dict, frames: int) -> int:
    """A task whose frames are claimed lowest number first, as the tests name each claimed frame's file."""
    return farm.api.post("/submit_task", {"name": "outputs", "blend_sha256": blobs["blend"],
                                          "blend_filename": "shot.blend", "frame_start": 1,
                                          "frame_end": frames, "order": "sequential"})["task_id"]


@pytest.mark.parametrize("name", [".", "..", "CON", "nul.png", "trailing. ", "a.png:ads", "a\u202egnp.exe",
                                  "x" * 300, "f\x7f.png", "sub/f.png"])
def test_a_frame_output_name_that_breaks_downloads_is_refused(farm, blobs, name):
    worker = Worker(farm, f"w-bad-{next(NUMBERS)}")
    lease = worker.claim(new_task(farm, blobs, 1))
    answer = assert_refused(farm, "POST", worker.upload_path(lease, name), 400, "the frame's file name",
                            raw=frame_bytes(1))
    assert "cannot be written on every machine" in answer["error"]


@pytest.mark.parametrize("second", ["f.png", "F.PNG", "f.Png"])
def test_a_second_frame_with_an_output_name_the_task_has_is_refused_with_409(farm, blobs, second):
    task_id = new_task(farm, blobs, 2)
    worker = Worker(farm, f"w-dup-{next(NUMBERS)}")
    worker.render(task_id, "f.png")
    lease = worker.claim(task_id)
    answer = assert_refused(farm, "POST", worker.upload_path(lease, second), 409, "frame 1 has 'f.png' already",
                            raw=frame_bytes(2))
    assert answer["error"] == (f"frame 2 of task {task_id} cannot have the output {second!r}: frame 1 has 'f.png' "
                               "already, and the frames of a task need different file names (case and Unicode "
                               "form aside)")
    # The frame is still the worker's: under its own name it goes through.
    status, answer = worker.upload(lease, "f2.png", frame_bytes(2))
    assert status == 200, answer


def test_two_frames_uploading_one_name_at_once_get_one_200_and_one_409(farm, blobs):
    task_id = new_task(farm, blobs, 8)
    worker = Worker(farm, "w-race")
    leases = [worker.claim(task_id) for _ in range(8)]
    # 256 KB each, so that the uploads overlap: both may pass the early check, and the recording decides.
    with concurrent.futures.ThreadPoolExecutor(len(leases)) as pool:
        statuses = list(pool.map(lambda lease: worker.upload(lease, "same.png", b"x" * 262_144)[0], leases))
    assert sorted(statuses) == [200] + [409] * 7
    outputs = [f["output"] for f in farm.api.task(task_id)["frames"]]
    assert outputs.count("same.png") == 1


def test_the_same_name_in_two_unicode_forms_is_one_output(farm, blobs):
    task_id = new_task(farm, blobs, 2)
    worker = Worker(farm, "w-nfd")
    worker.render(task_id, NFC)
    lease = worker.claim(task_id)
    assert_refused(farm, "POST", worker.upload_path(lease, NFD), 409, "need different file names",
                   raw=frame_bytes(2))


def test_a_frame_may_upload_its_own_name_again_and_other_tasks_may_use_it(farm, blobs):
    first, second = new_task(farm, blobs, 1), new_task(farm, blobs, 1)
    worker = Worker(farm, "w-again")
    lease = worker.claim(first)
    for _ in range(2):  # a retried upload after a lost answer
        status, answer = worker.upload(lease, "f.png", frame_bytes(1))
        assert status == 200, answer
    worker.done(lease)
    worker.render(second, "f.png")
    assert farm.api.task(second)["frames"][0]["output"] == "f.png"


def test_a_requeued_frame_frees_its_output_name(farm, blobs):
    task_id = new_task(farm, blobs, 2)
    worker = Worker(farm, "w-requeue")
    first, second = worker.claim(task_id), worker.claim(task_id)
    assert worker.upload(first, "f.png", frame_bytes(1))[0] == 200
    assert worker.upload(second, "f.png", frame_bytes(2))[0] == 409
    farm.api.post("/update_task", {"worker_id": worker.worker_id, "task_id": task_id, "frame": first["frame"],
                                   "lease_id": first["lease_id"], "status": "released"})
    assert worker.upload(second, "f.png", frame_bytes(2))[0] == 200


# -- downloads: the zip and the real command line -------------------------------------------------------------------


def store_legacy_output(farm: Farm, task_id: int, frame: int, name: str) -> None:
    """Rename a done frame's output in the database, as a coordinator from before the path rule could have
    stored it (the rule refuses such names now, see above)."""
    db = sqlite3.connect(os.path.join(farm.data_dir, "renderq.sqlite3"), timeout=30)
    try:
        with db:
            db.execute("UPDATE frames SET output = ?, output_key = NULL WHERE task_id = ? AND frame = ?",
                       (name, task_id, frame))
    finally:
        db.close()


@pytest.fixture(scope="module")
def legacy_task(farm, blobs):
    """A done task of five frames; frames 2 and 4 carry names stored before the rule: '.' and 'F_0001.PNG'."""
    task_id = new_task(farm, blobs, 5)
    worker = Worker(farm, "w-legacy")
    for frame in range(1, 6):
        worker.render(task_id, f"f_{frame:04d}.png")
    store_legacy_output(farm, task_id, 2, ".")
    store_legacy_output(farm, task_id, 4, "F_0001.PNG")
    return task_id


def test_the_frames_zip_never_holds_two_entries_of_one_name(farm, legacy_task):
    status, data = farm.api.call("GET", f"/download_frames_zip?task_id={legacy_task}")
    assert status == 200
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    assert names == ["f_0001.png", "frame_2", "f_0003.png", "frame_4.PNG", "f_0005.png"]
    assert archive.read("frame_4.PNG") == frame_bytes(4)


def renderq(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderq", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": ROOT})


def test_download_skips_and_reports_frames_it_cannot_save_and_fetches_the_rest(farm, legacy_task, tmp_path):
    dest = tmp_path / "frames"
    dest.mkdir()
    # Frame 5's name passes every rule, but a folder of that name is in the way on the artist's disk.
    (dest / "f_0005.png").mkdir()
    result = renderq("download", str(legacy_task), str(dest), *farm.cli_flags(), cwd=str(tmp_path))
    assert result.returncode == 1, result.stderr
    errors = result.stderr.strip().splitlines()[-4:]
    assert errors[0] == (f"renderq: frame 2 of task {legacy_task} skipped: the file name '.' has an empty, '.' "
                         "or '..' part")
    assert errors[1] == (f"renderq: frame 4 of task {legacy_task} skipped: its file name 'F_0001.PNG' would be "
                         "the same file as frame 1's 'f_0001.png' on Windows or macOS")
    assert errors[2].startswith(f"renderq: frame 5 of task {legacy_task} skipped: ")
    assert errors[2].endswith("f_0005.png is a folder; refusing to write over it")
    assert errors[3] == f"renderq: 3 of the 5 rendered frame(s) of task {legacy_task} skipped"
    assert f"2 frame(s) of task {legacy_task} are in {dest}" in result.stdout
    assert sorted(os.listdir(dest)) == ["f_0001.png", "f_0003.png", "f_0005.png"]
    assert (dest / "f_0001.png").read_bytes() == frame_bytes(1)
    assert (dest / "f_0003.png").read_bytes() == frame_bytes(3)
    assert os.listdir(dest / "f_0005.png") == []


def test_download_of_a_task_with_clean_names_exits_0(farm, blobs, tmp_path):
    task_id = new_task(farm, blobs, 2)
    worker = Worker(farm, "w-clean")
    worker.render(task_id, "\u00e9t\u00e9_0001.png")
    worker.render(task_id, "\u00e9t\u00e9_0002.png")
    result = renderq("download", str(task_id), str(tmp_path / "out"), *farm.cli_flags(), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["\u00e9t\u00e9_0001.png", "\u00e9t\u00e9_0002.png"]


# -- packing --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(find_blender_or_none() is None, reason="Blender is not installed (scripts/test.sh installs it)")
def test_packing_refuses_a_tree_the_coordinator_would_refuse(tmp_path):
    from project import make_project
    from renderq.packing import PackError, pack_project

    # An asset outside the project goes into the tree under its absolute path, here with a ':' in a folder name.
    paths = make_project(str(tmp_path / "shot:01"), find_blender_or_none())
    with pytest.raises(PackError, match=r"the project cannot be rendered on every worker \(the path "
                                        r"'_outside_project/.*/shot:01/.*' holds ':'.*\); rename that file or folder"):
        pack_project(paths["main"], str(tmp_path / "staging"), project_root=paths["project"])
