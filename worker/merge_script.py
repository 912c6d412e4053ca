"""Merges a still's rendered tiles into the whole image. Runs INSIDE Blender:

    blender -b -Y --factory-startup [TASK.blend] --python merge_script.py -- --columns C --rows R --output PATH
        [--scene NAME] --tile N PATH [--tile N PATH ...]

Each tile is a full-size image with only its rectangle rendered (frame_script.py); the merge copies each tile's
rectangle (tile_rects.py, the whole pixels of the tile itself, not its margin) into the first tile's image, pixel
values as they are, and saves that image to PATH in the tiles' own file format. Prints MARK and PATH once it is
written.

An OpenEXR still is saved with the output settings (half or full float, codec) of the task's scene, which the
worker opens for it (TASK.blend, --scene): an image saves an EXR it loaded as uncompressed full float. Other
formats keep the depth and channels of the file they were loaded from.

Standalone on purpose: imports only `bpy`, the standard library and tile_rects.py next to it.
"""

import argparse
import os
import sys

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tile_rects  # found next to this script, once the folder is on the path

MARK = "RENDERQ_MERGED "


def parse_args(argv: list) -> argparse.Namespace:
    argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="merge_script.py")
    parser.add_argument("--columns", type=int, required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--scene", default="", help="the task's scene, whose output settings an EXR is saved with")
    parser.add_argument("--tile", nargs=2, action="append", default=[], metavar=("NUMBER", "PATH"))
    return parser.parse_args(argv)


def merge(columns: int, rows: int, tiles: dict, output: str, scene_name: str = "") -> None:
    """Copy each tile's rectangle into the first tile's image and save it as `output`."""
    if sorted(tiles) != list(range(1, columns * rows + 1)):
        raise SystemExit(f"renderq: the merge needs tiles 1 to {columns * rows}, and has {sorted(tiles)}")
    images = {number: bpy.data.images.load(path, check_existing=False) for number, path in tiles.items()}
    base = images[1]
    width, height = base.size
    channels = base.channels
    merged = [0.0] * (width * height * channels)
    base.pixels.foreach_get(merged)
    for number, image in images.items():
        if tuple(image.size) != (width, height) or image.channels != channels:
            raise SystemExit(f"renderq: tile {number} is {tuple(image.size)}, not {width}x{height} like tile 1")
        if number == 1:
            continue
        pixels = [0.0] * len(merged)
        image.pixels.foreach_get(pixels)
        x0, x1, y0, y1 = tile_rects.tile_rect(width, height, columns, rows, number)
        for y in range(y0, y1):
            start, end = (y * width + x0) * channels, (y * width + x1) * channels
            merged[start:end] = pixels[start:end]
    base.pixels.foreach_set(merged)
    if base.file_format == "OPEN_EXR":
        scene = bpy.data.scenes.get(scene_name) or bpy.context.scene
        base.save_render(output, scene=scene)
        return
    base.filepath_raw = output
    base.save()


def main() -> None:
    args = parse_args(sys.argv)
    merge(args.columns, args.rows, {int(number): path for number, path in args.tile}, args.output, args.scene)
    if not os.path.isfile(args.output):
        raise SystemExit("renderq: Blender did not write the merged image")
    print(MARK + args.output, flush=True)


if __name__ == "__main__":
    main()
