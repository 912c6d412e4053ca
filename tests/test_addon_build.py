"""build_addon.py: one zip for Blender 3.x (bl_info) and 4.2+ (extension manifest), with the vendored modules."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from harness import ROOT

_spec = importlib.util.spec_from_file_location("build_addon", os.path.join(ROOT, "build_addon.py"))
build_addon = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_addon)

PACKAGE = "renderq_addon"


def pyproject_version() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)["project"]["version"]


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> str:
    return str(build_addon.build(tmp_path_factory.mktemp("dist")))


@pytest.fixture(scope="module")
def names(built_zip) -> list[str]:
    with zipfile.ZipFile(built_zip) as archive:
        return archive.namelist()


def read(built_zip: str, name: str) -> bytes:
    with zipfile.ZipFile(built_zip) as archive:
        return archive.read(name)


def valid_manifest() -> dict:
    with open(os.path.join(ROOT, "addon", PACKAGE, "blender_manifest.toml"), "rb") as handle:
        return tomllib.load(handle)


def test_the_zip_is_named_after_the_version_and_has_one_top_level_folder(built_zip, names):
    assert os.path.basename(built_zip) == f"{PACKAGE}-{pyproject_version()}.zip"
    assert {name.split("/", 1)[0] for name in names} == {PACKAGE}
    assert f"{PACKAGE}/__init__.py" in names and f"{PACKAGE}/blender_manifest.toml" in names


def test_bl_info_and_manifest_carry_the_project_version(built_zip):
    version = pyproject_version()
    tree = ast.parse(read(built_zip, f"{PACKAGE}/__init__.py"))
    bl_info = next(
        ast.literal_eval(node.value) for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "bl_info"
    )
    assert bl_info["version"] == tuple(int(part) for part in version.split("."))
    assert bl_info["blender"] <= (3, 4, 0)
    manifest = tomllib.loads(read(built_zip, f"{PACKAGE}/blender_manifest.toml").decode("utf-8"))
    assert build_addon.validate_manifest(manifest, version) == []
    assert manifest["version"] == version
    assert manifest["id"] == PACKAGE and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(manifest["permissions"]) == {"network", "files"}


def test_the_shared_modules_and_bat_are_vendored_without_what_blender_lacks(built_zip, names):
    vendor = f"{PACKAGE}/vendor"
    for module in ("__init__.py", "http_client.py", "packing.py", "exposure.py", "blend_header.py", "paths.py",
                   "frame_download.py", "model.py", "units.py", "submit.py"):
        assert f"{vendor}/renderq/{module}" in names
        with open(os.path.join(ROOT, "renderq", module), "rb") as original:
            assert read(built_zip, f"{vendor}/renderq/{module}") == original.read()
    for module in ("__init__.py", "pack/__init__.py", "trace/__init__.py", "blendfile/__init__.py", "bpathlib.py"):
        assert f"{vendor}/blender_asset_tracer/{module}" in names
    assert f"{vendor}/blender_asset_tracer/LICENSE.txt" in names
    assert not any("/shaman/" in name or "/cli/" in name or name.endswith("/s3.py") for name in names)
    assert not any("__pycache__" in name or name.endswith((".pyc", ".pyo")) for name in names)
    assert not any(name.startswith(f"{PACKAGE}/vendor/") and "zstandard" in name for name in names)
    for name in names:
        if name.endswith(".py"):
            imported = build_addon.imported_modules(read(built_zip, name), name)
            assert not {module.split(".")[0] for module in imported} & {"requests", "boto3"}, name


def test_the_vendored_modules_import_with_the_standard_library_alone(built_zip, tmp_path):
    with zipfile.ZipFile(built_zip) as archive:
        archive.extractall(tmp_path)
    vendor = tmp_path / PACKAGE / "vendor"
    # -S: no site-packages at all, like a Blender whose Python has neither requests nor zstandard.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import renderq.packing, renderq.http_client, renderq.frame_download, renderq.model; "
        "assert 'requests' not in sys.modules and 'zstandard' not in sys.modules, sorted(sys.modules); "
        "assert renderq.packing.__file__.startswith(sys.argv[1]); print('ok')"
    )
    completed = subprocess.run([sys.executable, "-S", "-c", code, str(vendor)], capture_output=True, text=True,
                               check=False, cwd=str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_the_zip_is_deterministic(built_zip, tmp_path):
    again = build_addon.build(tmp_path)
    with open(built_zip, "rb") as first, open(again, "rb") as second:
        assert first.read() == second.read()
    with zipfile.ZipFile(again) as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == sorted(info.filename for info in infos)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_the_manifest_in_the_repository_is_valid():
    assert build_addon.validate_manifest(valid_manifest(), pyproject_version()) == []


def test_validation_catches_a_permission_ending_with_punctuation():
    manifest = valid_manifest()
    manifest["permissions"]["network"] = "Upload the file to the farm."
    problems = build_addon.validate_manifest(manifest, pyproject_version())
    assert problems == ["the permission 'network' ends with the punctuation '.'"]


def test_validation_catches_a_missing_key():
    manifest = valid_manifest()
    del manifest["maintainer"]
    assert build_addon.validate_manifest(manifest, pyproject_version()) == ["the required key 'maintainer' is missing"]


def test_validation_catches_a_version_mismatch():
    manifest = valid_manifest()
    manifest["version"] = "9.9.9"
    problems = build_addon.validate_manifest(manifest, pyproject_version())
    assert problems == [f"'version' is '9.9.9' but pyproject.toml says '{pyproject_version()}'"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tagline": "x" * 65}, "'tagline' is 65 characters long, more than 64"),
        ({"tagline": "Render on the farm!"}, "'tagline' ends with the punctuation '!'"),
        ({"type": "theme"}, "'type' must be \"add-on\", not 'theme'"),
        ({"license": "GPL"}, "'license' must be a list, not str"),
        ({"blender_version_min": "4.1.0"}, "'blender_version_min' must be 4.2.0 or later"),
        ({"schema_version": "2.0.0"}, "'schema_version' must be \"1.0.0\""),
        ({"id": "renderq"}, "'id' must be 'renderq_addon'"),
        ({"colour": "blue"}, "'colour' is not a manifest key Blender knows"),
        ({"permissions": {"network": "Talk to the farm", "files": "Read files", "printer": "Print"}},
         "the permission 'printer' is not one of"),
        ({"permissions": {"network": "Talk to the farm"}}, "the permission 'files' is missing"),
    ],
)
def test_validation_catches_other_mistakes(change, expected):
    manifest = {**valid_manifest(), **change}
    problems = build_addon.validate_manifest(manifest, pyproject_version())
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_terse_texts_may_end_with_a_closing_bracket():
    assert build_addon.terse_text_problem("Read assets (textures, caches)") is None


def copy_addon(tmp_path) -> str:
    target = tmp_path / "addon" / PACKAGE
    shutil.copytree(os.path.join(ROOT, "addon", PACKAGE), target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(target)


def test_an_invalid_manifest_stops_the_build_with_a_sentence(tmp_path, monkeypatch, capsys):
    addon = copy_addon(tmp_path)
    manifest_path = os.path.join(addon, "blender_manifest.toml")
    with open(manifest_path, encoding="utf-8") as handle:
        text = handle.read()
    with open(manifest_path, "w", encoding="utf-8") as handle:
        handle.write(text.replace('files = "Read assets, save a temporary copy, write downloaded frames"',
                                  'files = "Read assets, save a temporary copy, write downloaded frames."'))
    monkeypatch.setattr(build_addon, "ADDON_DIR", build_addon.Path(addon))
    output = tmp_path / "out"
    assert build_addon.main(["--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("build_addon: blender_manifest.toml is invalid: the permission 'files' ends with")
    assert not output.exists() or not os.listdir(output)


def test_a_bl_info_version_that_differs_from_the_project_stops_the_build(tmp_path, monkeypatch, capsys):
    addon = copy_addon(tmp_path)
    init_path = os.path.join(addon, "__init__.py")
    version = tuple(int(part) for part in pyproject_version().split("."))
    with open(init_path, encoding="utf-8") as handle:
        text = handle.read()
    assert f'"version": {version},' in text
    with open(init_path, "w", encoding="utf-8") as handle:
        handle.write(text.replace(f'"version": {version},', '"version": (9, 9, 9),'))
    monkeypatch.setattr(build_addon, "ADDON_DIR", build_addon.Path(addon))
    assert build_addon.main(["--output", str(tmp_path / "out")]) == 1
    assert "bl_info's version (9, 9, 9)" in capsys.readouterr().err


def test_the_command_line_writes_the_zip_into_the_output_folder(tmp_path):
    completed = subprocess.run([sys.executable, os.path.join(ROOT, "build_addon.py"), "--output", str(tmp_path)],
                               capture_output=True, text=True, check=False, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    expected = tmp_path / f"{PACKAGE}-{pyproject_version()}.zip"
    assert completed.stdout.strip() == str(expected)
    assert zipfile.is_zipfile(expected)
