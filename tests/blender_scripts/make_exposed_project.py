"""Build a project whose .blend reaches out of its folder, for the packing attack tests. Runs INSIDE Blender:

    blender -b --factory-startup -Y --python make_exposed_project.py -- --root DIR --home HOME

Standalone on purpose (only `bpy` and the standard library): Blender's own Python runs it, not ours.

The layout (HOME is the home folder the test gives the submitting user):

    HOME/.ssh/id_rsa                    a fake private key
    DIR/elsewhere/plain.png             a plain file outside the project folder
    DIR/private/target.png              what the link below leads to, outside the project folder
    DIR/project/textures/wood.png       a texture inside the project folder
    DIR/project/textures/linked.png     a symbolic link to DIR/private/target.png
    DIR/project/attack.blend            image datablocks for all of the above: the key by its absolute path (an
                                        attacker guesses the home folder), the others relative (//)
    DIR/project/clean.blend             the same without the key

Each image datablock has a fake user, so it stays in the file although nothing uses it.
"""

import argparse
import os
import sys

import bpy

FAKE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key, a RenderQ test\n-----END OPENSSH PRIVATE KEY-----\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the options that follow `--` on Blender's command line."""
    argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="make_exposed_project.py")
    parser.add_argument("--root", required=True, help="the folder to build the project in")
    parser.add_argument("--home", required=True, help="the home folder holding .ssh/id_rsa")
    return parser.parse_args(argv)


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def image_block(name: str, path: str) -> bpy.types.Image:
    """An image datablock naming `path` (its content is never read: the packer goes by the path)."""
    image = bpy.data.images.new(name, 4, 4)
    image.source = "FILE"
    image.filepath = path
    image.use_fake_user = True
    return image


def save(path: str) -> None:
    """Save the open file at `path` with every image path relative, except the key's."""
    bpy.context.preferences.filepaths.save_version = 0
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.file.make_paths_relative()
    key = bpy.data.images.get("key")
    if key is not None:
        key.filepath = bpy.path.abspath(key.filepath)
    bpy.ops.wm.save_as_mainfile(filepath=path)


def main() -> None:
    args = parse_args(sys.argv)
    root = os.path.abspath(args.root)
    project = os.path.join(root, "project")
    key = os.path.join(os.path.abspath(args.home), ".ssh", "id_rsa")
    plain = os.path.join(root, "elsewhere", "plain.png")
    target = os.path.join(root, "private", "target.png")
    wood = os.path.join(project, "textures", "wood.png")
    linked = os.path.join(project, "textures", "linked.png")
    write(key, FAKE_KEY.encode())
    write(plain, b"a plain file outside the project folder")
    write(target, b"the target of a link in the project folder")
    write(wood, b"a texture inside the project folder")
    os.symlink(target, linked)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 1
    scene.render.filepath = "//render/f_"
    for name, path in (("wood", wood), ("plain", plain), ("linked", linked)):
        image_block(name, path)
    save(os.path.join(project, "clean.blend"))
    image_block("key", key)
    save(os.path.join(project, "attack.blend"))
    print("RENDERQ_PROJECT", project, flush=True)


main()
