"""The scenes and cameras a .blend holds, read by blender-asset-tracer (BAT) without starting Blender: what
`renderq submit --scene/--camera` checks the names against, and a named scene's frame range.

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
_READ_ERRORS = (blend_exceptions.BlendFileError, blend_exceptions.SegmentationFault,
                blend_exceptions.NoReaderImplemented, struct.error, OSError, KeyError, TypeError, ValueError)


@dataclass
class BlendScenes:
    """The names a .blend holds, and each scene's frame range (start, end, step)."""

    scenes: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    frame_ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)


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
        found.cameras = [_name(obj) for obj in bfile.find_blocks_from_code(b"OB")
                         if int(obj.get(b"type")) == _OB_CAMERA]
    except _READ_ERRORS:
        return None
    finally:
        bfile.close()
    return found


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
