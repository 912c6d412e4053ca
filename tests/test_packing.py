"""renderq.packing: the Blender version in a file's header, and packing a real project made by Blender into a
self-contained tree that renders the same pixels once the original files are gone."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil

import pytest

from harness import find_blender_or_none
from project import make_project, materialize, render_frame, tree_hashes
from renderq.packing import OUTSIDE_PROJECT, PackError, PackResult, pack_project, read_blend_version

BLENDER = find_blender_or_none()
needs_blender = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# -- the header ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, version", [
    (b"BLENDER-v304", "3.4"),
    (b"BLENDER_v279", "2.79"),
    (b"BLENDER-V402", "4.2"),
    (b"BLENDER17-01v0500", "5.0"),
    (b"BLENDER17-01v0501", "5.1"),
])
def test_version_from_a_plain_header(tmp_path, header: bytes, version: str) -> None:
    path = tmp_path / "scene.blend"
    path.write_bytes(header + b"REND" + b"\0" * 200)
    assert read_blend_version(str(path)) == version


def test_version_from_a_gzip_compressed_file(tmp_path) -> None:
    path = tmp_path / "scene.blend"
    with gzip.open(path, "wb") as stream:
        stream.write(b"BLENDER17-01v0500" + os.urandom(1 << 20))
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert read_blend_version(str(path)) == "5.0"


def test_version_from_a_zstd_compressed_file(tmp_path) -> None:
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / "scene.blend"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"BLENDER-v304" + b"\0" * 4096))
    assert read_blend_version(str(path)) == "3.4"


@pytest.mark.parametrize("content", [
    b"", b"PNG not a blend", b"BLENDER", b"BLENDER-x304", gzip.compress(b"hello"), b"\x1f\x8bdamaged gzip",
    ZSTD_MAGIC + b"damaged zstd stream",
])
def test_not_a_blend_file(tmp_path, content: bytes) -> None:
    path = tmp_path / "scene.blend"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a .blend file"):
        read_blend_version(str(path))


def test_pack_refuses_what_it_cannot_pack(tmp_path) -> None:
    not_blend = tmp_path / "project" / "notes.blend"
    not_blend.parent.mkdir()
    not_blend.write_bytes(b"just text")
    with pytest.raises(ValueError, match="not a .blend file"):
        pack_project(str(not_blend), str(tmp_path / "staging"))
    with pytest.raises(ValueError, match="is not a file"):
        pack_project(str(tmp_path / "nope.blend"), str(tmp_path / "staging"))
    blend = tmp_path / "project" / "scene.blend"
    blend.write_bytes(b"BLENDER-v304" + b"\0" * 64)
    with pytest.raises(ValueError, match="is not a folder"):
        pack_project(str(blend), str(tmp_path / "staging"), project_root=str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="not inside the project folder"):
        pack_project(str(blend), str(tmp_path / "staging"), project_root=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="must not contain the project folder"):
        pack_project(str(blend), str(tmp_path))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "old.txt").write_text("left over")
    with pytest.raises(ValueError, match="must be empty"):
        pack_project(str(blend), str(tmp_path / "busy"))


def test_manifest_is_what_the_coordinator_gets() -> None:
    from renderq.packing import PackedFile

    result = PackResult(
        main_file="main.blend",
        files=[PackedFile("main.blend", "a" * 64, 10, "/staging/main.blend"),
               PackedFile("textures/wood.png", "b" * 64, 5, "/p/textures/wood.png")],
        missing=[], blender_version="3.4", staging_dir="/staging",
    )
    assert result.manifest() == [{"path": "main.blend", "sha256": "a" * 64, "size": 10},
                                 {"path": "textures/wood.png", "sha256": "b" * 64, "size": 5}]
    assert result.total_bytes == 15


# -- a real project --------------------------------------------------------------------------------------------------


def sha256_of(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def files_in(folder: str) -> set[str]:
    return set(tree_hashes(folder))


def region_means(image_path: str) -> list[tuple[float, float, float]]:
    """Mean RGB of the left, middle and right thirds of the frame's central band."""
    from PIL import Image

    with Image.open(image_path) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        means = []
        for third in range(3):
            box = (third * width // 3 + 8, height // 4, (third + 1) * width // 3 - 8, 3 * height // 4)
            data = rgb.crop(box).tobytes()
            count = len(data) // 3
            means.append(tuple(sum(data[c::3]) / count for c in range(3)))
        return means


def pixels_of(image_path: str) -> tuple[tuple[int, int], bytes]:
    from PIL import Image

    with Image.open(image_path) as image:
        rgba = image.convert("RGBA")
        return rgba.size, rgba.tobytes()


@needs_blender
def test_pack_finds_every_dependency_and_copies_only_rewritten_blends(tmp_path) -> None:
    paths = make_project(str(tmp_path / "work"), BLENDER)
    before = tree_hashes(paths["root"])
    staging = str(tmp_path / "staging")
    stages = []
    result = pack_project(paths["main"], staging, progress=lambda stage, done, total: stages.append(stage))

    assert tree_hashes(paths["root"]) == before, "packing changed the original files"
    outside_path = f"{OUTSIDE_PROJECT}/{paths['outside'].lstrip('/')}"
    assert {f.path for f in result.files} == {
        "main.blend", "textures/wood.png", "lib/prop.blend", "lib/textures/prop.png", outside_path,
    }
    assert result.main_file == "main.blend"
    assert result.missing == []
    assert result.blender_version == "3.4"
    assert result.project_root == paths["project"]
    # Only main.blend refers to a file outside the project, so only it is rewritten; nothing else is copied.
    assert result.rewritten == ["main.blend"]
    assert files_in(staging) == {"main.blend"}
    by_path = {f.path: f for f in result.files}
    assert by_path["main.blend"].source == os.path.join(staging, "main.blend")
    for tree_path, original in [("textures/wood.png", paths["wood"]), ("lib/prop.blend", paths["library"]),
                                ("lib/textures/prop.png", paths["prop"]), (outside_path, paths["outside"])]:
        assert by_path[tree_path].source == original
        assert by_path[tree_path].sha256 == before[os.path.relpath(original, paths["root"])]
        assert by_path[tree_path].size == os.path.getsize(original)
    assert by_path["main.blend"].sha256 == sha256_of(os.path.join(staging, "main.blend"))
    assert by_path["main.blend"].sha256 != before["project/main.blend"]
    assert stages[0] == "trace" and "verify" in stages and stages[-1] == "hash"
    assert result.manifest() == sorted(result.manifest(), key=lambda entry: entry["path"])


@needs_blender
@pytest.mark.parametrize("compression", ["none", "zstd", "gzip"])
def test_packed_tree_renders_the_same_pixels_without_the_originals(tmp_path, compression: str) -> None:
    paths = make_project(str(tmp_path / "work"), BLENDER, compress=compression == "zstd")
    if compression == "gzip":
        # Older Blenders saved gzip; Blender 3.x still reads it, and so must packing.
        with open(paths["main"], "rb") as plain:
            data = plain.read()
        with gzip.open(paths["main"], "wb") as packed:
            packed.write(data)
    head = open(paths["main"], "rb").read(4)
    assert head.startswith({"none": b"BLEN", "zstd": ZSTD_MAGIC, "gzip": b"\x1f\x8b"}[compression])
    assert read_blend_version(paths["main"]) == "3.4"
    before = tree_hashes(paths["root"])

    staging = str(tmp_path / "staging")
    result = pack_project(paths["main"], staging)
    assert tree_hashes(paths["root"]) == before, "packing changed the original files"
    assert result.missing == [] and len(result.files) == 5

    original_image = render_frame(BLENDER, paths["main"])
    # Every texture shows in its own third of the frame: wood (orange), the library's prop (green), outside (blue).
    wood, prop, outside = region_means(original_image)
    assert wood[0] > wood[1] > wood[2] and wood[0] > 80
    assert prop[1] > max(prop[0], prop[2]) + 40
    assert outside[2] > max(outside[0], outside[1]) + 40

    # The worker's view: the packed tree alone, with the project (and the outside texture) gone from its place.
    materialize(result.files, staging)
    shutil.move(paths["root"], str(tmp_path / "moved-away"))
    packed_image = render_frame(BLENDER, os.path.join(staging, result.main_file))
    assert pixels_of(packed_image) == pixels_of(os.path.join(tmp_path, "moved-away", "project", "render",
                                                             "f_0001.png"))


@needs_blender
def test_missing_assets_are_listed_as_the_user_knows_them(tmp_path) -> None:
    paths = make_project(str(tmp_path / "work"), BLENDER)
    os.remove(paths["wood"])
    os.remove(paths["outside"])
    result = pack_project(paths["main"], str(tmp_path / "staging"))
    assert result.missing == sorted(["textures/wood.png", paths["outside"]])
    assert {f.path for f in result.files} == {"main.blend", "lib/prop.blend", "lib/textures/prop.png"}


@needs_blender
def test_a_missing_library_hides_its_own_textures(tmp_path) -> None:
    paths = make_project(str(tmp_path / "work"), BLENDER)
    os.remove(paths["library"])
    result = pack_project(paths["main"], str(tmp_path / "staging"))
    assert result.missing == ["lib/prop.blend"]
    assert "lib/textures/prop.png" not in {f.path for f in result.files}


@needs_blender
def test_packing_again_after_an_edit_sees_the_edit(tmp_path) -> None:
    """BAT caches parsed .blend files process-wide; a second pack in the same process must not reuse stale data."""
    paths = make_project(str(tmp_path / "work"), BLENDER)
    first = pack_project(paths["main"], str(tmp_path / "staging-1"))
    assert first.missing == []
    # Replace the library by one whose texture path is //../project/textures/prop.png: seen from lib/, that is
    # project/project/textures/prop.png, which does not exist. A stale parse would still see //textures/prop.png.
    other = make_project(str(tmp_path / "other"), BLENDER, library_outside=True)
    shutil.copyfile(other["library"], paths["library"])
    second = pack_project(paths["main"], str(tmp_path / "staging-2"))
    assert second.missing == ["project/textures/prop.png"]


@needs_blender
def test_library_outside_the_project_with_its_texture_inside(tmp_path) -> None:
    """BAT moves such a library under _outside_project/ but keeps its relative path into the project, which would
    break; packing notices and packs again from the folder holding everything."""
    paths = make_project(str(tmp_path / "work"), BLENDER, library_outside=True)
    staging = str(tmp_path / "staging")
    result = pack_project(paths["main"], staging)
    assert result.project_root == paths["root"]
    assert result.main_file == "project/main.blend"
    assert {f.path for f in result.files} == {
        "project/main.blend", "project/textures/wood.png", "project/textures/prop.png", "library/prop.blend",
        "shared_assets/outside.png",
    }
    # Every path was relative and stays valid in the wider tree: nothing needed rewriting.
    assert result.rewritten == [] and files_in(staging) == set()

    original_image = render_frame(BLENDER, paths["main"])
    materialize(result.files, staging)
    shutil.move(paths["root"], str(tmp_path / "moved-away"))
    packed_image = render_frame(BLENDER, os.path.join(staging, result.main_file))
    assert pixels_of(packed_image) == pixels_of(original_image.replace(paths["root"], str(tmp_path / "moved-away")))


@needs_blender
def test_sequences_absolute_paths_and_sounds(tmp_path) -> None:
    paths = make_project(str(tmp_path / "work"), BLENDER, extras=True)
    staging = str(tmp_path / "staging")
    result = pack_project(paths["main"], staging)
    by_path = {f.path: f for f in result.files}
    # Every frame of the sequence, not only the one the file names.
    for frame in (1, 2, 3):
        assert by_path[f"seq/frame_{frame:04d}.png"].source == paths["sequence"][frame - 1]
    # BAT moves every absolute path under _outside_project/, even one inside the project folder.
    assert by_path[f"{OUTSIDE_PROJECT}/{paths['absolute'].lstrip('/')}"].source == paths["absolute"]
    assert by_path[f"{OUTSIDE_PROJECT}/{paths['sound'].lstrip('/')}"].source == paths["sound"]
    assert result.missing == [] and result.rewritten == ["main.blend"]
    assert len(result.files) == 10


@needs_blender
def test_a_library_linked_by_absolute_path_is_refused_with_a_remedy(tmp_path) -> None:
    """BAT moves every absolute path under _outside_project/, a library too, but keeps the library's own relative
    texture path, which then points nowhere. No other project root helps, so packing says what to do."""
    paths = make_project(str(tmp_path / "work"), BLENDER, library_absolute=True)
    before = tree_hashes(paths["root"])
    staging = tmp_path / "staging"
    with pytest.raises(PackError) as refused:
        pack_project(paths["main"], str(staging))
    message = str(refused.value)
    assert "refers to //textures/prop.png, which is not in the packed tree" in message
    assert "Make Paths Relative" in message
    assert tree_hashes(paths["root"]) == before
