"""Status page load and live-update weight on a big farm: 500 workers and 200 tasks in the database.

Fills a data dir through the store and the scheduler (no Blender: frames are claimed and reported as workers do),
starts the real coordinator on it, then measures:

- the page load: the farm page's HTML, its CSS and scripts, and the first JSON it asks for (a full snapshot), each
  load taken after the snapshot cache expired so that building the snapshot is counted;
- with Playwright and chromium installed, the same page in headless Chromium, from navigation until every row is
  drawn;
- a task page's load the same way (HTML + its first JSON, all of the task's frames);
- the bytes of one poll (the answer with its HTTP headers) when nothing changed, when one worker is switched OFF,
  and when one frame finishes.

Prints the figures and exits 1 when one is past its target (not with --quick: 50 workers, 20 tasks of 20 frames,
one load, targets not enforced).

    python benchmarks/status_page.py [--workers 500] [--tasks 200] [--frames-per-task 100] [--loads 5] [--quick]
                                     [--json-out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Results, add_arguments
from harness import Farm

from coordinator.scheduler import Policy, Scheduler, TaskFile, TaskSpec
from coordinator.store import Store

POLL_INTERVAL = 2.0
ALIVE_TIMEOUT = 3600.0  # the filled workers must stay alive while the benchmark runs, without heartbeats

TARGETS = {
    "page drawn in Chromium (s)": 1.0,
    "page load (s)": 1.0,
    "task page load (s)": 1.0,
    "idle poll (bytes)": 600,
    "one worker switched OFF (bytes)": 2048,
    "one frame finished (bytes)": 4096,
}


class Clock:
    """The fill's clock: starts in the past and moves forward as frames render."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fill(data_dir: str, workers: int, tasks: int, frames_per_task: int, seed: int = 7) -> dict:
    """Populate the data dir like a busy farm; returns what the measurements need (ids, a held lease)."""
    random.seed(seed)
    os.makedirs(data_dir, exist_ok=True)
    start = time.time() - 2 * 86400
    clock = Clock(start)
    store = Store(os.path.join(data_dir, "renderq.sqlite3"), synchronous="normal")
    scheduler = Scheduler(store, Policy(lease_seconds=ALIVE_TIMEOUT, alive_timeout=ALIVE_TIMEOUT), clock)
    worker_ids = [
        scheduler.register_worker(f"node-{n:03d}", f"rack{n // 40}-{n:03d}.farm.lan", "3.4.1", 16)["worker_id"]
        for n in range(workers)
    ]

    turn = itertools.count()

    def submit(number: int) -> int:
        spec = TaskSpec(name=f"shot_{number:03d}_lighting_v{random.randint(1, 9)}",
                        files=[TaskFile("project/shot.blend", "a" * 64, 1234)], main_file="project/shot.blend",
                        frame_start=1, frame_end=frames_per_task, submitted_by=random.choice(["anna", "ben", "chloe"]),
                        # Equal priorities while filling, so that each claim takes a frame of the task it prefers.
                        priority=0)
        return scheduler.submit_task(spec)["task_id"]

    def fail(task_id: int, index: int, worker_id: int, lease: dict) -> None:
        """Fail the frame on as many workers as it takes to mark it failed (it is the lowest queued frame)."""
        for attempt in range(scheduler.policy.frame_fail_workers):
            scheduler.report(worker_id, task_id, lease["frame"], lease["lease_id"], "failed",
                             error="Blender quit with a segmentation fault", log_tail="Segmentation fault")
            if attempt + 1 == scheduler.policy.frame_fail_workers:
                return
            worker_id = worker_ids[(index + attempt + 1) % len(worker_ids)]
            lease, _ = scheduler.claim(worker_id, prefer_task_id=task_id)
            scheduler.report(worker_id, task_id, lease["frame"], lease["lease_id"], "rendering")

    def render(task_id: int, count: int, finish: bool = True, fail_every: int = 0) -> list[tuple[int, dict]]:
        """Claim `count` frames of the task with successive workers; finish them (or leave them rendering)."""
        held = []
        for index in range(count):
            worker_id = worker_ids[next(turn) % len(worker_ids)]
            clock.now += 0.05
            lease, _ = scheduler.claim(worker_id, prefer_task_id=task_id)
            if lease is None or lease["task_id"] != task_id:
                raise SystemExit(f"the fill could not claim a frame of task {task_id}")
            scheduler.report(worker_id, task_id, lease["frame"], lease["lease_id"], "rendering", started_at=clock.now)
            if not finish:
                held.append((worker_id, lease))
                continue
            seconds = random.uniform(20, 90)
            clock.now += seconds / 8
            if fail_every and index % fail_every == fail_every - 1:
                fail(task_id, index, worker_id, lease)
                continue
            scheduler.record_output(worker_id, task_id, lease["frame"], lease["lease_id"],
                                    f"f_{lease['frame']:04d}.png", "b" * 64, 250_000)
            scheduler.report(worker_id, task_id, lease["frame"], lease["lease_id"], "done",
                             started_at=clock.now - seconds, ended_at=clock.now, render_seconds=seconds)
        return held

    # Most tasks have ended (done, some failed, a few canceled); the newest are running, the last few queued.
    running = max(1, tasks // 8)
    queued = max(1, tasks // 20)
    ended = tasks - running - queued
    for number in range(ended):
        task_id = submit(number)
        if number % 15 == 7:
            render(task_id, frames_per_task // 3)
            scheduler.cancel_task(task_id)
        else:
            render(task_id, frames_per_task, fail_every=40 if number % 10 == 3 else 0)
    held: list[tuple[int, dict]] = []
    running_ids = [submit(ended + n) for n in range(running)]
    busy_per_task = max(1, (workers * 4 // 5) // running)
    for task_id in running_ids:
        render(task_id, frames_per_task // 2)
    # Last, so that the fill's clock does not run past these leases.
    for task_id in running_ids:
        held += render(task_id, min(busy_per_task, frames_per_task // 2), finish=False)
    for n in range(queued):
        submit(ended + running + n)
    for task in store.list_tasks(limit=tasks):
        store.set_task_priority(task["task_id"], random.choice([0, 0, 0, 5, 10]))
    # Everyone is seen now, so all workers count as alive on the real coordinator.
    clock.now = time.time()
    for worker_id in worker_ids:
        scheduler.heartbeat(worker_id, [])
    store.close()
    return {"worker_ids": worker_ids, "held": held, "task_id": running_ids[0], "tasks": tasks}


def fetch(url: str, token: str | None = None, body: dict | None = None) -> tuple[float, bytes]:
    """(seconds, body bytes) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = response.read()
    return time.perf_counter() - started, payload


def page_load(farm: Farm, page: str, feed: str) -> tuple[float, int]:
    """Seconds and bytes to load a page as a browser would: HTML, stylesheet, scripts, then its first JSON."""
    seconds = 0.0
    size = 0
    for path in (page, "/static/status.css", "/static/common.js",
                 "/static/task.js" if page.startswith("/tasks/") else "/static/farm.js", feed):
        elapsed, payload = fetch(farm.url + path, farm.api.token)
        seconds += elapsed
        size += len(payload)
    return seconds, size


def poll_bytes(farm: Farm, version: int, wait: float = POLL_INTERVAL + 0.1) -> tuple[int, int]:
    """Wait for the next snapshot, then poll for the changes since `version`: (bytes of the answer with its
    headers, new version)."""
    time.sleep(wait)
    request = urllib.request.Request(f"{farm.url}/status/updates?since={version}")
    request.add_header("Authorization", f"Bearer {farm.api.token}")
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = response.read()
        headers = sum(len(name) + len(value) + 4 for name, value in response.getheaders())
    return len(payload) + headers + len("HTTP/1.1 200 OK\r\n\r\n"), json.loads(payload)["version"]


def browser_loads(farm: Farm, loads: int, workers: int, tasks: int) -> list[float] | None:
    """Seconds from navigation until every row is drawn, in headless Chromium; None without Playwright."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    drawn = ("async ([workers, tasks]) => { while (document.querySelectorAll('#worker-rows tr').length < workers"
             " || document.querySelectorAll('#task-rows tr').length < tasks)"
             " await new Promise(r => requestAnimationFrame(r));"
             " await new Promise(r => requestAnimationFrame(() => setTimeout(r)));"  # after that frame is painted
             " return performance.now() / 1000; }")
    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1440, "height": 900},
                                      extra_http_headers={"Authorization": f"Bearer {farm.api.token}"})
        page = context.new_page()
        for _ in range(loads):
            time.sleep(POLL_INTERVAL + 0.1)
            page.goto(farm.url + "/", wait_until="commit")
            times.append(page.evaluate(drawn, [workers, tasks]))
        browser.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=500, help="workers in the database (default 500)")
    parser.add_argument("--tasks", type=int, default=200, help="tasks in the database (default 200)")
    parser.add_argument("--frames-per-task", type=int, default=100, help="frames of each task (default 100)")
    parser.add_argument("--loads", type=int, default=5, help="page loads to time (default 5)")
    add_arguments(parser, "50 workers, 20 tasks of 20 frames, one load")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.tasks, args.frames_per_task, args.loads = 50, 20, 20, 1

    with tempfile.TemporaryDirectory(prefix="renderq-status-bench-") as root:
        farm = Farm(root)
        started = time.perf_counter()
        filled = fill(farm.data_dir, args.workers, args.tasks, args.frames_per_task)
        print(f"filled {args.workers} workers, {args.tasks} tasks, {args.tasks * args.frames_per_task} frames "
              f"in {time.perf_counter() - started:.1f} s")
        farm.start_coordinator("--poll-interval", str(POLL_INTERVAL), "--alive-timeout", str(ALIVE_TIMEOUT),
                               "--heartbeat", "5")
        try:
            figures = measure(farm, filled, args.loads)
        finally:
            farm.stop()

    results = Results("status_page", quick=args.quick)
    results.add("workers in the database", args.workers, "",
                note=f"{args.tasks} tasks, {args.tasks * args.frames_per_task} frames")
    for name, value in figures.items():
        label, _, unit = name.rpartition(" (")  # "page load (s)" -> "page load", "s"
        if any(figure.figure == label for figure in results.figures):
            label = name  # "page load (bytes)" after "page load (s)"
        results.add(label, round(value, 3) if isinstance(value, float) else value, unit.rstrip(")"),
                    TARGETS.get(name))
    return results.finish(args.json_out)


def measure(farm: Farm, filled: dict, loads: int) -> dict[str, float | int]:
    figures: dict[str, float | int] = {}
    farm_loads, task_loads = [], []
    page_bytes = task_bytes = 0
    for _ in range(loads):
        time.sleep(POLL_INTERVAL + 0.1)  # the snapshot cache has expired: this load pays for a fresh build
        seconds, page_bytes = page_load(farm, "/", "/status/updates")
        farm_loads.append(seconds)
        seconds, task_bytes = page_load(farm, f"/tasks/{filled['task_id']}",
                                        f"/status/task_updates?task_id={filled['task_id']}")
        task_loads.append(seconds)
    in_browser = browser_loads(farm, loads, len(filled["worker_ids"]), filled["tasks"])
    if in_browser is not None:
        figures["page drawn in Chromium (s)"] = max(in_browser)
        figures["page drawn in Chromium, median (s)"] = statistics.median(in_browser)
    else:
        print("Playwright or chromium is missing: the load in a browser is not measured "
              "(source scripts/setup-browser.sh)")
    figures["page load (s)"] = max(farm_loads)
    figures["page load, median (s)"] = statistics.median(farm_loads)
    figures["page load (bytes)"] = page_bytes
    figures["task page load (s)"] = max(task_loads)
    figures["task page load (bytes)"] = task_bytes
    elapsed, payload = fetch(farm.url + "/tasks", farm.api.token)
    figures["GET /tasks, 200 summaries (s)"] = elapsed
    elapsed, payload = fetch(farm.url + "/list_workers", farm.api.token)
    figures["GET /list_workers (s)"] = elapsed

    _, payload = fetch(farm.url + "/status/updates", farm.api.token)
    version = json.loads(payload)["version"]
    idle = []
    for _ in range(3):
        size, version = poll_bytes(farm, version)
        idle.append(size)
    figures["idle poll (bytes)"] = max(idle)

    worker_id = filled["worker_ids"][-1]
    fetch(farm.url + "/set_worker_enabled", farm.api.token, {"worker_id": worker_id, "enabled": False})
    size, version = poll_bytes(farm, version, wait=0.0)
    figures["one worker switched OFF (bytes)"] = size

    holder, lease = filled["held"][0]
    api = farm.api
    status, _ = api.call("POST", f"/upload_frame?worker_id={holder}&task_id={lease['task_id']}&frame={lease['frame']}"
                         f"&lease_id={lease['lease_id']}&filename=f_{lease['frame']:04d}.png", raw=b"\x89PNG frame")
    assert status == 200, (status, _)
    api.post("/update_task", {"worker_id": holder, "task_id": lease["task_id"], "frame": lease["frame"],
                              "lease_id": lease["lease_id"], "status": "done", "render_seconds": 42.0})
    size, version = poll_bytes(farm, version)
    figures["one frame finished (bytes)"] = size
    return figures


if __name__ == "__main__":
    sys.exit(main())
