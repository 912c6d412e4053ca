"""Build the RenderQ Blender add-on: `python build_addon.py [--output DIR]` makes dist/renderq_addon-<version>.zip.

One zip serves every supported Blender: 3.4 to 4.1 install it from Preferences > Add-ons (they read `bl_info` in
`__init__.py`), 4.2 and later install it as an extension (they read `blender_manifest.toml`). Both sit in the
zip's single top-level folder `renderq_addon/`.

The add-on's own sources come from addon/renderq_addon/. The modules it shares with the command line
(renderq/http_client.py with renderq/client_errors.py and renderq/addresses.py, renderq/packing.py,
renderq/exposure.py, renderq/blend_header.py, renderq/paths.py, renderq/frame_download.py, renderq/model.py,
renderq/units.py, renderq/submit.py, renderq/capabilities.py, renderq/tiles.py) and the blender_asset_tracer package
(from the Python running this script) are copied into `renderq_addon/vendor/` at build time, never into the
repository. BAT's `shaman`, `s3` and `cli` parts are left out: they need `requests` or `boto3`, which Blender's
Python may lack, and the add-on does not use them.

The manifest is validated first (required keys and their types, versions equal to pyproject.toml's, terse texts
without trailing punctuation); an invalid one stops the build with exit status 1 and a sentence saying what is
wrong. The zip is deterministic: sorted entries, fixed timestamps and permissions.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
ADDON_DIR = ROOT / "addon" / "renderq_addon"
PYPROJECT = ROOT / "pyproject.toml"
PACKAGE = "renderq_addon"
MANIFEST_NAME = "blender_manifest.toml"

# The renderq modules the add-on imports, plus the package's __init__ so that `renderq` is a package.
VENDORED_RENDERQ = ("__init__.py", "http_client.py", "client_errors.py", "packing.py", "exposure.py",
                    "blend_header.py", "paths.py", "frame_download.py", "model.py", "units.py", "submit.py",
                    "local_files.py", "addresses.py", "object_store.py", "capabilities.py", "tiles.py")
BAT_PACKAGE = "blender_asset_tracer"
BAT_DISTRIBUTION = "blender-asset-tracer"
# Relative to the BAT package: parts that need third-party modules (requests, boto3) or are a command line.
BAT_EXCLUDED = ("cli", "pack/shaman", "pack/s3.py", "__main__.py")
# No bundled module may import these: Blender's Python does not have them (3.4 has no requests).
FORBIDDEN_IMPORTS = ("requests", "boto3", "botocore")

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644

# -- manifest rules, after Blender's extension documentation ------------------------------------------------------

MANIFEST_REQUIRED: dict[str, type] = {
    "schema_version": str,
    "id": str,
    "version": str,
    "name": str,
    "tagline": str,
    "maintainer": str,
    "type": str,
    "blender_version_min": str,
    "license": list,
}
MANIFEST_OPTIONAL: dict[str, type] = {
    "website": str,
    "tags": list,
    "blender_version_max": str,
    "permissions": dict,
    "platforms": list,
    "wheels": list,
    "copyright": list,
    "build": dict,
}
PERMISSION_KINDS = ("files", "network", "clipboard", "camera", "microphone")
# What this add-on does, so the manifest must ask for it.
REQUIRED_PERMISSIONS = ("network", "files")
TERSE_MAX_LENGTH = 64
MIN_BLENDER_FOR_EXTENSIONS = (4, 2, 0)
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


class BuildError(Exception):
    """The add-on cannot be built; the message says why in one sentence."""


def terse_text_problem(value: str) -> str | None:
    """Why a tagline or permission text is not acceptable, or None: non-empty, at most 64 characters, ending in
    a letter, a digit or a closing bracket (no trailing punctuation)."""
    if not value.strip():
        return "is empty"
    if value != value.strip():
        return "has spaces at its start or end"
    if len(value) > TERSE_MAX_LENGTH:
        return f"is {len(value)} characters long, more than {TERSE_MAX_LENGTH}"
    if any(ord(char) < 32 for char in value):
        return "contains control characters"
    if not (value[-1].isalnum() or value[-1] in ")]}"):
        return f"ends with the punctuation {value[-1]!r}"
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def validate_manifest(manifest: dict[str, Any], expected_version: str, package: str = PACKAGE) -> list[str]:
    """Every problem of a parsed blender_manifest.toml, as sentences; an empty list when it is valid."""
    problems: list[str] = []
    for key, kind in MANIFEST_REQUIRED.items():
        if key not in manifest:
            problems.append(f"the required key {key!r} is missing")
        elif not isinstance(manifest[key], kind):
            problems.append(f"{key!r} must be a {kind.__name__}, not {type(manifest[key]).__name__}")
    for key, kind in MANIFEST_OPTIONAL.items():
        if key in manifest and not isinstance(manifest[key], kind):
            problems.append(f"{key!r} must be a {kind.__name__}, not {type(manifest[key]).__name__}")
    for key in manifest:
        if key not in MANIFEST_REQUIRED and key not in MANIFEST_OPTIONAL:
            problems.append(f"{key!r} is not a manifest key Blender knows")

    def text_of(key: str) -> str | None:
        value = manifest.get(key)
        return value if isinstance(value, str) else None

    if (value := text_of("schema_version")) is not None and value != "1.0.0":
        problems.append(f"'schema_version' must be \"1.0.0\", not {value!r}")
    if (value := text_of("id")) is not None and value != package:
        problems.append(f"'id' must be {package!r} (the add-on's folder), not {value!r}")
    if (value := text_of("version")) is not None:
        if not _VERSION.match(value):
            problems.append(f"'version' must look like 1.2.3, not {value!r}")
        elif value != expected_version:
            problems.append(f"'version' is {value!r} but pyproject.toml says {expected_version!r}")
    if (value := text_of("type")) is not None and value != "add-on":
        problems.append(f"'type' must be \"add-on\", not {value!r}")
    for key in ("name", "maintainer"):
        if (value := text_of(key)) is not None and not value.strip():
            problems.append(f"{key!r} is empty")
    if (value := text_of("tagline")) is not None and (problem := terse_text_problem(value)):
        problems.append(f"'tagline' {problem}")
    if (value := text_of("blender_version_min")) is not None:
        if not _VERSION.match(value):
            problems.append(f"'blender_version_min' must look like 4.2.0, not {value!r}")
        elif _version_tuple(value) < MIN_BLENDER_FOR_EXTENSIONS:
            problems.append(f"'blender_version_min' must be 4.2.0 or later (extensions start there), not {value!r}")
    licenses = manifest.get("license")
    if isinstance(licenses, list):
        if not licenses:
            problems.append("'license' must list at least one license")
        for entry in licenses:
            if not isinstance(entry, str) or not entry.startswith("SPDX:"):
                problems.append(f"each 'license' entry must be a string like \"SPDX:GPL-3.0-or-later\", not {entry!r}")
    tags = manifest.get("tags")
    if isinstance(tags, list) and not all(isinstance(tag, str) and tag for tag in tags):
        problems.append("'tags' must be a list of non-empty strings")
    permissions = manifest.get("permissions")
    if permissions is None:
        problems.append("the 'permissions' table is missing (the add-on needs network and files)")
    elif isinstance(permissions, dict):
        for kind, reason in permissions.items():
            if kind not in PERMISSION_KINDS:
                problems.append(f"the permission {kind!r} is not one of {', '.join(PERMISSION_KINDS)}")
            if not isinstance(reason, str):
                problems.append(f"the permission {kind!r} must be a sentence (a string)")
            elif problem := terse_text_problem(reason):
                problems.append(f"the permission {kind!r} {problem}")
        for kind in REQUIRED_PERMISSIONS:
            if kind not in permissions:
                problems.append(f"the permission {kind!r} is missing (the add-on uses it)")
    return problems


# -- versions -------------------------------------------------------------------------------------------------------


def project_version(pyproject: Path = PYPROJECT) -> str:
    """The version in pyproject.toml's [project] table."""
    try:
        with open(pyproject, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise BuildError(f"cannot read the project version from {pyproject.name}: {error}") from None
    version = data.get("project", {}).get("version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise BuildError(f"{pyproject.name} has no [project] version like 1.2.3")
    return version


def bl_info_version(init_path: Path) -> tuple[int, ...]:
    """The `version` tuple of the `bl_info` literal in the add-on's __init__.py, read without running it."""
    try:
        tree = ast.parse(init_path.read_text(encoding="utf-8"), filename=str(init_path))
    except (OSError, SyntaxError) as error:
        raise BuildError(f"cannot read bl_info from {init_path.name}: {error}") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "bl_info" for t in node.targets):
            try:
                info = ast.literal_eval(node.value)
            except ValueError:
                break
            version = info.get("version") if isinstance(info, dict) else None
            if isinstance(version, tuple) and all(isinstance(part, int) for part in version):
                return version
            raise BuildError(f"bl_info in {init_path.name} has no version tuple like (1, 2, 3)")
    raise BuildError(f"{init_path.name} has no bl_info dictionary literal, which Blender 3.x needs")


# -- files ----------------------------------------------------------------------------------------------------------


def _bat_location() -> tuple[Path, str, Path | None]:
    """BAT's package folder, its version and its license file, from the Python running this script."""
    spec = importlib.util.find_spec(BAT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            f"{BAT_PACKAGE} is not installed for this Python ({sys.executable}); "
            "run build_addon.py with the project's virtual environment"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    try:
        distribution = importlib.metadata.distribution(BAT_DISTRIBUTION)
        version = distribution.version
        license_file = next(
            (Path(str(distribution.locate_file(f))) for f in distribution.files or []
             if Path(str(f)).name.upper().startswith(("LICENSE", "COPYING"))),
            None,
        )
    except importlib.metadata.PackageNotFoundError:
        version, license_file = "unknown", None
    return folder, version, license_file


def _source_files(folder: Path) -> list[Path]:
    """Files under `folder` that belong in a distribution: no caches, compiled files or editor leftovers."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or "__pycache__" in relative.parts or any(p.startswith(".") for p in relative.parts):
            continue
        if path.suffix in (".pyc", ".pyo") or path.name.endswith("~"):
            continue
        files.append(path)
    return files


def collect_entries(addon_dir: Path = ADDON_DIR, root: Path = ROOT) -> list[tuple[str, bytes]]:
    """(name in the zip, content) of every file of the add-on, vendored modules included, sorted by name."""
    entries: dict[str, bytes] = {}
    for path in _source_files(addon_dir):
        relative = path.relative_to(addon_dir).as_posix()
        if relative.split("/", 1)[0] == "vendor":
            continue  # a vendor folder in the source tree would shadow the build's copy; never ship it
        entries[f"{PACKAGE}/{relative}"] = path.read_bytes()
    for name in VENDORED_RENDERQ:
        source = root / "renderq" / name
        if not source.is_file():
            raise BuildError(f"renderq/{name} is missing; the add-on bundles it")
        entries[f"{PACKAGE}/vendor/renderq/{name}"] = source.read_bytes()
    bat_folder, bat_version, license_file = _bat_location()
    for path in _source_files(bat_folder):
        relative = path.relative_to(bat_folder).as_posix()
        if any(relative == part or relative.startswith(part + "/") for part in BAT_EXCLUDED):
            continue
        entries[f"{PACKAGE}/vendor/{BAT_PACKAGE}/{relative}"] = path.read_bytes()
    if license_file is not None and license_file.is_file():
        entries[f"{PACKAGE}/vendor/{BAT_PACKAGE}/LICENSE.txt"] = license_file.read_bytes()
    entries[f"{PACKAGE}/vendor/README.txt"] = (
        "Copied here by build_addon.py; edit the originals, not these copies.\n"
        "renderq: http_client.py, client_errors.py, local_files.py, addresses.py, packing.py, exposure.py, "
        "blend_header.py, paths.py, frame_download.py from the "
        "RenderQ repository (GPL-3.0-or-later).\n"
        f"{BAT_PACKAGE} {bat_version} (GPL-2.0-or-later), without its cli, pack/shaman and pack/s3 parts.\n"
    ).encode()
    check_imports(entries)
    return sorted(entries.items())


def imported_modules(source: bytes, name: str) -> set[str]:
    """The absolute module names a Python file imports anywhere in it (relative imports left out)."""
    tree = ast.parse(source, filename=name)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def check_imports(entries: dict[str, bytes]) -> None:
    """Refuse a bundle in which a module imports something Blender's Python lacks, or a part left out."""
    for name, content in entries.items():
        if not name.endswith(".py"):
            continue
        for module in imported_modules(content, name):
            top = module.split(".", 1)[0]
            if top in FORBIDDEN_IMPORTS or module.startswith(f"{BAT_PACKAGE}.pack.shaman"):
                raise BuildError(f"{name} imports {module}, which the add-on cannot bundle")


def write_zip(entries: Sequence[tuple[str, bytes]], destination: Path) -> None:
    """Write a deterministic zip: entries in the given order, fixed timestamps and permissions."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, content in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | FILE_MODE) << 16
            info.create_system = 3  # Unix, so that the permissions above are read as such
            archive.writestr(info, content)
    partial.replace(destination)


def build(output_dir: Path, *, addon_dir: Path = ADDON_DIR, pyproject: Path = PYPROJECT) -> Path:
    """Validate, collect and zip the add-on into `output_dir`; return the zip's path. Raises BuildError."""
    version = project_version(pyproject)
    manifest_path = addon_dir / MANIFEST_NAME
    try:
        with open(manifest_path, "rb") as handle:
            manifest = tomllib.load(handle)
    except FileNotFoundError:
        raise BuildError(f"the add-on has no {MANIFEST_NAME} in {addon_dir.name}/") from None
    except tomllib.TOMLDecodeError as error:
        raise BuildError(f"{MANIFEST_NAME} is not valid TOML: {error}") from None
    problems = validate_manifest(manifest, version)
    if problems:
        raise BuildError(f"{MANIFEST_NAME} is invalid: " + "; ".join(problems))
    info_version = bl_info_version(addon_dir / "__init__.py")
    if info_version != _version_tuple(version):
        raise BuildError(
            f"bl_info's version {info_version} in {addon_dir.name}/__init__.py does not match "
            f"pyproject.toml's {version}; change it to {_version_tuple(version)}"
        )
    entries = collect_entries(addon_dir)
    destination = Path(output_dir) / f"{PACKAGE}-{version}.zip"
    write_zip(entries, destination)
    return destination


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the zip, print its path; exit status 1 with one sentence when it cannot be built."""
    parser = argparse.ArgumentParser(description="Build the RenderQ Blender add-on zip.")
    parser.add_argument("--output", default=str(ROOT / "dist"), help="folder for the zip (default: dist/)")
    args = parser.parse_args(argv)
    try:
        path = build(Path(args.output), addon_dir=ADDON_DIR, pyproject=PYPROJECT)
    except BuildError as error:
        print(f"build_addon: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
