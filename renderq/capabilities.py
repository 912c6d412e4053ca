"""What a worker can offer and what a task needs: Cycles devices, render engines, video encoding and tags, in one
vocabulary.

Standard library only (the add-on bundles it). The coordinator routes a frame only to a worker that has every tag
of its task, can render its engine and, when the task asks for GPU rendering, has a GPU device enabled. Engines and
the GPU are bits of one number each side (a task's `needs`, a worker's `offers`), so the claim tests them with one
comparison: `needs & offers = needs`. A worker with FFmpeg offers one more bit, ENCODE_BIT: only such a worker is
given a task's encode job (the frame row that makes its video).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "DEVICE_TYPES", "ENCODE_BIT", "GPU_DEVICE_TYPES", "MAX_TAGS", "TASK_DEVICES", "describe_devices",
    "engine_family", "engine_label", "parse_tags", "task_needs", "worker_offers",
]

# What `renderq worker --device` takes: Cycles' compute device types.
GPU_DEVICE_TYPES = ("CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")
DEVICE_TYPES = ("CPU", *GPU_DEVICE_TYPES)
# What a task may ask for: "" keeps the file's own choice (scene.cycles.device).
TASK_DEVICES = ("", "GPU", "CPU")

# Blender's engine ids by family: EEVEE is BLENDER_EEVEE_NEXT in Blender 4.2 to 4.4, BLENDER_EEVEE before and after.
_FAMILIES = {"CYCLES": "CYCLES", "BLENDER_EEVEE": "EEVEE", "BLENDER_EEVEE_NEXT": "EEVEE",
             "BLENDER_WORKBENCH": "WORKBENCH"}
_LABELS = {"CYCLES": "Cycles", "EEVEE": "EEVEE", "WORKBENCH": "Workbench"}
_ENGINE_BITS = {"CYCLES": 1, "EEVEE": 2, "WORKBENCH": 4}
ALL_ENGINES = sum(_ENGINE_BITS.values())
GPU_BIT = 8
# FFmpeg that runs: the worker encodes tasks' videos.
ENCODE_BIT = 16

MAX_TAGS = 32
_TAG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


def engine_family(engine: str) -> str | None:
    """CYCLES, EEVEE or WORKBENCH for a built-in engine's id; None for another engine (an add-on's), which the
    farm does not route by."""
    return _FAMILIES.get(engine)


def engine_label(engine: str) -> str:
    """How people name an engine: "EEVEE" for BLENDER_EEVEE_NEXT, the id itself for an add-on's engine."""
    family = engine_family(engine)
    return _LABELS[family] if family else engine


def task_needs(engine: str, device: str) -> int:
    """The bits a task needs of a worker: its engine's (none for an unknown engine) and the GPU's for device GPU."""
    family = engine_family(engine)
    return (_ENGINE_BITS[family] if family else 0) | (GPU_BIT if device == "GPU" else 0)


def worker_offers(engines: Iterable[str] | None, has_gpu: bool, can_encode: bool = False) -> int:
    """The bits a worker offers: each engine it can render (every engine when it did not say: a worker from
    before engines were probed), the GPU's when it has a GPU device enabled and ENCODE_BIT when it has FFmpeg."""
    bits = ALL_ENGINES if engines is None else 0
    for engine in engines or ():
        family = engine_family(engine)
        bits |= _ENGINE_BITS[family] if family else 0
    return bits | (GPU_BIT if has_gpu else 0) | (ENCODE_BIT if can_encode else 0)


def parse_tags(values: Iterable[str], split: bool = True) -> list[str]:
    """Tags as given on a command line or in a text field (with `split`, each value may hold several, separated by
    commas or spaces), lowercased, each once, sorted. Raises ValueError with a sentence for a tag the rule
    refuses."""
    tags: set[str] = set()
    for value in values:
        for tag in re.split(r"[,\s]+", value.strip().lower()) if split else [value.lower()]:
            if not tag:
                continue
            if not _TAG.match(tag):
                raise ValueError(f"{tag!r} is not a usable tag: 1-32 letters, digits, '-', '_' or '.', "
                                 "starting with a letter or digit")
            tags.add(tag)
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags are more than the {MAX_TAGS} a worker or task may have")
    return sorted(tags)


def describe_devices(devices: Iterable[dict]) -> str:
    """Devices ({name, type}) in one line: "NVIDIA RTX 4090 (OPTIX), AMD EPYC (CPU)"; "none" when empty."""
    text = ", ".join(f"{device.get('name', '?')} ({device.get('type', '?')})" for device in devices)
    return text or "none"
