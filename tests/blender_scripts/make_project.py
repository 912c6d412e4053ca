"""Build a small Blender project with external assets, for the packing tests. Runs INSIDE Blender:

    blender -b --factory-startup -Y --python make_project.py -- --root DIR [--texture-color R G B] [--compress]

Standalone on purpose (only `bpy` and the standard library): Blender's own Python runs it, not ours.
`tests/project.py` is the wrapper that builds this command line.

The layout, with every path stored relative (`//`) as an artist's file would have it:

    DIR/project/main.blend              the scene: three emissive panels side by side seen from above
    DIR/project/textures/wood.png       the left panel's texture (inside the project folder)
    DIR/shared_assets/outside.png       the right panel's texture (OUTSIDE the project folder)
    DIR/project/lib/prop.blend          a library; main.blend links its collection "Prop" (the middle panel)
    DIR/project/lib/textures/prop.png   the library's own texture, relative to the library

Each panel shows its texture's checker pattern at full size in the frame, so a missing texture changes the image.

With --library-outside the library lives outside the project folder and its texture inside it:

    DIR/library/prop.blend              linked by main.blend as //../library/prop.blend
    DIR/project/textures/prop.png       the library's texture, stored as //../project/textures/prop.png

With --library-absolute main.blend links the library by its absolute path (the library's own texture path stays
relative).

With --extras main.blend also refers to files the render does not show, of kinds BAT handles differently:

    DIR/project/seq/frame_0001..3.png   an image sequence, stored as //seq/frame_0001.png
    DIR/project/absolute.png            an image inside the project stored with its absolute path
    DIR/sounds/hum.wav                  a sound outside the project
"""

import argparse
import os
import sys

import bpy

TEXTURE_SIZE = 8
OUTSIDE_COLOR = (0.15, 0.35, 0.85)
PROP_COLOR = (0.2, 0.8, 0.3)
PANEL_WIDTH = 1.0
PANEL_HEIGHT = 1.6
PANEL_GAP = 0.06


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the options that follow `--` on Blender's command line."""
    argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="make_project.py")
    parser.add_argument("--root", required=True, help="the folder to build the project in")
    parser.add_argument("--texture-color", type=float, nargs=3, default=(0.8, 0.5, 0.2), metavar=("R", "G", "B"),
                        help="the main colour of textures/wood.png (0-1)")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--compress", action="store_true", help="save main.blend compressed")
    parser.add_argument("--library-outside", action="store_true",
                        help="put the library outside the project folder and its texture inside it")
    parser.add_argument("--library-absolute", action="store_true",
                        help="link the library with its absolute path (its own texture path stays relative)")
    parser.add_argument("--extras", action="store_true",
                        help="also refer to an image sequence, an absolute path and a sound (not rendered)")
    return parser.parse_args(argv)


def write_checker_png(path: str, color: tuple[float, float, float]) -> None:
    """Save an 8x8 checker of `color` and a darker shade of it as a PNG, through Blender's own image writer."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = bpy.data.images.new(os.path.basename(path), TEXTURE_SIZE, TEXTURE_SIZE, alpha=False)
    dark = tuple(channel * 0.35 for channel in color)
    pixels = []
    for y in range(TEXTURE_SIZE):
        for x in range(TEXTURE_SIZE):
            pixels.extend((*(color if (x + y) % 2 == 0 else dark), 1.0))
    image.pixels = pixels
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def emissive_material(name: str, texture_path: str) -> bpy.types.Material:
    """A material that shows the image at `texture_path` unlit, stretched over the object's bounds."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes = material.node_tree.nodes
    links = material.node_tree.links
    nodes.clear()
    coordinates = nodes.new("ShaderNodeTexCoord")
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = bpy.data.images.load(texture_path)
    # Crisp checker cells: every rendered pixel takes exactly one texel's colour.
    texture.interpolation = "Closest"
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(coordinates.outputs["Generated"], texture.inputs["Vector"])
    links.new(texture.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def add_panel(collection: bpy.types.Collection, name: str, x: float, material: bpy.types.Material) -> None:
    """A flat rectangle facing up, centred at (x, 0, 0)."""
    mesh = bpy.data.meshes.new(name)
    half_w, half_h = PANEL_WIDTH / 2, PANEL_HEIGHT / 2
    mesh.from_pydata([(-half_w, -half_h, 0), (half_w, -half_h, 0), (half_w, half_h, 0), (-half_w, half_h, 0)],
                     [], [(0, 1, 2, 3)])
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = (x, 0.0, 0.0)
    collection.objects.link(obj)


def write_wav(path: str) -> None:
    """A tenth of a second of silence as a 16-bit mono WAV file."""
    import struct
    import wave

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wave.open(path, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(struct.pack("<h", 0) * 800)


def add_extras(root: str, project: str) -> None:
    """Datablocks that keep an image sequence, an absolute path and a sound as dependencies (kept by fake users)."""
    for frame in range(1, 4):
        write_checker_png(os.path.join(project, "seq", f"frame_{frame:04d}.png"), (0.1 * frame, 0.2, 0.3))
    sequence = bpy.data.images.load(os.path.join(project, "seq", "frame_0001.png"))
    sequence.source = "SEQUENCE"
    sequence.use_fake_user = True
    absolute = os.path.join(project, "absolute.png")
    write_checker_png(absolute, (0.5, 0.5, 0.5))
    image = bpy.data.images.load(absolute)
    image.use_fake_user = True
    sound_path = os.path.join(root, "sounds", "hum.wav")
    write_wav(sound_path)
    sound = bpy.data.sounds.load(sound_path)
    sound.use_fake_user = True


def save(path: str, compress: bool = False, keep_absolute: tuple[str, ...] = ()) -> None:
    """Save the open file at `path` with every external path stored relative to it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # No .blend1 backups next to the files (reading factory settings resets this, so set it at every save).
    bpy.context.preferences.filepaths.save_version = 0
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.file.make_paths_relative()
    for block in [*bpy.data.images, *bpy.data.libraries]:
        # An artist's file often has a few paths that were never made relative.
        if block.filepath and bpy.path.abspath(block.filepath) in keep_absolute:
            block.filepath = bpy.path.abspath(block.filepath)
    bpy.ops.wm.save_as_mainfile(filepath=path, compress=compress)


def build_library(root: str, project: str, outside: bool) -> str:
    """The library: a collection "Prop" holding one panel textured with prop.png."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if outside:
        path = os.path.join(root, "library", "prop.blend")
        texture = os.path.join(project, "textures", "prop.png")
    else:
        path = os.path.join(project, "lib", "prop.blend")
        texture = os.path.join(project, "lib", "textures", "prop.png")
    write_checker_png(texture, PROP_COLOR)
    collection = bpy.data.collections.new("Prop")
    bpy.context.scene.collection.children.link(collection)
    add_panel(collection, "PropPanel", 0.0, emissive_material("PropMaterial", texture))
    save(path)
    return path


def build_main(root: str, project: str, library: str, args: argparse.Namespace) -> str:
    """main.blend: the wood and outside panels, the linked prop between them, a camera looking down."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    path = os.path.join(project, "main.blend")
    # Saved once first, so that the library can be linked with a path relative to this file.
    os.makedirs(project, exist_ok=True)
    bpy.context.preferences.filepaths.save_version = 0
    bpy.ops.wm.save_as_mainfile(filepath=path)
    scene = bpy.context.scene

    wood = os.path.join(project, "textures", "wood.png")
    outside = os.path.join(root, "shared_assets", "outside.png")
    write_checker_png(wood, tuple(args.texture_color))
    write_checker_png(outside, OUTSIDE_COLOR)
    step = PANEL_WIDTH + PANEL_GAP
    add_panel(scene.collection, "WoodPanel", -step, emissive_material("Wood", wood))
    add_panel(scene.collection, "OutsidePanel", step, emissive_material("Outside", outside))

    with bpy.data.libraries.load(library, link=True, relative=True) as (_source, linked):
        linked.collections = ["Prop"]
    instance = bpy.data.objects.new("PropInstance", None)
    instance.instance_type = "COLLECTION"
    instance.instance_collection = linked.collections[0]
    scene.collection.objects.link(instance)

    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.data.type = "ORTHO"
    camera.data.ortho_scale = 3.4
    camera.location = (0.0, 0.0, 5.0)
    scene.collection.objects.link(camera)
    scene.camera = camera

    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.0
    scene.world = world

    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 8
    scene.cycles.use_denoising = False
    render.resolution_x, render.resolution_y = 160, 90
    render.resolution_percentage = 100
    render.filepath = "//render/f_"
    render.image_settings.file_format = "PNG"
    scene.view_settings.view_transform = "Standard"
    scene.frame_start, scene.frame_end = 1, max(1, args.frames)
    keep_absolute: tuple[str, ...] = ()
    if args.extras:
        add_extras(root, project)
        keep_absolute += (os.path.join(project, "absolute.png"),)
    if args.library_absolute:
        keep_absolute += (library,)
    save(path, compress=args.compress, keep_absolute=keep_absolute)
    return path


def main() -> None:
    args = parse_args(sys.argv)
    root = os.path.abspath(args.root)
    project = os.path.join(root, "project")
    library = build_library(root, project, args.library_outside)
    main_file = build_main(root, project, library, args)
    print("RENDERQ_PROJECT", main_file, flush=True)


main()
