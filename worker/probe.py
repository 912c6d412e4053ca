"""What this worker can offer, found once at its start: the Cycles devices its Blender sees (and those it was asked
to enable), and which render engines draw a frame, on a virtual display where they need one.

worker/probe_script.py runs inside Blender and renders an 8x8 frame per engine. A Blender that cannot get an
OpenGL context may abort on EEVEE or Workbench instead of failing the frame; the script's lines tell which engine it
was on, and the probe goes on with the others in a new Blender. Where EEVEE or Workbench fails and Xvfb is on PATH,
those are probed again on a virtual display; if they render there, every Blender session of this worker gets one
(`Capabilities.virtual_display`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from renderq.capabilities import GPU_DEVICE_TYPES, describe_devices, engine_label
from worker.blender_session import blender_environment
from worker.virtual_display import DisplayError, VirtualDisplay, find_xvfb

__all__ = ["Capabilities", "ProbeError", "probe"]

log = logging.getLogger("renderq.worker")

PROBE_SCRIPT = Path(__file__).with_name("probe_script.py")
# Engines that draw with OpenGL: the ones a virtual display may rescue.
_ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH")
_OPENGL_ENGINES = ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH")
_PROBE_SECONDS = 300.0


class ProbeError(Exception):
    """The worker cannot offer what it was asked to (or its Blender could not be probed); one sentence."""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the probe found."""

    devices: list[dict[str, Any]]
    # The device type Cycles renders on in this worker's sessions (CPU or a GPU type) and the devices enabled.
    compute_device_type: str
    enabled: list[dict[str, Any]]
    # Engine id -> None when it renders, else why not.
    engines: dict[str, str | None]
    virtual_display: bool = False
    # The FFmpeg that encodes tasks' videos and what it encodes (worker/encode.py); without one, why not.
    ffmpeg: str | None = None
    video_encoders: str = ""
    no_video_reason: str = "not probed"

    @property
    def usable_engines(self) -> list[str]:
        """The engines that render here."""
        return [engine for engine, error in self.engines.items() if error is None]

    @property
    def has_gpu(self) -> bool:
        """Whether Cycles renders on a GPU device here."""
        if self.enabled:
            return any(device.get("type") in GPU_DEVICE_TYPES for device in self.enabled)
        return self.compute_device_type in GPU_DEVICE_TYPES and any(
            device.get("use") and device.get("type") == self.compute_device_type for device in self.devices)

    def registration(self) -> dict[str, Any]:
        """The fields the worker registers with: its devices (each with whether it renders), engines, GPU and, when
        it has FFmpeg, what it encodes."""
        enabled = {(device.get("type"), device.get("id")) for device in self.enabled}
        devices = [{"name": device.get("name", ""), "type": device.get("type", ""), "id": device.get("id", ""),
                    "use": bool(device.get("use")) or (device.get("type"), device.get("id")) in enabled}
                   for device in self.devices]
        video = {"video_encoders": self.video_encoders} if self.video_encoders else {}
        return {"devices": devices, "engines": self.usable_engines, "gpu": self.has_gpu, **video}

    def summary(self) -> tuple[str, str, str]:
        """The worker's start lines: "devices: ...", "engines: ...", "video: ..."."""
        enabled = self.enabled or [device for device in self.devices if device.get("use")]
        devices = (f"Cycles renders on {describe_devices(enabled)}" if enabled
                   else f"Cycles renders on {self.compute_device_type} as Blender's preferences say")
        devices += f"; Blender sees {describe_devices(self.devices)}"
        parts = []
        for engine, error in self.engines.items():
            parts.append(engine_label(engine) if error is None
                         else f"not {engine_label(engine)} ({error.splitlines()[0][:160]})")
        engines = ", ".join(parts) or "none"
        if self.virtual_display:
            engines += " (on a virtual display: Xvfb)"
        video = self.video_encoders or f"none ({self.no_video_reason})"
        return f"devices: {devices}", f"engines: {engines}", f"video: {video}"


def probe(blender: str, device_type: str = "", gpus: Sequence[int] = (), *, hidden_values: Collection[str] = (),
          xvfb: str | None = None, environ: Mapping[str, str] | None = None) -> Capabilities:
    """Probe `blender` (enabling `device_type`'s devices, or those at `gpus` among them); raises ProbeError when
    it sees no device of the asked type. `xvfb`: the Xvfb to fall back on (default: found on PATH)."""
    env = blender_environment(os.environ if environ is None else environ, hidden_values)
    args = ["--device", device_type, *[part for gpu in gpus for part in ("--gpu", str(gpu))]] if device_type else []
    head, engines = _run_all(blender, args, env, ())
    enabled = head.get("enabled") or []
    if device_type and not enabled:
        raise ProbeError(_no_device_sentence(device_type, gpus, head.get("devices") or []))
    if device_type and gpus and len(enabled) < len(set(gpus)):
        raise ProbeError(_no_device_sentence(device_type, gpus, head.get("devices") or []))
    virtual = False
    failed = [engine for engine in _OPENGL_ENGINES if engines.get(engine)]
    xvfb = xvfb if xvfb is not None else find_xvfb()
    if failed and xvfb:
        log.info("%s did not render here (%s); trying again on a virtual display (Xvfb)",
                 ", ".join(engine_label(engine) for engine in failed), engines[failed[0]])
        display = VirtualDisplay(xvfb)
        try:
            _head, again = _run_all(blender, args, {**env, "DISPLAY": display.start()}, failed)
        except DisplayError as exc:
            log.warning("no virtual display: %s", exc)
            again = {}
        finally:
            display.stop()
        if again and all(again.get(engine, "") is None for engine in failed):
            engines.update(again)
            virtual = True
    return Capabilities(devices=head.get("devices") or [], compute_device_type=head.get("compute_device_type", "CPU"),
                        enabled=enabled, engines=engines, virtual_display=virtual)


def _no_device_sentence(device_type: str, gpus: Sequence[int], devices: list[dict]) -> str:
    asked = f"{device_type} device{'s' if len(gpus) > 1 else ''} {', '.join(map(str, gpus))}" if gpus \
        else f"any {device_type} device"
    return f"--device {device_type}: Blender does not see {asked} on this machine; it sees {describe_devices(devices)}"


def _run_all(blender: str, args: list[str], env: dict[str, str],
             engines: Sequence[str]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Probe until every engine has a result: a Blender that crashed on one engine is started again for the rest.
    Returns (the first line of the answer, {engine: None or why it failed})."""
    head: dict[str, Any] = {}
    results: dict[str, str | None] = {}
    while True:
        lines, crash = _run_once(blender, [*args, *[p for e in engines for p in ("--engine", e)]], env)
        if not lines:
            raise ProbeError(f"could not probe Blender at {blender}: {crash}")
        head = head or lines[0]
        started = None
        for line in lines[1:]:
            if line.get("start"):
                started = line["engine"]
            elif "error" in line:
                results[line["engine"]] = line["error"]
                started = None
        if crash is not None and started is None and not results and len(lines) == 1:
            # The script failed before any engine: nothing is known, and offering nothing would hide why.
            raise ProbeError(f"could not probe Blender at {blender}: {crash}")
        if started is None or crash is None:
            return head, results
        # Blender died while rendering `started`: that engine cannot render here; go on without it.
        results[started] = f"Blender crashed rendering it ({crash})"
        # The script skips engines this version lacks, so naming all that are left is safe.
        engines = [engine for engine in (engines or _ENGINES) if engine not in results]
        if not engines:
            return head, results


def _run_once(blender: str, args: list[str], env: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """One probing Blender: the lines it wrote, and None or how it ended badly (its last error line)."""
    with tempfile.TemporaryDirectory(prefix="renderq-probe-") as folder:
        out = os.path.join(folder, "probe.jsonl")
        command = [blender, "-b", "-Y", "-noaudio", "--python-exit-code", "1", "--python", str(PROBE_SCRIPT),
                   "--", "--out", out, *args]
        try:
            # In the scratch folder: whatever a crashing Blender leaves behind goes with it.
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, env=env, cwd=folder,
                                  timeout=_PROBE_SECONDS, check=False)
            crash = None if done.returncode == 0 else _last_error(done.stdout + done.stderr, done.returncode)
        except subprocess.TimeoutExpired:
            crash = f"no answer within {_PROBE_SECONDS:g} s"
        except OSError as exc:
            return [], str(exc)
        lines = []
        if os.path.isfile(out):
            with open(out, encoding="utf-8") as handle:
                for text in handle:
                    try:
                        lines.append(json.loads(text))
                    except ValueError:
                        break  # a line cut short by the crash
        return lines, crash


def _last_error(output: bytes, code: int) -> str:
    """The last line of Blender's output that looks like the reason it died, with its exit status."""
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    reasons = [line for line in lines if any(word in line for word in ("Error", "error", "Assertion", "failed"))]
    status = f"signal {-code}" if code < 0 else f"exit code {code}"
    return f"{status}: {reasons[-1][:200]}" if reasons else status
