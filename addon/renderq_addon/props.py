"""Per-scene submit settings, saved with the .blend: `scene.renderq`."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from renderq.tiles import TILES_MAX

# Blender's own frame limit (MAXFRAME); the coordinator takes the same range.
MAX_FRAME = 1_048_574
MAX_PRIORITY = 1_000_000


def _copy_scene_range(settings: RENDERQ_PG_scene_settings, context: bpy.types.Context) -> None:
    # Switching "use scene range" off starts the custom range from the scene's, which is what one edits from.
    if not settings.use_scene_range and context is not None and context.scene is not None:
        scene = context.scene
        settings.frame_start = scene.frame_start
        settings.frame_end = scene.frame_end
        settings.frame_step = scene.frame_step


class RENDERQ_PG_worker_name(bpy.types.PropertyGroup):
    """A worker picked for manual assignment, by its `name` (the built-in name property)."""


class RENDERQ_PG_scene_settings(bpy.types.PropertyGroup):
    """How this scene is submitted to the farm."""

    task_name: StringProperty(
        name="Task Name",
        description="The task's name on the farm; empty uses the file's name",
        default="",
        maxlen=64,
    )
    use_scene_range: BoolProperty(
        name="Use Scene Range",
        description="Render the scene's frame range and step",
        default=True,
        update=_copy_scene_range,
    )
    frame_start: IntProperty(name="Start", description="First frame to render", default=1,
                             min=-MAX_FRAME, max=MAX_FRAME)
    frame_end: IntProperty(name="End", description="Last frame to render", default=250,
                           min=-MAX_FRAME, max=MAX_FRAME)
    frame_step: IntProperty(name="Step", description="Render every n-th frame", default=1, min=1, max=MAX_FRAME)
    priority: IntProperty(
        name="Priority",
        description="Higher priorities render first; equal priorities first come, first served",
        default=0, min=-MAX_PRIORITY, max=MAX_PRIORITY, soft_min=-100, soft_max=100,
    )
    assignment: EnumProperty(
        name="Assignment",
        description="Which workers may render this task",
        items=(
            ("AUTO", "Automatic", "Any worker with a suitable Blender renders the task"),
            ("MANUAL", "Pick Workers", "Only the workers picked below render the task"),
        ),
        default="AUTO",
    )
    selected_workers: CollectionProperty(type=RENDERQ_PG_worker_name, name="Picked Workers")
    tags: StringProperty(
        name="Tags",
        description="Only workers with all of these tags render the task (separated by commas, e.g. gpu, "
                    "lighting); empty: any worker",
        default="",
        maxlen=400,
    )
    device: EnumProperty(
        name="Device",
        description="Which device Cycles renders on",
        items=(
            ("FILE", "File's Choice", "Render on the device the scene's Cycles settings name"),
            ("GPU", "GPU", "Render on a GPU: only workers with a GPU enabled take the task"),
            ("CPU", "CPU", "Render on the CPU"),
        ),
        default="FILE",
    )
    render_order: EnumProperty(
        name="Order",
        description="The order the farm renders the frames in",
        items=(
            ("sampled", "Whole Shot First",
             "The first and last frame, then frames spread over the whole shot, then the gaps: you see the whole "
             "shot early and the ETA is right early"),
            ("sequential", "In Order", "Lowest frame number first"),
        ),
        default="sampled",
    )
    scout_frames: IntProperty(
        name="Scout Frames",
        description="Render this many frames spread over the range first (the first, the last, the rest evenly "
                    "between), then wait: the task shows them with an estimate of the rest's time and cost until "
                    "you approve or cancel it. 0: render every frame at once",
        default=0, min=0, max=100_000, soft_max=20,
    )
    allow_missing: BoolProperty(
        name="Allow Missing Assets",
        description="Submit even when some assets the file refers to are missing on disk",
        default=False,
    )
    allow_outside: BoolProperty(
        name="Allow Files Outside the Project Folder",
        description="Upload the files this .blend uses from outside its folder, and the targets of links in the "
                    "folder that lead out of it (listed after a submit stops for them). Hidden files such as "
                    "~/.ssh/id_rsa or .env are never uploaded",
        default=False,
    )
    make_video: BoolProperty(
        name="Make a Video",
        description="Once every frame is done, a worker with FFmpeg encodes a video of them at the scene's frame "
                    "rate, with the scene's sound strips. A scene whose output is a movie gets its own movie "
                    "(container, codec and quality as set in Output Properties) without this",
        default=False,
    )
    notify_url: StringProperty(
        name="Notify URL",
        description="Post the task's events (done, failed, awaiting approval) to this http:// or https:// URL as "
                    "signed JSON (a chat bot, a pipeline hook); empty: only the farm's own webhook, if any",
        default="",
        maxlen=2000,
    )
    video_container: EnumProperty(
        name="Video",
        description="The video's container and codec",
        items=(
            ("MP4", "MP4 (H.264)", "H.264 in an MP4 file: plays everywhere"),
            ("MOV", "QuickTime (ProRes)", "ProRes 422 HQ in a QuickTime file: for editing"),
            ("WEBM", "WebM (VP9)", "VP9 in a WebM file: for the web"),
        ),
        default="MP4",
    )
    split_tiles: BoolProperty(
        name="Split into Tiles",
        description="Render a single frame as tiles that several workers render at once; one of them then merges "
                    "them into the whole image, equal to a render of the whole frame. Not for a denoised scene",
        default=False,
    )
    tile_columns: IntProperty(name="Columns", description="How many tiles across", default=2, min=1, max=TILES_MAX)
    tile_rows: IntProperty(name="Rows", description="How many tiles down", default=2, min=1, max=TILES_MAX)


def frame_range(scene: bpy.types.Scene) -> tuple[int, int, int]:
    """(start, end, step) to submit: the scene's, or the custom range."""
    settings = scene.renderq
    if settings.use_scene_range:
        return scene.frame_start, scene.frame_end, max(1, scene.frame_step)
    return settings.frame_start, settings.frame_end, max(1, settings.frame_step)


def picked_workers(scene: bpy.types.Scene) -> list[str]:
    """The names of the workers picked for manual assignment, without duplicates or blanks."""
    names = [item.name.strip() for item in scene.renderq.selected_workers]
    return list(dict.fromkeys(name for name in names if name))


_CLASSES = (RENDERQ_PG_worker_name, RENDERQ_PG_scene_settings)


def register() -> None:
    """Register the property groups and attach them to scenes."""
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.renderq = PointerProperty(type=RENDERQ_PG_scene_settings)


def unregister() -> None:
    """Detach and unregister."""
    del bpy.types.Scene.renderq
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
