"""Submitting an untrusted .blend must not upload the artist's private files.

The attack: a .blend (made by the real Blender, tests/blender_scripts/make_exposed_project.py) whose image
datablocks name HOME/.ssh/id_rsa and a plain file outside the project folder, in a project folder holding a symbolic
link that leads out of it. The real `renderq submit` runs against a real coordinator process with that HOME. Without
--allow-outside it names every one of them and uploads nothing; with it, the plain file and the link's target go,
and the key never does: a hidden file stops the whole submit.

The survey itself is also run on real folders and links made here, for the cases of the hidden-name rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from addon_ui_scripts.addon_testing import bpy_python_or_none
from harness import ROOT, Farm, find_blender_or_none
from renderq import exposure

BLENDER = find_blender_or_none()
BPY_PYTHON = bpy_python_or_none()
needs_blender = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")
needs_links = pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32",
                                 reason="symbolic links need privileges on Windows")

MAKE_SCRIPT = os.path.join(ROOT, "tests", "blender_scripts", "make_exposed_project.py")
FAST = ("--heartbeat", "1", "--alive-timeout", "4")


def make_exposed_project(tmp_path: pathlib.Path, home_name: str = "home") -> dict[str, str]:
    """Build the attack project with Blender, the key in tmp_path/home_name; return its paths (see
    make_exposed_project.py for the layout)."""
    root, home = tmp_path / "work", tmp_path / home_name
    completed = subprocess.run(
        [BLENDER, "-b", "--factory-startup", "-Y", "--python-exit-code", "1", "--python", MAKE_SCRIPT, "--",
         "--root", str(root), "--home", str(home)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    project = root / "project"
    return {
        "home": str(home), "project": str(project), "attack": str(project / "attack.blend"),
        "clean": str(project / "clean.blend"), "key": str(home / ".ssh" / "id_rsa"),
        "plain": str(root / "elsewhere" / "plain.png"), "target": str(root / "private" / "target.png"),
        "wood": str(project / "textures" / "wood.png"),
    }


def submit(farm: Farm, paths: dict[str, str], blend: str, *extra: str) -> subprocess.CompletedProcess:
    """The real `renderq submit`, run as the user whose home folder is the test's."""
    env = {**os.environ, "PYTHONPATH": ROOT, "HOME": paths["home"]}
    return subprocess.run(
        [sys.executable, "-m", "renderq", "submit", paths[blend], "--frames", "1", *extra, *farm.cli_flags()],
        capture_output=True, text=True, timeout=300, cwd=paths["project"], env=env, check=False,
    )


def stored_blobs(farm: Farm) -> list[str]:
    """The files in the coordinator's content store."""
    found = []
    for folder, _dirs, names in os.walk(os.path.join(farm.data_dir, "files")):
        if os.path.basename(folder) != "incoming":
            found += names
    return sorted(found)


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def on_coordinator(farm: Farm, *paths: str) -> list[bool]:
    """Whether the coordinator holds each file's content, asked over HTTP."""
    hashes = [sha256_of(path) for path in paths]
    missing = set(farm.api.post("/missing_files", {"sha256": hashes})["missing"])
    return [sha256 not in missing for sha256 in hashes]


@needs_blender
@needs_links
def test_submit_names_every_file_from_outside_and_uploads_nothing(tmp_path, farm: Farm):
    paths = make_exposed_project(tmp_path)
    farm.start_coordinator(*FAST)
    before = stored_blobs(farm)

    refused = submit(farm, paths, "attack")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    sentence = refused.stderr.strip().splitlines()[-1]
    assert sentence.startswith("renderq: nothing was uploaded: ")
    assert f"{paths['key']} (in the hidden folder .ssh)" in sentence
    assert "RenderQ never uploads those" in sentence
    assert paths["plain"] in sentence
    assert f"textures/linked.png -> {paths['target']}" in sentence
    assert "--allow-outside" in sentence
    assert "wood.png" not in sentence  # inside the project folder: nothing to ask
    assert "Traceback" not in refused.stderr
    assert stored_blobs(farm) == before
    assert on_coordinator(farm, paths["key"], paths["plain"], paths["target"]) == [False, False, False]
    assert farm.api.get("/tasks")["tasks"] == []

    # Allowing files from outside the project folder does not allow the hidden key: still nothing goes up.
    allowed = submit(farm, paths, "attack", "--allow-outside")
    assert allowed.returncode == 2, allowed.stdout + allowed.stderr
    sentence = allowed.stderr.strip().splitlines()[-1]
    assert f"{paths['key']} (in the hidden folder .ssh)" in sentence
    assert paths["plain"] not in sentence and "--allow-outside" not in sentence
    assert stored_blobs(farm) == before
    assert farm.api.get("/tasks")["tasks"] == []


@needs_blender
@needs_links
def test_allow_outside_uploads_the_outside_file_and_the_link_target(tmp_path, farm: Farm):
    paths = make_exposed_project(tmp_path)
    farm.start_coordinator(*FAST)

    refused = submit(farm, paths, "clean")
    assert refused.returncode == 2 and "--allow-outside" in refused.stderr, refused.stdout + refused.stderr
    assert stored_blobs(farm) == []

    allowed = submit(farm, paths, "clean", "--allow-outside")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    # The pre-flight still lists what came from outside.
    assert paths["plain"] in allowed.stderr and f"textures/linked.png -> {paths['target']}" in allowed.stderr
    task_id = int(allowed.stdout.split("submitted task ")[1].split()[0])
    manifest = {entry["path"]: entry["sha256"] for entry in farm.api.get(f"/task_manifest?task_id={task_id}")["files"]}
    assert manifest["textures/linked.png"] == sha256_of(paths["target"])
    assert sha256_of(paths["plain"]) in manifest.values()
    assert on_coordinator(farm, paths["plain"], paths["target"], paths["key"]) == [True, True, False]


@needs_blender
@needs_links
def test_the_addon_lists_them_and_asks_for_the_checkbox(tmp_path, farm: Farm):
    from addon_ui_scripts.addon_testing import build_addon_zip
    from test_addon_blender34 import run_addon

    # run_addon gives Blender the home folder home-<case>: the key is put there.
    paths = make_exposed_project(tmp_path, home_name="home-outside")
    farm.start_coordinator(*FAST)
    addon_zip = build_addon_zip(str(tmp_path / "addon"))
    result = run_addon(tmp_path, addon_zip, farm.url, "outside", paths["attack"], "--clean", paths["clean"],
                       token=farm.token("artist"))

    # The Submit panel shows the checkbox and the list.
    assert "allow_outside" in result["drawn"]["props"]
    assert "Outside the project folder, or hidden (3):" in result["drawn"]["labels"]
    assert paths["plain"] in result["drawn"]["labels"]
    check_addon_submits(result, paths, farm)


@needs_blender
@needs_links
@pytest.mark.skipif(BPY_PYTHON is None, reason="no Python with the bpy 5 module (scripts/test.sh makes .venv-bpy; "
                                              "or set RENDERQ_BPY_PYTHON)")
def test_the_addon_in_blender5_refuses_them_too(tmp_path, farm: Farm):
    from addon_ui_scripts.addon_testing import blender_env, build_addon_zip, run_blender_side, script

    paths = make_exposed_project(tmp_path)
    farm.start_coordinator(*FAST)
    addon_zip = build_addon_zip(str(tmp_path / "addon"))
    result, output = run_blender_side(
        [BPY_PYTHON, script("bpy5_outside.py"), "--", "--zip", addon_zip, "--url", farm.url,
         "--token", farm.token("artist"), "--attack", paths["attack"], "--clean", paths["clean"]],
        blender_env(paths["home"]), "submitting the attack project from the bpy 5 module", timeout=300,
        log_path=str(tmp_path / "bpy5.log"),
    )
    assert result["blender"].startswith("5."), result
    assert "Traceback" not in output, output[-3000:]
    assert result["box_after_open"] is False
    check_addon_submits(result, paths, farm)


def check_addon_submits(result: dict, paths: dict[str, str], farm: Farm) -> None:
    """What the add-on said and did for the four submits of the attack project (see the add-on scripts)."""
    refused = result["refused"]
    assert refused["task_id"] is None
    assert refused["error"].startswith("Nothing was submitted: 1 file(s) are hidden"), refused["error"]
    for named in (f"{paths['key']} (in the hidden folder .ssh)", paths["plain"],
                  f"textures/linked.png -> {paths['target']}", "tick Allow Files Outside the Project Folder"):
        assert named in refused["error"], (named, refused["error"])
    assert refused["listed"] == [f"{paths['key']} (in the hidden folder .ssh)", paths["plain"],
                                 f"textures/linked.png -> {paths['target']}"]

    # Ticked, the hidden key still stops it.
    hidden = result["refused_hidden"]
    assert hidden["task_id"] is None and paths["key"] in hidden["error"], hidden
    assert "Allow Files Outside" not in hidden["error"] and paths["plain"] not in hidden["error"]

    # Without the key: refused until the box is ticked, then the outside file and the link's target go.
    assert result["clean_refused"]["task_id"] is None
    assert "tick Allow Files Outside the Project Folder" in result["clean_refused"]["error"]
    allowed = result["allowed"]
    assert isinstance(allowed["task_id"], int) and allowed["error"] is None, allowed
    manifest = farm.api.get(f"/task_manifest?task_id={allowed['task_id']}")["files"]
    assert {entry["path"]: entry["sha256"] for entry in manifest}["textures/linked.png"] == sha256_of(paths["target"])
    assert on_coordinator(farm, paths["plain"], paths["target"], paths["key"]) == [True, True, False]
    # The only task on the farm: none of the refused submits made one.
    assert [task["task_id"] for task in farm.api.get("/tasks")["tasks"]] == [allowed["task_id"]]


@needs_blender
def test_outside_is_judged_against_the_folder_asked_for_not_the_wider_one(tmp_path):
    """A library outside the project folder makes packing use a wider root (see test_packing.py); the files that
    leave the project folder are still the ones listed."""
    from project import make_project
    from renderq.packing import pack_project

    paths = make_project(str(tmp_path / "work"), BLENDER, library_outside=True)
    result = pack_project(paths["main"], str(tmp_path / "staging"))
    assert result.project_root == paths["root"] and result.project_folder == paths["project"]
    assert result.exposure.outside == sorted([paths["library"], paths["outside"]])
    assert result.exposure.links == [] and result.exposure.hidden == []


# -- the survey on real folders and links ------------------------------------------------------------------------------


def touch(path: pathlib.Path, data: bytes = b"x") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@needs_links
def test_hidden_names_are_judged_below_the_project_or_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    # A project kept in a hidden folder works: only the part below the project folder is judged.
    project = home / ".studio" / "shot"
    inside = touch(project / "textures" / "wood.png")
    env_file = touch(project / ".env")
    git_file = touch(project / ".git" / "config")
    aws = touch(home / ".aws" / "credentials")
    shared = touch(tmp_path / "shared" / "sky.png")
    elsewhere_hidden = touch(tmp_path / "mnt" / ".cache" / "x.png")
    key = touch(home / ".ssh" / "id_rsa")
    (project / "textures" / "key.png").symlink_to(key)
    (project / "textures" / "alias.png").symlink_to(inside)  # a link that stays inside: harmless
    (project / "sky").symlink_to(tmp_path / "shared", target_is_directory=True)

    found = exposure.survey(
        [inside, env_file, git_file, aws, shared, elsewhere_hidden, project / "textures" / "key.png",
         project / "textures" / "alias.png", project / "sky" / "sky.png"],
        project,
    )
    assert found.hidden == sorted([
        ".env (a hidden file)",
        ".git/config (in the hidden folder .git)",
        f"{aws} (in the hidden folder .aws)",
        f"{elsewhere_hidden} (in the hidden folder .cache)",
        f"textures/key.png, a link to {key} (in the hidden folder .ssh)",
    ])
    assert found.outside == [str(shared)]
    assert found.links == [f"sky -> {tmp_path / 'shared'}"]
    sentence = exposure.refusal(found, str(project), allow_outside=True, remedy="allow it")
    assert sentence.startswith("5 file(s) are hidden") and "allow it" not in sentence
    assert exposure.refusal(exposure.survey([inside, project / "textures" / "alias.png"], project), str(project),
                            allow_outside=False, remedy="allow it") is None


def test_a_long_list_is_cut_with_a_count(tmp_path):
    files = [touch(tmp_path / "outside" / f"f{n:02d}.png") for n in range(exposure.MAX_LISTED + 5)]
    (tmp_path / "project").mkdir()
    found = exposure.survey(files, tmp_path / "project")
    sentence = exposure.refusal(found, str(tmp_path / "project"), allow_outside=False, remedy="say so")
    assert sentence.startswith(f"{exposure.MAX_LISTED + 5} file(s) or link(s) lead outside the project folder")
    assert str(files[exposure.MAX_LISTED - 1]) in sentence and str(files[exposure.MAX_LISTED]) not in sentence
    assert " and 5 more; move the files into the project folder, or say so" in sentence
    json.dumps(found.__dict__)  # plain data, for the add-on and logs
