"""Turns a saved test scene into one for the video tests. Runs inside Blender:

    blender -b -Y --factory-startup FILE.blend --python video_scene.py -- --fps N [--fps-base B] [--movie]
        [--sound WAV]

--movie sets the scene's output to a movie as an artist would (FFmpeg, MPEG-4 container, H.264, medium quality);
--sound adds a sound strip playing WAV from frame 1 (its path kept relative, so the file travels with the project).
The file is saved in place.
"""

import argparse
import sys

import bpy

argv = sys.argv[sys.argv.index("--") + 1:]
parser = argparse.ArgumentParser()
parser.add_argument("--fps", type=int, required=True)
parser.add_argument("--fps-base", type=float, default=1.0)
parser.add_argument("--movie", action="store_true")
parser.add_argument("--sound")
args = parser.parse_args(argv)

scene = bpy.context.scene
scene.render.fps = args.fps
scene.render.fps_base = args.fps_base
if args.movie:
    scene.render.image_settings.file_format = "FFMPEG"
    scene.render.ffmpeg.format = "MPEG4"
    scene.render.ffmpeg.codec = "H264"
    scene.render.ffmpeg.constant_rate_factor = "MEDIUM"
    scene.render.ffmpeg.audio_codec = "AAC"
    scene.render.filepath = "//render/movie_"
if args.sound:
    editor = scene.sequence_editor_create()
    strips = getattr(editor, "strips", None) or editor.sequences
    strip = strips.new_sound("tone", args.sound, 1, scene.frame_start)
    strip.sound.filepath = bpy.path.relpath(args.sound)
bpy.ops.wm.save_as_mainfile(filepath=bpy.data.filepath, relative_remap=True)
