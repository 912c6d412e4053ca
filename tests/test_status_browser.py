"""The status page in a real headless Chromium, driven by Playwright, against a live coordinator.

The farm tests run real workers rendering a real (small) scene. scripts/setup-browser.sh installs the browser
(the distribution's chromium) and Playwright; without them these tests are skipped, saying which is missing.
Playwright never downloads a browser here: it drives the system's Chromium.

Set RENDERQ_SCREENSHOTS=DIR to save screenshots of the farm page and a task page into DIR (the README's pictures
come from `RENDERQ_SCREENSHOTS=docs pytest tests/test_status_browser.py -k live`).
"""

from __future__ import annotations

import os
import shutil

import pytest

from harness import Farm, find_blender_or_none, wait_for

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
BLENDER = find_blender_or_none()
FAST = ("--heartbeat", "1", "--alive-timeout", "4")
BLEND = b"BLENDER-v304REND" + b"\0" * 64
SCREENSHOTS = os.environ.get("RENDERQ_SCREENSHOTS")

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None,
                       reason="Playwright is not installed (source scripts/setup-browser.sh to install it)"),
    pytest.mark.skipif(CHROMIUM is None,
                       reason="Chromium is not installed (source scripts/setup-browser.sh to install it)"),
]
needs_blender = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """A browser tab on the farm, recording the dialogs and script errors it saw."""

    def __init__(self, browser, farm: Farm, width: int = 1440, height: int = 900) -> None:
        self.farm = farm
        # The page's Content-Security-Policy would block Playwright's waiting helpers. Without it, the escaping
        # tests also show that no text can turn into markup: nothing else would stop an injected script.
        self.context = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.dialogs: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog) -> None:
        self.dialogs.append((dialog.type, dialog.message))
        if dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()

    def log_in(self) -> None:
        self.page.goto(self.farm.url + "/")
        assert "/login" in self.page.url  # reading needs the login by default
        self.page.fill("#token", self.farm.api.token)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.farm.url + "/")

    def open(self, path: str) -> None:
        self.page.goto(self.farm.url + path)
        # A marker that survives only as long as the page is not reloaded.
        self.page.evaluate("window.__sameDocument = true")

    def not_reloaded(self) -> bool:
        return self.page.evaluate("window.__sameDocument === true")

    def wait(self, script: str, arg=None, timeout: float = 30) -> object:
        return self.page.wait_for_function(script, arg=arg, timeout=timeout * 1000).json_value()

    def close(self) -> None:
        self.context.close()


def task_progress(page: Page, task_id: int) -> float:
    value = page.page.get_attribute(f'tr[data-task-id="{task_id}"] [role=progressbar]', "aria-valuenow")
    return float(value or 0)


def shoot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        page.page.screenshot(path=os.path.join(SCREENSHOTS, name), full_page=True)


@needs_blender
def test_live_pages_follow_a_real_render(farm, browser, scenes):
    # Two workers: frame 3 is marked failed once it has failed on both (the default asks for three workers).
    farm.start_coordinator(*FAST, "--frame-fail-workers", "2")
    # Tags, so that the README's picture of the farm shows them beside the devices and engines.
    farm.start_worker("node-01", "--tag", "lighting")
    farm.start_worker("node-02", "--tag", "fx")
    failing = farm.api.submit(scenes("fail3", frames=4, fail_frames=[3]), 1, 4, name="fx_smoke_v2",
                              submitted_by="anna")
    farm.api.wait_task_ended(failing, 300)
    page = Page(browser, farm, width=1680, height=1050)
    try:
        page.log_in()
        page.open("/")
        # Both workers are shown alive and ON.
        page.wait("document.querySelectorAll('#worker-rows .state-alive').length === 2")
        assert page.page.get_attribute('[aria-label="Worker node-01"]', "aria-checked") == "true"

        task_id = farm.api.submit(scenes("basic", frames=24), 1, 24, name="shot_010_lighting",
                                  submitted_by="ben", priority=5, render_engine="CYCLES")
        row = f'tr[data-task-id="{task_id}"]'
        page.page.wait_for_selector(row)
        seen = set()
        wait_for(lambda: seen.add(task_progress(page, task_id)) or len(seen - {0.0}) >= 2, 240,
                 "the task's progress bar to advance twice on the farm page")
        assert page.not_reloaded()
        assert page.page.inner_text(f"{row} .pill") == "running"
        page.wait("[...document.querySelectorAll('#worker-rows td')].some(td => td.textContent.includes('frame'))")
        shoot(page, "status-farm.png")

        page.page.click(f"{row} a")
        page.page.wait_for_url(f"**/tasks/{task_id}")
        page.page.evaluate("window.__sameDocument = true")
        page.wait("document.querySelectorAll('#frame-grid .frame').length === 24")
        done_before = page.page.locator("#frame-grid .f-done").count()
        page.wait("n => document.querySelectorAll('#frame-grid .f-done').length > n + 1", done_before, timeout=120)
        # The log follows, the chart gets a bar per finished frame, and the thumbnails are real images.
        log_size = len(page.page.inner_text("#log"))
        page.wait("n => document.getElementById('log').textContent.length > n", log_size, timeout=60)
        assert "[node-0" in page.page.inner_text("#log")
        page.wait("document.querySelectorAll('#chart rect').length >= 2")
        page.wait("[...document.querySelectorAll('#thumbs img')].some(img => img.complete && img.naturalWidth > 0)")
        page.wait("document.getElementById('latest-image').naturalWidth === 320")
        page.wait("[...document.querySelectorAll('#thumbs img')].slice(0, 4)"
                  ".every(img => img.complete && img.naturalWidth > 0)")
        # Pointing at a done frame says who rendered it, how often it was tried and when.
        page.page.click("#frame-grid .f-done")
        detail = page.page.inner_text("#frame-detail")
        assert "node-0" in detail and "Attempts" in detail and "Render time" in detail
        assert page.not_reloaded()
        shoot(page, "status-task.png")

        farm.api.wait_task_ended(task_id, 300)
        page.wait("document.getElementById('task-status').textContent === 'done'", timeout=15)
        page.wait("document.querySelectorAll('#frame-grid .f-done').length === 24", timeout=15)
        assert page.dialogs == [] and page.errors == []
    finally:
        page.close()


@needs_blender
def test_switch_off_and_cancel_from_the_page(farm, browser, scenes):
    farm.start_coordinator(*FAST)
    farm.start_worker("a")
    farm.start_worker("b")
    task_id = farm.api.submit(scenes("basic", frames=24), 1, 24, name="long")
    page = Page(browser, farm)
    try:
        page.log_in()
        page.open("/")
        wait_for(lambda: any(f["worker"] == "b" and f["status"] == "done" for f in farm.api.task(task_id)["frames"]),
                 180, "worker b to finish a frame")
        page.page.click('[aria-label="Worker b"]')
        page.wait("document.querySelector('[aria-label=\"Worker b\"]').getAttribute('aria-checked') === 'false'")
        switched_off_at = farm.api.get("/health")["time"]
        assert farm.api.workers()["b"]["enabled"] is False
        done = farm.api.task(task_id)["progress"]["done"]
        wait_for(lambda: farm.api.task(task_id)["progress"]["done"] >= done + 3, 120, "three more frames")
        task = farm.api.task(task_id)
        assert [f["frame"] for f in task["frames"] if f["worker"] == "b" and (f["started_at"] or 0) > switched_off_at
                and f["status"] != "queued"] == []

        page.open(f"/tasks/{task_id}")
        page.page.wait_for_selector("#frame-grid .frame")
        page.page.click("#action-cancel")
        page.wait("document.getElementById('task-status').textContent === 'canceled'", timeout=15)
        assert ("confirm", "Cancel the frames of this task that are not rendered yet? Rendered frames stay.") \
            in page.dialogs
        assert farm.api.task(task_id)["status"] == "canceled"
        assert page.page.is_disabled("#action-cancel")
        assert page.errors == []
    finally:
        page.close()


def seed_task(farm: Farm, name: str, priority: int = 0) -> int:
    status, blend = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    assert status == 200
    return farm.api.post("/submit_task", {"name": name, "blend_sha256": blend["sha256"],
                                          "blend_filename": "shot.blend", "frame_start": 1, "frame_end": 4,
                                          "priority": priority})["task_id"]


def test_actions_without_the_admin_token_are_refused(farm, browser):
    farm.start_coordinator("--open-status")
    task_id = seed_task(farm, "protected")
    farm.api.post("/register_worker", {"name": "w1", "host": "h", "blender_version": "3.4.1", "cpu_count": 2})
    page = Page(browser, farm)
    try:
        page.open("/")  # open status: readable without logging in
        page.page.wait_for_selector(f'tr[data-task-id="{task_id}"]')
        assert "Read-only view" in page.page.inner_text("body")
        assert page.page.is_disabled('[aria-label="Worker w1"]')
        assert page.page.locator(".priority-input").count() == 0

        page.open(f"/tasks/{task_id}")
        page.page.wait_for_selector("#frame-grid .frame")
        for button in ("#action-pause", "#action-cancel", "#action-retry", "#task-priority"):
            assert page.page.is_disabled(button)
        # Enabled by hand (as in the browser's developer tools), the action is still refused by the coordinator.
        page.page.evaluate("document.getElementById('action-pause').disabled = false")
        page.page.click("#action-pause")
        page.page.wait_for_selector("#toast.error")
        assert "admin token" in page.page.inner_text("#toast")
        answers = page.page.evaluate("""async (taskId) => {
            const calls = [["/cancel_task", {task_id: taskId}], ["/pause_task", {task_id: taskId}],
                           ["/set_task_priority", {task_id: taskId, priority: 50}],
                           ["/set_worker_enabled", {name: "w1", enabled: false}]];
            const statuses = [];
            for (const [path, body] of calls) {
                const response = await fetch(path, {method: "POST", body: JSON.stringify(body),
                                                    headers: {"Content-Type": "application/json"}});
                statuses.push([response.status, (await response.json()).error]);
            }
            return statuses;
        }""", task_id)
        assert all(status == 401 and "admin token" in error for status, error in answers), answers
        task = farm.api.task(task_id)
        assert (task["status"], task["priority"]) == ("queued", 0)
        assert farm.api.workers()["w1"]["enabled"] is True
    finally:
        page.close()


def test_another_site_cannot_use_the_admin_login(farm, browser):
    farm.start_coordinator()
    task_id = seed_task(farm, "target")
    page = Page(browser, farm)
    try:
        page.log_in()
        # A page on another site makes the logged-in browser post a JSON-looking form to the coordinator.
        attacker = "http://attacker.test/"
        html = (f'<form id="f" method="post" action="{farm.url}/cancel_task" enctype="text/plain">'
                f'<input name=\'{{"task_id": {task_id}, "x": "\' value=\'"}}\'></form>'
                f'<script>document.getElementById("f").submit()</script>')
        page.page.route(attacker, lambda route: route.fulfill(status=200, content_type="text/html", body=html))
        with page.page.expect_navigation():
            page.page.goto(attacker)
        assert page.page.url.startswith(farm.url)
        assert "admin token" in page.page.inner_text("body")  # the coordinator's 401: no cookie went with it
        assert farm.api.task(task_id)["status"] == "queued"
    finally:
        page.close()


def test_scripts_in_names_and_logs_are_shown_as_text(farm, browser):
    farm.start_coordinator()
    name = "<img src=x onerror=alert(1)>"
    by = "<script>alert(2)</script>"
    status, blend = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    assert status == 200
    task_id = farm.api.post("/submit_task", {"name": name, "submitted_by": by, "blend_sha256": blend["sha256"],
                                             "frame_start": 1, "frame_end": 2})["task_id"]
    farm.api.post("/register_worker", {"name": "<b onmouseover=alert(3)>w", "host": "<script>alert(4)</script>",
                                       "blender_version": "3.4.1", "cpu_count": 2})
    hostile_log = "<script>alert(5)</script><img src=x onerror=alert(6)>\n"
    farm.api.post("/append_log", {"task_id": task_id, "text": hostile_log})
    page = Page(browser, farm)
    try:
        page.log_in()
        page.open("/")
        page.page.wait_for_selector(f'tr[data-task-id="{task_id}"]')
        page.wait("document.querySelectorAll('#worker-rows tr').length === 1")
        text = page.page.inner_text("main")
        assert name in text and by in text and "<script>alert(4)</script>" in text and "<b onmouseover" in text
        page.open(f"/tasks/{task_id}")
        page.wait("document.getElementById('log').textContent.includes('alert(5)')")
        assert page.page.inner_text("#task-name") == name
        assert page.page.inner_text("#task-by") == by
        assert "<script>alert(5)</script>" in page.page.inner_text("#log")
        page.page.wait_for_timeout(500)
        injected = page.page.evaluate("""() => ({
            images: document.querySelectorAll('img[src="x"]').length,
            bold: document.querySelectorAll('main b').length,
            scripts: [...document.scripts].filter(s => !s.src).length,
        })""")
        assert injected == {"images": 0, "bold": 0, "scripts": 0}
        assert page.dialogs == [] and page.errors == []
    finally:
        page.close()
