"""A task's encode job on the worker: the task's video, made with FFmpeg from its rendered frames.

The claim of an encode job (a Lease of kind "encode") names the video asked for; GET /video_frames lists the
rendered frames it is made of (frame, output, sha256). The worker fetches those frames as it fetches a task's
files, asks Blender for the scene's frame rate, FFmpeg output settings and sound (worker/video_scene_script.py, on
the task's own tree, with -Y), runs ffmpeg, and hands the video to the loop as the job's file: it is delivered and
fenced like a frame.

`probe_ffmpeg` tells what this machine's FFmpeg can encode; a worker without one is given no encode job.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from renderq.model import FrameResult, Lease

__all__ = ["EncodeFailed", "EncodeJob", "VideoEncoders", "encode_video", "ffmpeg_command", "probe_ffmpeg",
           "run_tool"]

log = logging.getLogger("renderq.worker")

SCENE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "video_scene_script.py")
SCENE_MARK = "RENDERQ_VIDEO_SCENE "
# How long asking Blender for the scene (and mixing its sound down) may take, and how many of FFmpeg's last lines
# make a failed encode's error.
SCENE_TIMEOUT_SECONDS = 600.0
ERROR_LINES = 8
# The encoders worth naming when the worker says what it offers (FFmpeg has hundreds).
NOTABLE_ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libaom-av1", "prores_ks", "mpeg4", "ffv1", "dnxhd", "aac",
                    "libopus")

# Blender's FFmpeg containers and codecs (scene.render.ffmpeg.format / codec) as FFmpeg's file extensions and
# encoders.
SCENE_CONTAINERS = {"MPEG4": "mp4", "QUICKTIME": "mov", "WEBM": "webm", "MKV": "mkv", "OGG": "ogv", "AVI": "avi",
                    "FLASH": "flv", "MPEG1": "mpg", "MPEG2": "mpg", "DV": "dv"}
SCENE_CODECS = {"H264": "libx264", "H265": "libx265", "MPEG4": "mpeg4", "WEBM": "libvpx-vp9", "AV1": "libaom-av1",
                "PRORES": "prores_ks", "THEORA": "libtheora", "FFV1": "ffv1", "HUFFYUV": "huffyuv",
                "DNXHD": "dnxhd", "PNG": "png", "QTRLE": "qtrle", "FLASH": "flv", "MPEG1": "mpeg1video",
                "MPEG2": "mpeg2video", "DV": "dvvideo"}
SCENE_AUDIO_CODECS = {"AAC": "aac", "AC3": "ac3", "FLAC": "flac", "MP2": "mp2", "MP3": "libmp3lame",
                      "OPUS": "libopus", "PCM": "pcm_s16le", "VORBIS": "libvorbis"}
# Blender's "output quality" as the constant rate factor it gives FFmpeg (x264's scale).
SCENE_CRF = {"LOSSLESS": 0, "PERC_LOSSLESS": 17, "HIGH": 20, "MEDIUM": 23, "LOW": 26, "VERYLOW": 29, "LOWEST": 32}
SCENE_PRESETS = {"BEST": "slower", "GOOD": "medium", "REALTIME": "ultrafast"}
# What `--video mp4|mov|webm` encodes with: (video encoder, audio encoder).
CONTAINER_DEFAULTS = {"mp4": ("libx264", "aac"), "mov": ("prores_ks", "aac"), "webm": ("libvpx-vp9", "libopus"),
                      "mkv": ("libx264", "aac")}
# Encoders whose usual pixel format halves the chroma: the picture's sides must be even.
_CHROMA_HALVED = {"libx264", "libx265", "libvpx-vp9", "libaom-av1", "mpeg4", "mpeg1video", "mpeg2video", "libtheora"}


class EncodeFailed(Exception):
    """The video could not be made; the message is one sentence, then (after a newline) the tool's last lines."""


@dataclass(frozen=True)
class VideoEncoders:
    """What this machine's FFmpeg offers: its version and the notable encoders it has."""

    path: str
    version: str
    encoders: tuple[str, ...]

    def describe(self) -> str:
        """E.g. "ffmpeg 5.1 (libx264, libvpx-vp9, prores_ks, aac)"."""
        return f"ffmpeg {self.version} ({', '.join(self.encoders) or 'no known encoder'})"


def probe_ffmpeg(ffmpeg: str | None = None) -> VideoEncoders | None:
    """The FFmpeg on PATH (or at `ffmpeg`) and what it encodes; None when there is none that runs."""
    path = shutil.which(ffmpeg or "ffmpeg")
    if path is None:
        return None
    try:
        version = subprocess.run([path, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL, check=False, errors="replace")
        listed = subprocess.run([path, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL, check=False, errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if version.returncode != 0 or listed.returncode != 0:
        return None
    found = re.search(r"ffmpeg version n?(\d+)\.(\d+)", version.stdout)
    number = f"{found.group(1)}.{found.group(2)}" if found else "unknown"
    names = {line.split()[1] for line in listed.stdout.splitlines() if len(line.split()) > 1
             and re.fullmatch(r"[VAS][A-Z.]{5}", line.split()[0])}
    return VideoEncoders(path, number, tuple(name for name in NOTABLE_ENCODERS if name in names))


def frame_rate(scene: dict[str, Any]) -> Fraction:
    """The scene's frame rate (fps / fps_base) as an exact fraction: 30 / 1.001 is 30000/1001."""
    fps = Fraction(int(scene.get("fps") or 24))
    base = Fraction(float(scene.get("fps_base") or 1.0)).limit_denominator(100_000)
    return fps / base if base > 0 else fps


def ffmpeg_command(ffmpeg: str, container: str, scene: dict[str, Any], pattern: str, audio: str | None,
                   output: str) -> list[str]:
    """The ffmpeg command that encodes the numbered frames `pattern` (and `audio`, a WAV, if any) into `output`.

    container "scene" takes the scene's own container, codec, quality and audio codec; another takes the
    container's usual codec. The frame rate is always the scene's.
    """
    rate = frame_rate(scene)
    rate_text = f"{rate.numerator}/{rate.denominator}"
    from_scene = container == "scene"
    extension = output.rsplit(".", 1)[-1]
    default_video, default_audio = CONTAINER_DEFAULTS.get(extension, ("libx264", "aac"))
    codec = SCENE_CODECS.get(scene.get("codec", ""), default_video) if from_scene else default_video
    command = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-framerate", rate_text,
               "-start_number", "1", "-i", pattern]
    if audio:
        command += ["-i", audio]
    command += ["-map", "0:v:0"] + (["-map", "1:a:0"] if audio else [])
    command += ["-c:v", codec] + _quality(codec, scene if from_scene else {})
    if codec in _CHROMA_HALVED:
        command += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p"]
    elif codec == "prores_ks":
        command += ["-profile:v", "3", "-pix_fmt", "yuv422p10le"]
    if from_scene and int(scene.get("gop") or 0) > 0:
        command += ["-g", str(int(scene["gop"]))]
    if audio:
        audio_codec = SCENE_AUDIO_CODECS.get(scene.get("audio_codec", ""), default_audio) if from_scene \
            else default_audio
        command += ["-c:a", audio_codec]
        if audio_codec not in ("pcm_s16le", "flac") and int(scene.get("audio_bitrate") or 0) > 0 and from_scene:
            command += ["-b:a", f"{int(scene['audio_bitrate'])}k"]
    if extension in ("mp4", "mov"):
        command += ["-movflags", "+faststart"]
    command += ["-r", rate_text, output]
    return command


def _quality(codec: str, scene: dict[str, Any]) -> list[str]:
    """The encoder's quality settings: the scene's constant rate factor or bitrate, else a high default."""
    crf = SCENE_CRF.get(scene.get("crf", ""))
    if scene and scene.get("crf") == "NONE" and int(scene.get("video_bitrate") or 0) > 0:
        return ["-b:v", f"{int(scene['video_bitrate'])}k"]
    if codec in ("libx264", "libx265"):
        preset = SCENE_PRESETS.get(scene.get("preset", ""), "medium")
        return ["-crf", str(18 if crf is None else crf), "-preset", preset]
    if codec == "libvpx-vp9":
        # VP9's scale runs to 63 where x264's runs to 51.
        return ["-crf", str(31 if crf is None else round(crf * 63 / 51)), "-b:v", "0"]
    if codec == "libaom-av1":
        return ["-crf", str(30 if crf is None else round(crf * 63 / 51)), "-b:v", "0"]
    if codec in ("mpeg4", "mpeg1video", "mpeg2video"):
        return ["-q:v", "2"]
    return []


@dataclass
class EncodeJob:
    """What one encode needs: the lease, where to work, and the worker's ways to fetch files and run Blender."""

    lease: Lease
    ffmpeg: str
    blender: str
    work_dir: str
    output_dir: str
    download: Callable[[str, str], None]
    list_frames: Callable[[], list[dict[str, Any]]]
    blend_path: Callable[[], str]
    should_stop: Callable[[], bool]
    on_log_line: Callable[[str], None]


def encode_video(job: EncodeJob) -> FrameResult:
    """Make the lease's video; a FrameResult whose output is the video, or a failure with FFmpeg's last lines."""
    lease = job.lease
    started = time.time()
    begun = time.monotonic()
    try:
        output = _encode(job)
    except EncodeFailed as exc:
        error, _, tail = str(exc).partition("\n")
        return FrameResult(frame=lease.frame, ok=False, error=error, log_tail=tail, aborted=job.should_stop())
    finally:
        shutil.rmtree(os.path.join(job.work_dir, f"encode-{lease.task_id}"), ignore_errors=True)
    return FrameResult(frame=lease.frame, ok=True, output_path=output, started_at=started, ended_at=time.time(),
                       render_seconds=time.monotonic() - begun)


def _encode(job: EncodeJob) -> str:
    video = job.lease.video or {}
    inputs = [dict(item) for item in job.list_frames()]
    if not inputs:
        raise EncodeFailed("the task has no rendered frames to make a video of")
    folder = os.path.join(job.work_dir, f"encode-{job.lease.task_id}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "frames"))
    extension = _frame_extension(inputs)
    for number, item in enumerate(inputs, start=1):
        if job.should_stop():
            raise EncodeFailed("the encode was stopped")
        job.download(str(item["sha256"]), os.path.join(folder, "frames", f"{number:06d}.{extension}"))
    job.on_log_line(f"video: fetched {len(inputs)} frames")
    audio = os.path.join(folder, "sound.wav")
    scene = _read_scene(job, audio, int(inputs[0]["frame"]), int(inputs[-1]["frame"]))
    container = str(video.get("container") or "mp4")
    if container == "scene":
        extension_out = SCENE_CONTAINERS.get(str(scene.get("format")), "mp4") if scene.get("is_movie") else "mp4"
    else:
        extension_out = container
    output = os.path.join(job.output_dir, f"{_video_name(job.lease)}.{extension_out}")
    command = ffmpeg_command(job.ffmpeg, container, scene, os.path.join(folder, "frames", f"%06d.{extension}"),
                             audio if scene.get("audio") else None, output)
    job.on_log_line("video: " + " ".join(command[1:]))
    run_tool(command, job.should_stop, job.lease.frame_timeout, "FFmpeg")
    if not os.path.isfile(output):
        raise EncodeFailed("FFmpeg ended without writing the video")
    return output


def _frame_extension(inputs: list[dict[str, Any]]) -> str:
    """The rendered frames' file extension (FFmpeg reads a numbered sequence of one kind)."""
    name = str(inputs[0].get("output") or "")
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else "png"
    return extension if re.fullmatch(r"[a-z0-9]{1,5}", extension) else "png"


def _video_name(lease: Lease) -> str:
    """The video's file name (without extension): the task's name, in characters every file system takes."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", lease.task_name).strip("._")[:100]
    return name or f"task-{lease.task_id}"


def _read_scene(job: EncodeJob, audio: str, frame_start: int, frame_end: int) -> dict[str, Any]:
    """The scene's frame rate and FFmpeg settings, its sound mixed down to `audio` when it has sound strips."""
    blend = job.blend_path()
    command = [job.blender, "-b", "-Y", "--factory-startup", blend, "--python", SCENE_SCRIPT, "--",
               "--frame-start", str(frame_start), "--frame-end", str(frame_end), "--audio", audio]
    output = run_tool(command, job.should_stop, SCENE_TIMEOUT_SECONDS, "Blender")
    for line in output.splitlines():
        if line.startswith(SCENE_MARK):
            scene = json.loads(line[len(SCENE_MARK):])
            if isinstance(scene, dict):
                job.on_log_line(f"video: scene at {scene.get('fps')}/{scene.get('fps_base')} fps, "
                                f"{scene.get('sound_strips', 0)} sound strips")
                return scene
    raise EncodeFailed("Blender did not tell the scene's video settings\n" + _last_lines(output))


def run_tool(command: list[str], should_stop: Callable[[], bool], timeout: float | None, tool: str) -> str:
    """Run a tool to its end and return its output; EncodeFailed (with its last lines) when it fails, is stopped
    (the lease was lost, the worker stops) or runs past `timeout` seconds."""
    # The worker's token and settings stay out of the tool's environment.
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENDERQ_")}
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=env) as process:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                raw, _ = process.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if should_stop() or (deadline is not None and time.monotonic() > deadline):
                    process.kill()
                    process.communicate()
                    why = "was stopped" if should_stop() else f"ran longer than {timeout:g} s"
                    raise EncodeFailed(f"{tool} {why}") from None
    text = raw.decode("utf-8", "replace")
    if process.returncode != 0:
        raise EncodeFailed(f"{tool} failed (exit code {process.returncode}): "
                           f"{_last_lines(text, 1) or 'no message'}\n{_last_lines(text)}")
    return text


def _last_lines(text: str, count: int = ERROR_LINES) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-count:])
