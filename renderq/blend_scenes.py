"""The scenes and cameras a .blend holds, read by blender-asset-tracer (BAT) without starting Blender: what
`renderq submit --scene/--camera` checks the names against, a named scene's frame range, and whether a scene
denoises (`--tiles` refuses such a scene).

Cameras are the file's own camera objects; one linked from another .blend is not in this file's blocks, so it is
not listed (the worker's Blender would find it, but the submit cannot).
"""

from __future__ import annotations

import pathlib
import struct
from dataclasses import dataclass, field

from blender_asset_tracer import blendfile
from blender_asset_tracer.blendfile import exceptions as blend_exceptions

__all__ = ["BlendScenes", "read_scenes", "refusal"]

# Object type of a camera in Blender's DNA (OB_CAMERA).
_OB_CAMERA = 11
# The output format of a multilayer OpenEXR in Blender's DNA (R_IMF_IMTYPE_MULTILAYER).
_MULTILAYER_EXR = 28
# IDProperty types in Blender's DNA: IDP_INT and IDP_GROUP.
_IDP_INT, _IDP_GROUP = 1, 6
_READ_ERRORS = (blend_exceptions.BlendFileError, blend_exceptions.SegmentationFault,
                blend_exceptions.NoReaderImplemented, struct.error, OSError, KeyError, TypeError, ValueError)


@dataclass
class BlendScenes:
    """The names a .blend holds, and each scene's frame range (start, end, step)."""

    scenes: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    frame_ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # The scenes that Cycles denoises: the scene's denoising on and a view layer's too (both on unless set off).
    denoising: dict[str, bool] = field(default_factory=dict)
    # The scenes whose output is a multilayer OpenEXR.
    multilayer: dict[str, bool] = field(default_factory=dict)
    # The scene the file was saved with, which renders when no other is named.
    current: str = ""


def _name(block: blendfile.BlendFileBlock) -> str:
    return (block.id_name or b"")[2:].decode("utf-8", "replace")


def read_scenes(path: str) -> BlendScenes | None:
    """The scenes, camera objects and frame ranges of the .blend at `path`; None when BAT cannot read it."""
    try:
        bfile = blendfile.BlendFile(pathlib.Path(path))
    except _READ_ERRORS:
        return None
    try:
        found = BlendScenes()
        for scene in bfile.find_blocks_from_code(b"SC"):
            name = _name(scene)
            found.scenes.append(name)
            start, end, step = (int(scene.get((b"r", key))) for key in (b"sfra", b"efra", b"frame_step"))
            found.frame_ranges[name] = (start, end, max(1, step))
            found.denoising[name] = _denoises(scene)
            found.multilayer[name] = int(scene.get((b"r", b"im_format", b"imtype"))) == _MULTILAYER_EXR
        current = bfile.find_blocks_from_code(b"GLOB")[0].get_pointer(b"curscene")
        found.current = _name(current) if current is not None else ""
        found.cameras = [_name(obj) for obj in bfile.find_blocks_from_code(b"OB")
                         if int(obj.get(b"type")) == _OB_CAMERA]
    except _READ_ERRORS:
        return None
    finally:
        bfile.close()
    return found


def _idp_child(group: blendfile.BlendFileBlock | None, name: str) -> blendfile.BlendFileBlock | None:
    """The IDProperty named `name` in an IDProperty group, or None."""
    child = group.get_pointer((b"data", b"group", b"first")) if group is not None else None
    while child is not None:
        if child.get(b"name", as_str=True) == name:
            return child
        child = child.get_pointer(b"next")
    return None


def _cycles_flag(owner: blendfile.BlendFileBlock, fields: tuple[tuple[bytes, ...], ...], name: str) -> bool:
    """A Cycles boolean stored in the ID properties of `owner` (under `fields`, the first it has): on unless the
    file stores it off (Cycles' defaults for denoising are on, and an untouched setting is not stored)."""
    for path in fields:
        try:
            properties = owner.get_pointer(path)
        except KeyError:
            continue
        value = _idp_child(_idp_child(properties, "cycles"), name)
        if value is not None and value.get(b"type") == _IDP_INT:
            return bool(value.get((b"data", b"val")))
    return True


def _denoises(scene: blendfile.BlendFileBlock) -> bool:
    """Whether Cycles denoises this scene's render: its engine is Cycles, the scene's denoising is on, and so is
    that of one of its view layers."""
    if scene.get((b"r", b"engine"), as_str=True) != "CYCLES":
        return False
    if not _cycles_flag(scene, ((b"id", b"system_properties"), (b"id", b"properties")), "use_denoising"):
        return False
    layer = scene.get_pointer((b"view_layers", b"first"))
    while layer is not None:
        if _cycles_flag(layer, ((b"system_properties",), (b"id_properties",)), "use_denoising"):
            return True
        layer = layer.get_pointer(b"next")
    return False


def _listed(names: list[str]) -> str:
    return ", ".join(repr(name) for name in sorted(names)) or "none"


def refusal(found: BlendScenes, file_name: str, scene: str | None, camera: str | None) -> str | None:
    """One sentence when the file has no scene or camera of the names asked for, listing those it has; else
    None."""
    if scene and scene not in found.scenes:
        return f"{file_name} has no scene {scene!r}; its scenes: {_listed(found.scenes)}"
    if camera and camera not in found.cameras:
        return f"{file_name} has no camera {camera!r}; its cameras: {_listed(found.cameras)}"
    return None
