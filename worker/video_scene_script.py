"""Reads a scene's video settings for a task's encode job, and mixes its sound strips down. Runs INSIDE Blender:

    blender -b -Y --factory-startup FILE.blend --python video_scene_script.py -- --frame-start S --frame-end E
        [--audio PATH]

Prints one line, MARK followed by JSON: the scene's frame rate (fps, fps_base), whether its output is a movie, its
FFmpeg output settings (format, codec, quality, audio) and how many sound strips it plays. With --audio, and when
the scene has unmuted sound strips, it mixes them down for frames S to E into a WAV file at PATH (Blender's own
mixer: volume, pan, fades and cuts as the artist set them) and says so (`audio: true`).

Standalone on purpose: imports only `bpy` and the standard library, since Blender's own Python runs it. The file's
Python never runs (-Y).
"""

import argparse
import json
import sys

import bpy

MARK = "RENDERQ_VIDEO_SCENE "


def sound_strips(scene) -> int:
    """How many unmuted sound strips the scene's sequencer plays."""
    editor = scene.sequence_editor
    if editor is None:
        return 0
    # Blender 4.4 and later call them strips; earlier ones sequences.
    strips = getattr(editor, "strips_all", None)
    if strips is None:
        strips = editor.sequences_all
    return sum(1 for strip in strips if strip.type == "SOUND" and not strip.mute)


def scene_settings(scene) -> dict:
    """The scene's frame rate and FFmpeg output settings."""
    ffmpeg = scene.render.ffmpeg
    return {
        "fps": scene.render.fps,
        "fps_base": scene.render.fps_base,
        "is_movie": bool(scene.render.is_movie_format),
        "file_format": scene.render.image_settings.file_format,
        "format": ffmpeg.format,
        "codec": ffmpeg.codec,
        "crf": ffmpeg.constant_rate_factor,
        "preset": ffmpeg.ffmpeg_preset,
        "video_bitrate": ffmpeg.video_bitrate,
        "gop": ffmpeg.gopsize,
        "audio_codec": ffmpeg.audio_codec,
        "audio_bitrate": ffmpeg.audio_bitrate,
        "audio_mixrate": ffmpeg.audio_mixrate,
        "sound_strips": sound_strips(scene),
    }


def mix_down(scene, path: str, frame_start: int, frame_end: int) -> bool:
    """Mix the scene's sound down to a WAV file for the task's frames; whether Blender wrote it."""
    scene.frame_start, scene.frame_end = frame_start, frame_end
    result = bpy.ops.sound.mixdown(filepath=path, check_existing=False, container="WAV", codec="PCM", format="S16")
    return "FINISHED" in result


def main() -> None:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="video_scene_script.py")
    parser.add_argument("--frame-start", type=int, required=True)
    parser.add_argument("--frame-end", type=int, required=True)
    parser.add_argument("--audio")
    args = parser.parse_args(argv)
    scene = bpy.context.scene
    settings = scene_settings(scene)
    settings["audio"] = bool(args.audio and settings["sound_strips"]
                             and mix_down(scene, args.audio, args.frame_start, args.frame_end))
    print(MARK + json.dumps(settings), flush=True)


if __name__ == "__main__":
    main()
