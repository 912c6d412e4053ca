"""In Blender (3.4 background or the bpy 5 module): time the add-on's network operators against a coordinator that
answers slowly, and record which threads open connections.

Run as `blender -b --factory-startup --python responsive.py -- --zip Z --url URL --blend PATH` (or the bpy Python
with the same arguments after `--`). Reports, per operator, how long the call took and whether jobs were still
running when it returned; then, after draining, what the add-on made of the answers.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy

import common

OPERATORS = ("submit", "test_connection", "refresh_workers")
connects: list[dict[str, Any]] = []


def watch_connects(port: int) -> None:
    """Record the thread of every connection to `port`: the add-on must never open one on the main thread."""
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and len(address) >= 2 and address[1] == port:
            thread = threading.current_thread()
            connects.append({"thread": thread.name, "main": thread is threading.main_thread(),
                             "at": time.monotonic()})
        return original(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]  # on purpose: it records who connects


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--blend", required=True)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = common.parse_args(parser)

    common.allow_online_access()
    common.install_addon(args.zip)
    common.make_tiny_scene(args.blend)
    common.addon_preferences().coordinator_url = args.url
    watch_connects(int(args.url.rsplit(":", 1)[1].split("/")[0]))

    calls = []
    for name in OPERATORS:
        operator = getattr(bpy.ops.renderq, name)
        started = time.monotonic()
        error = None
        try:
            result = sorted(operator())
        except RuntimeError as refused:  # an operator that reports an ERROR raises when called from a script
            result, error = [], str(refused)
        seconds = time.monotonic() - started
        # drain(0) applies nothing that is not finished and returns at once: False means jobs are still running.
        calls.append({"operator": name, "seconds": seconds, "result": result, "error": error,
                      "jobs_running": not common.drain(0.0), "returned_at": time.monotonic()})

    running = common.addon_module("jobs").running_keys()
    drain_started = time.monotonic()
    finished = common.drain(args.drain_timeout)
    session = common.addon_module("state").SESSION
    common.report(
        calls=calls, running_keys=running, finished=finished,
        drain_seconds=time.monotonic() - drain_started,
        connects=connects, last_error=session.last_error, last_task_id=session.last_task_id,
        connection={"running": session.connection.running, "ok": session.connection.ok,
                    "text": session.connection.text},
        workers=[worker.get("name") for worker in session.workers], workers_error=session.workers_error,
        blender=bpy.app.version_string,
    )


common.run(main)
