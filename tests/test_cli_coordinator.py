"""The `renderq` client commands against a real coordinator process over HTTP.

One coordinator serves the module; each test makes the tasks it needs through the API (as an artist submits and a
worker renders, frames claimed and finished over HTTP), so no test depends on another's. Only the packer is stood in
for (packing has tests of its own with Blender): it hands the command line a tree of three real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
import zipfile
from collections.abc import Iterator

import pytest
from harness import Api, Farm, find_blender_or_none, wait_for

from renderq import cli, packing
from renderq.http_client import CoordinatorClient
from renderq.packing import PackedFile, PackResult
from renderq.units import format_bytes

# Starts like a .blend, which is all the coordinator checks of a main file whose Blender version is given.
BLEND = b"BLENDER-v304REND" + b"\0" * 512
PNG = b"\x89PNG\r\n\x1a\n a rendered frame"


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> Iterator[Farm]:
    """The module's coordinator; a frame that fails once fails for good, so a failed frame takes one report."""
    farm = Farm(str(tmp_path_factory.mktemp("cli")))
    farm.start_coordinator("--frame-fail-workers", "1")
    yield farm
    farm.stop()


@pytest.fixture
def artist(farm: Farm, monkeypatch) -> list[str]:
    """The flags that reach the coordinator with the artist token (none from the environment)."""
    monkeypatch.delenv("RENDERQ_TOKEN", raising=False)
    return farm.cli_flags("artist")


@pytest.fixture
def admin(farm: Farm, monkeypatch) -> list[str]:
    monkeypatch.delenv("RENDERQ_TOKEN", raising=False)
    return farm.cli_flags("admin")


@pytest.fixture
def blend_file(tmp_path):
    path = tmp_path / "shot_010.blend"
    path.write_bytes(b"BLENDER-v304" + b"\0" * 64)
    return path


def submit_blend(farm: Farm, name: str, frames: int = 2, **fields) -> int:
    """A task of one .blend, submitted over the API; its bytes are the task's own, so no other test shares them."""
    status, blend = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND + name.encode())
    assert status == 200, blend
    return farm.api.post("/submit_task", {"name": name, "blend_sha256": blend["sha256"],
                                          "blend_filename": "shot.blend", "frame_start": 1, "frame_end": frames,
                                          **fields})["task_id"]


def register_worker(farm: Farm, name: str, blender_version: str = "3.4.1") -> tuple[Api, int]:
    worker = Api(farm.url, farm.token("worker"))
    answer = worker.post("/register_worker", {"name": name, "host": "h", "blender_version": blender_version,
                                              "cpu_count": 2})
    return worker, answer["worker_id"]


def render_as_a_worker(farm: Farm, task_id: int) -> None:
    """Frame 1 rendered (PNG, 4.25 s) and frame 2 failed for good, claimed and reported over HTTP."""
    worker, worker_id = register_worker(farm, f"node-{task_id}")

    def claim() -> dict:
        frame = worker.post("/frames/claim", {"worker_id": worker_id, "prefer_task_id": task_id})["frame"]
        assert frame["task_id"] == task_id, frame
        return frame

    first = claim()
    status, answer = worker.call(
        "POST", f"/frames/finish?worker_id={worker_id}&task_id={task_id}&frame={first['frame']}"
        f"&lease_id={first['lease_id']}&filename=f_{first['frame']:04d}.png&render_seconds=4.25",
        raw=PNG, content_type="application/octet-stream")
    assert status == 200, answer
    second = claim()
    worker.post("/update_task", {"worker_id": worker_id, "task_id": task_id, "frame": second["frame"],
                                 "lease_id": second["lease_id"], "status": "failed", "error": "Blender crashed"})


def finished_task(farm: Farm, name: str) -> int:
    """A task whose frame 1 rendered and frame 2 failed for good."""
    task_id = submit_blend(farm, name)
    render_as_a_worker(farm, task_id)
    return task_id


def task_ids(farm: Farm) -> set[int]:
    return {task["task_id"] for task in farm.api.get("/tasks")["tasks"]}


def submitted(farm: Farm, out: str) -> dict:
    """The task the command's output names, as the coordinator stored it, with its manifest."""
    task_id = int(re.search(r"submitted task (\d+)", out).group(1))
    task = farm.api.task(task_id)
    task["manifest"] = farm.api.get(f"/task_manifest?task_id={task_id}")["files"]
    return task


def stored(farm: Farm, hashes: list[str]) -> set[str]:
    """Which of these files the coordinator stores."""
    return set(hashes) - set(farm.api.post("/missing_files", {"sha256": hashes})["missing"])


class StandInPack:
    """Replaces renderq.packing.pack_project: a tree of three real files, main.blend "rewritten" into staging.

    Each test's files carry a mark of its own, so what one test uploads is never already there for another.
    """

    def __init__(self, tmp_path) -> None:
        mark = uuid.uuid4().hex[:8].encode()
        self.project = tmp_path / "project"
        (self.project / "textures").mkdir(parents=True)
        (self.project / "textures" / "wood.png").write_bytes(b"wood texture" * 100 + mark)
        (self.project / "lib").mkdir()
        (self.project / "lib" / "prop.blend").write_bytes(b"BLENDER-v304 prop library " + mark)
        self.main = b"BLENDER-v304 rewritten main " + mark
        self.missing: list[str] = []
        self.staging_dirs: list[str] = []
        self.sha_override: dict[str, str] = {}

    def __call__(self, blend_path: str, staging_dir: str, *, project_root=None, progress=None) -> PackResult:
        self.staging_dirs.append(staging_dir)
        staged = os.path.join(staging_dir, "main.blend")
        with open(staged, "wb") as out:
            out.write(self.main)
        sources = {"main.blend": staged, "textures/wood.png": str(self.project / "textures" / "wood.png"),
                   "lib/prop.blend": str(self.project / "lib" / "prop.blend")}
        files = []
        for tree_path, source in sorted(sources.items()):
            data = open(source, "rb").read()
            sha256 = self.sha_override.get(tree_path, hashlib.sha256(data).hexdigest())
            files.append(PackedFile(tree_path, sha256, len(data), source))
        return PackResult(main_file="main.blend", files=files, missing=list(self.missing), blender_version="3.4",
                          staging_dir=staging_dir, rewritten=["main.blend"], project_root=str(self.project))

    def hashes(self) -> list[str]:
        return [hashlib.sha256(data).hexdigest() for data in (
            self.main, (self.project / "textures" / "wood.png").read_bytes(),
            (self.project / "lib" / "prop.blend").read_bytes())]


@pytest.fixture
def stand_in_pack(tmp_path, monkeypatch) -> StandInPack:
    pack = StandInPack(tmp_path)
    monkeypatch.setattr(packing, "pack_project", pack)
    return pack


# -- submit ----------------------------------------------------------------------------------------------------------

def test_submit_sends_the_task(farm: Farm, artist, stand_in_pack: StandInPack, blend_file, capsys) -> None:
    code = cli.main(["submit", str(blend_file), *artist, "--frames", "1-250", "--step", "2",
                     "--worker", "node-01", "--priority", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Blender 3.4 or newer" in out
    task = submitted(farm, out)
    assert task["name"] == "shot_010" and task["main_file"] == "main.blend"
    assert [entry["path"] for entry in task["manifest"]] == ["lib/prop.blend", "main.blend", "textures/wood.png"]
    assert task["blender_version"] == "3.4" and task["blender_version_exact"] is False
    assert task["missing_assets"] == []
    assert (task["frame_start"], task["frame_end"], task["frame_step"]) == (1, 250, 2)
    assert task["workers"] == ["node-01"] and task["priority"] == 3
    # The coordinator refuses a task whose files are not all stored, so these were uploaded before the submit.
    assert stored(farm, stand_in_pack.hashes()) == set(stand_in_pack.hashes())
    # The staging folder (the rewritten main.blend) is gone afterwards.
    assert stand_in_pack.staging_dirs and not os.path.exists(stand_in_pack.staging_dirs[0])
    # Not given: the coordinator's defaults.
    assert task["frame_timeout"] is None and task["needs_python"] is False


def test_submit_sends_timeouts_and_needs_python(farm: Farm, artist, stand_in_pack: StandInPack, blend_file,
                                                capsys) -> None:
    code = cli.main(["submit", str(blend_file), *artist, "--frames", "1-3", "--frame-timeout", "90",
                     "--no-progress-timeout", "30", "--needs-python"])
    assert code == 0
    task = submitted(farm, capsys.readouterr().out)
    assert (task["frame_timeout"], task["no_progress_timeout"], task["needs_python"]) == (90, 30, True)
    assert cli.main(["submit", str(blend_file), *artist, "--frames", "1-3", "--frame-timeout", "0"]) == 2
    assert "between 1 second and 7 days" in capsys.readouterr().err


def test_submit_uploads_only_what_the_coordinator_lacks(
    farm: Farm, artist, stand_in_pack: StandInPack, blend_file, capsys
) -> None:
    wood = (stand_in_pack.project / "textures" / "wood.png").read_bytes()
    status, _ = farm.api.call("POST", f"/upload_file?sha256={hashlib.sha256(wood).hexdigest()}", raw=wood)
    assert status == 200
    assert cli.main(["submit", str(blend_file), *artist, "--frames", "1"]) == 0
    out = capsys.readouterr().out
    assert "uploaded 2 of 3 files (" in out and "1 already on the coordinator" in out
    assert "shot_010.blend: 3 file(s), 1.2 KiB, 1 .blend rewritten, saved by Blender 3.4" in out

    assert cli.main(["submit", str(blend_file), *artist, "--frames", "1"]) == 0
    assert "uploaded 0 of 3 files (0 B); 3 already on the coordinator" in capsys.readouterr().out


def test_missing_assets_stop_the_submission(
    farm: Farm, artist, stand_in_pack: StandInPack, blend_file, capsys
) -> None:
    stand_in_pack.missing = ["textures/gone.png", "/mnt/library/hdri.exr"]
    before = task_ids(farm)
    assert cli.main(["submit", str(blend_file), *artist, "--frames", "1"]) == 2
    err = capsys.readouterr().err
    assert "missing assets (2), referenced but not on disk:\n  textures/gone.png\n  /mnt/library/hdri.exr\n" in err
    assert err.strip().splitlines()[-1] == (
        "renderq: 2 asset(s) are missing (listed above); relink them in Blender, or submit anyway with --allow-missing"
    )
    assert task_ids(farm) == before and not stored(farm, stand_in_pack.hashes())
    assert not os.path.exists(stand_in_pack.staging_dirs[0])


def test_allow_missing_submits_and_records_them(
    farm: Farm, artist, stand_in_pack: StandInPack, blend_file, capsys
) -> None:
    stand_in_pack.missing = ["textures/gone.png"]
    assert cli.main(["submit", str(blend_file), *artist, "--frames", "1", "--allow-missing"]) == 0
    captured = capsys.readouterr()
    assert "textures/gone.png" in captured.err
    assert submitted(farm, captured.out)["missing_assets"] == ["textures/gone.png"]


def test_blender_version_flag_asks_for_an_exact_match(
    farm: Farm, artist, stand_in_pack: StandInPack, blend_file, capsys
) -> None:
    assert cli.main(["submit", str(blend_file), *artist, "--frames", "1", "--blender-version", "4.02"]) == 0
    out = capsys.readouterr().out
    assert "Blender 4.2 exactly" in out
    task = submitted(farm, out)
    assert task["blender_version"] == "4.2" and task["blender_version_exact"] is True


def test_upload_refused_names_the_file(farm: Farm, artist, stand_in_pack: StandInPack, blend_file, capsys) -> None:
    stand_in_pack.sha_override["textures/wood.png"] = "0" * 64  # as if the file changed after it was hashed
    before = task_ids(farm)
    assert cli.main(["submit", str(blend_file), *artist, "--frames", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("renderq: could not upload textures/wood.png: ")
    assert "did it change while it was being uploaded?" in err
    assert task_ids(farm) == before


def test_a_file_that_is_not_a_blend_is_bad_input(farm: Farm, artist, tmp_path, capsys) -> None:
    path = tmp_path / "notes.blend"
    path.write_text("not a blend")
    before = task_ids(farm)
    assert cli.main(["submit", str(path), *artist, "--frames", "1"]) == 2
    assert "is not a .blend file" in capsys.readouterr().err
    assert task_ids(farm) == before


def test_submit_wait_downloads_and_reports_failed_frames(
    farm: Farm, artist, stand_in_pack: StandInPack, blend_file, tmp_path, capsys
) -> None:
    # A worker over HTTP renders the task once it is there, while the command waits for it.
    name = f"waited-{uuid.uuid4().hex[:8]}"
    errors: list[Exception] = []

    def worker() -> None:
        try:
            found = wait_for(lambda: [t["task_id"] for t in farm.api.get("/tasks")["tasks"] if t["name"] == name],
                             30, "the submitted task")
            render_as_a_worker(farm, found[0])
        except (AssertionError, OSError) as error:  # reported by the test below, not lost in the thread
            errors.append(error)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    out_dir = tmp_path / "frames"
    code = cli.main(["submit", str(blend_file), *artist, "--frames", "1-2", "--name", name, "--wait",
                     "--output", str(out_dir)])
    thread.join(30)
    assert not errors, errors
    assert code == 1
    captured = capsys.readouterr()
    assert (out_dir / "f_0001.png").read_bytes() == PNG
    assert f"are in {out_dir}" in captured.out
    assert "failed frames: 2" in captured.err


# -- download, status, logs ------------------------------------------------------------------------------------------

def test_download_skips_frames_already_present(farm: Farm, artist, tmp_path, capsys) -> None:
    task_id = finished_task(farm, "download-twice")
    assert cli.main(["download", str(task_id), str(tmp_path), *artist]) == 0
    first = (tmp_path / "f_0001.png").stat()
    assert cli.main(["download", str(task_id), str(tmp_path), *artist]) == 0
    assert "1 already there" in capsys.readouterr().out
    again = (tmp_path / "f_0001.png").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not fetched again


def test_download_replaces_a_local_file_that_differs(farm: Farm, artist, tmp_path, capsys) -> None:
    task_id = finished_task(farm, "download-replace")
    (tmp_path / "f_0001.png").write_bytes(b"an older render")
    assert cli.main(["download", str(task_id), str(tmp_path), *artist]) == 0
    assert (tmp_path / "f_0001.png").read_bytes() == PNG
    assert "already there" not in capsys.readouterr().out


def test_download_zip(farm: Farm, artist, tmp_path, capsys) -> None:
    task_id = finished_task(farm, "download-zip")
    dest = tmp_path / "out"
    assert cli.main(["download", str(task_id), str(dest), "--zip", *artist]) == 0
    archive = dest / f"renderq-{task_id}.zip"
    with zipfile.ZipFile(archive) as opened:
        assert opened.namelist() == ["f_0001.png"] and opened.read("f_0001.png") == PNG
    assert os.listdir(dest) == [archive.name]
    assert f"are in {archive}" in capsys.readouterr().out


def test_download_zip_of_a_task_without_frames(farm: Farm, artist, tmp_path, capsys) -> None:
    task_id = submit_blend(farm, "nothing-rendered")
    dest = tmp_path / "out"
    assert cli.main(["download", str(task_id), str(dest), "--zip", *artist]) == 1
    assert capsys.readouterr().err == f"renderq: task {task_id} has no rendered frames to download\n"
    assert not dest.exists()


def test_status_shows_why_a_task_waits(farm: Farm, artist, capsys) -> None:
    register_worker(farm, "old-blender", blender_version="3.4.1")  # alive, but too old for the task
    files = {"shots/main.blend": BLEND + b"waits", "textures/a.png": b"a" * 700, "textures/b.png": b"b" * 300,
             "textures/c.png": b"c" * 200, "lib/d.blend": b"BLENDER-v304" + b"d" * 200}
    manifest = []
    for path, data in files.items():
        sha256 = hashlib.sha256(data).hexdigest()
        assert farm.api.call("POST", f"/upload_file?sha256={sha256}", raw=data)[0] == 200
        manifest.append({"path": path, "sha256": sha256, "size": len(data)})
    size = sum(len(data) for data in files.values())
    task_id = farm.api.post("/submit_task", {
        "name": "waits", "manifest": manifest, "main_file": "shots/main.blend", "frame_start": 1, "frame_end": 2,
        "blender_version": "9.2", "missing_assets": ["textures/gone.png"]})["task_id"]
    assert cli.main(["status", str(task_id), *artist]) == 0
    detail = capsys.readouterr().out
    assert "  waiting: no worker with Blender >= 9.2\n" in detail
    assert f"shots/main.blend (5 file(s), {format_bytes(size)})" in detail
    assert "9.2 or newer" in detail and "textures/gone.png" in detail
    assert cli.main(["status", *artist]) == 0
    assert f"task {task_id}: waiting: no worker with Blender >= 9.2" in capsys.readouterr().out


def test_status_table_and_detail(farm: Farm, artist, capsys) -> None:
    task_id = finished_task(farm, "shown")
    assert cli.main(["status", *artist]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "shown" in line)
    assert "1/2" in row and "50%" in row
    assert cli.main(["status", str(task_id), *artist]) == 0
    detail = capsys.readouterr().out
    assert "Blender crashed" in detail and "4.25" in detail
    assert cli.main(["status", str(task_id), "--json", *artist]) == 0
    assert json.loads(capsys.readouterr().out)["task_id"] == task_id


def test_refusal_is_one_sentence_exit_1(farm: Farm, artist, capsys) -> None:
    assert cli.main(["status", "987654", *artist]) == 1
    err = capsys.readouterr().err
    assert err.startswith("renderq: ") and "987654" in err and err.count("\n") == 1


def test_logs_prints_the_log(farm: Farm, artist, capsys) -> None:
    task_id = finished_task(farm, "logged")
    worker = Api(farm.url, farm.token("worker"))
    worker.post("/append_log", {"task_id": task_id, "text": "line one\nline two\n"})
    assert cli.main(["logs", str(task_id), *artist]) == 0
    assert capsys.readouterr().out == "line one\nline two\n"
    assert cli.main(["logs", str(task_id), "--follow", *artist]) == 0  # the task has ended: no waiting
    assert capsys.readouterr().out == "line one\nline two\n"


def test_client_asks_for_missing_files_in_batches(farm: Farm) -> None:
    # More hashes than one request may carry (the API's maxItems and the body limit): only batches get through.
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(150_000)]
    data = b"one stored file"
    hashes[3] = hashlib.sha256(data).hexdigest()
    assert farm.api.call("POST", f"/upload_file?sha256={hashes[3]}", raw=data)[0] == 200
    missing = CoordinatorClient(farm.url, token=farm.token("artist")).missing_files(hashes + hashes[:10])
    assert len(missing) == 149_999 and hashes[3] not in missing


# -- the farm's admin commands and their token -----------------------------------------------------------------------

def test_disk_and_delete_files(farm: Farm, admin, capsys) -> None:
    ended = finished_task(farm, "disk-ended")
    running = submit_blend(farm, "disk-running")
    assert cli.main(["disk", *admin]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\d+\.\d \w+ free of \d+\.\d \w+", out), out
    assert "disk-ended" in out and "disk-running" in out
    assert cli.main(["delete-files", str(ended), *admin]) == 0
    assert re.fullmatch(rf"task {ended}: deleted \d+ file\(s\), freed .+\n", capsys.readouterr().out)
    assert farm.api.task(ended)["files_deleted"] is True
    assert cli.main(["delete-files", str(running), *admin]) == 1
    assert capsys.readouterr().err == (f"renderq: task {running} is still queued; cancel it before deleting its "
                                       "files\n")


def test_worker_disable(farm: Farm, admin, capsys) -> None:
    register_worker(farm, "node-01")
    assert cli.main(["worker-disable", "node-01", *admin]) == 0
    assert "worker node-01 is OFF" in capsys.readouterr().out
    assert farm.api.workers()["node-01"]["enabled"] is False


def test_task_controls_send_the_token(farm: Farm, admin, capsys) -> None:
    # Each control needs the admin token: the coordinator refuses it without one (next test).
    task_id = finished_task(farm, "controlled")
    assert cli.main(["retry", str(task_id), *admin]) == 0
    assert "1 frame(s) queued" in capsys.readouterr().out
    assert cli.main(["priority", str(task_id), "-5", *admin]) == 0
    assert "now has priority -5" in capsys.readouterr().out
    assert farm.api.task(task_id)["priority"] == -5
    assert cli.main(["pause", str(task_id), *admin]) == 0
    assert "is paused" in capsys.readouterr().out
    assert cli.main(["resume", str(task_id), *admin]) == 0
    assert "again" in capsys.readouterr().out
    assert cli.main(["cancel", str(task_id), *admin]) == 0
    assert farm.api.task(task_id)["status"] == "canceled"


def test_token_from_the_environment(farm: Farm, capsys, monkeypatch) -> None:
    register_worker(farm, "node-env")
    monkeypatch.setenv("RENDERQ_TOKEN", farm.token("admin"))
    assert cli.main(["worker-disable", "node-env", "--coordinator", farm.url]) == 0
    assert farm.api.workers()["node-env"]["enabled"] is False


def test_refused_token_is_one_clear_sentence(farm: Farm, capsys, monkeypatch) -> None:
    task_id = submit_blend(farm, "refused")
    monkeypatch.delenv("RENDERQ_TOKEN", raising=False)
    assert cli.main(["pause", str(task_id), "--coordinator", farm.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("renderq: ") and err.endswith("; pass the token with --token TOKEN or set RENDERQ_TOKEN\n")
    assert err.count("\n") == 1
    assert cli.main(["cancel", str(task_id), "--coordinator", farm.url, "--token", "wrong"]) == 1
    assert "--token TOKEN" in capsys.readouterr().err
    assert farm.api.task(task_id)["status"] == "queued"


# -- a real project through the command line ------------------------------------------------------------------------

BLENDER = find_blender_or_none()


@pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
def test_submit_a_real_project_uploads_its_tree_once(farm: Farm, artist, tmp_path, capsys) -> None:
    from project import make_project

    paths = make_project(str(tmp_path / "work"), BLENDER)
    # shared_assets/outside.png is outside the project folder: the artist allows it.
    assert cli.main(["submit", paths["main"], *artist, "--allow-outside"]) == 0
    out = capsys.readouterr().out
    task = submitted(farm, out)
    assert (task["frame_start"], task["frame_end"]) == (1, 3)  # the scene's range, read with Blender
    assert task["main_file"] == "main.blend" and len(task["manifest"]) == 5
    assert task["blender_version"] == "3.4"
    total = sum(entry["size"] for entry in task["manifest"])
    assert f"uploaded 5 of 5 files ({format_bytes(total)})" in out

    assert cli.main(["submit", paths["main"], *artist, "--frames", "1", "--allow-outside"]) == 0
    assert "uploaded 0 of 5 files (0 B); 5 already on the coordinator" in capsys.readouterr().out
