"""Cycles' compute devices inside Blender: which it sees, and enabling exactly the ones a worker was asked for.

Runs INSIDE Blender (imported by probe_script.py and frame_script.py from this folder): only `bpy` and the standard
library. `device_type` is what `renderq worker --device` names: CPU, CUDA, OPTIX, HIP, ONEAPI or METAL.
"""

import bpy

GPU_TYPES = ("CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")


def cycles_preferences():
    """The Cycles add-on's preferences, or None when this Blender has no Cycles."""
    addon = bpy.context.preferences.addons.get("cycles")
    return addon.preferences if addon is not None else None


def seen_devices() -> list:
    """Every device Cycles can use on this machine, of every type this Blender supports, each once:
    {name, type, id, use} (`use`: enabled in the preferences now). Blender does not tell a device's memory."""
    prefs = cycles_preferences()
    if prefs is None:
        return []
    prefs.refresh_devices()
    found = {(device.type, device.id): device for device in prefs.devices}
    for device_type in GPU_TYPES:
        try:
            # Each type's list holds the CPU too: keyed by type and id, every device is listed once.
            found.update({(device.type, device.id): device for device in prefs.get_devices_for_type(device_type)})
        except (TypeError, ValueError, AttributeError):
            continue  # a type this Blender does not know
    return [{"name": device.name, "type": device.type, "id": device.id, "use": bool(device.use)}
            for device in found.values()]


def compute_device_type() -> str:
    """The device type the preferences render Cycles on now: CPU, or a GPU type."""
    prefs = cycles_preferences()
    if prefs is None or prefs.compute_device_type in ("", "NONE"):
        return "CPU"
    return prefs.compute_device_type


def enable_devices(device_type: str, gpu_indexes=()) -> list:
    """Make the preferences render Cycles on exactly the asked devices, for this session only: every device of
    `device_type` (or those at `gpu_indexes` among them, in the order Blender lists them), nothing else. Returns
    the enabled devices ({name, type, id}); empty when Blender sees none of that type."""
    prefs = cycles_preferences()
    if prefs is None:
        return []
    # Never written back to the user's preferences file: these choices belong to this worker's sessions.
    bpy.context.preferences.use_preferences_save = False
    try:
        prefs.compute_device_type = "NONE" if device_type == "CPU" else device_type
    except TypeError:
        return []  # a type this Blender does not know
    if device_type == "CPU":
        prefs.refresh_devices()
        devices = list(prefs.devices)
    else:
        devices = prefs.get_devices_for_type(device_type)
    of_type = [device for device in devices if device.type == device_type]
    chosen = [of_type[i] for i in gpu_indexes if 0 <= i < len(of_type)] if gpu_indexes else of_type
    for device in prefs.devices:
        device.use = any(device.type == c.type and device.id == c.id for c in chosen)
    return [{"name": device.name, "type": device.type, "id": device.id} for device in chosen]
