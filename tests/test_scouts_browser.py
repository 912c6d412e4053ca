"""A scout task's page in Chromium (Playwright, as tests/test_status_browser.py drives it) with real Blender workers:
the scouts' images, the estimate under them (time, render hours, cost and energy), the Approve button, which
renders the rest, and the panel's Cancel. Set RENDERQ_SCREENSHOTS=DIR to keep the page waiting for approval as
DIR/status-scouts.png."""

from __future__ import annotations

import pytest

from harness import find_blender_or_none, wait_for
from test_status_browser import CHROMIUM, FAST, Page, browser, shoot, sync_playwright  # noqa: F401 - the fixture

BLENDER = find_blender_or_none()
PRICES = ("--cost-per-worker-hour", "2.40", "--cost-currency", "EUR", "--watts-per-worker", "350")

pytestmark = [
    pytest.mark.skipif(sync_playwright is None or CHROMIUM is None, reason="Playwright or Chromium is not installed "
                       "(source scripts/setup-browser.sh to install them)"),
    pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (scripts/test.sh installs it)"),
]


def test_the_page_shows_the_scouts_and_the_estimate_and_approves(farm, browser, scenes):  # noqa: F811 - fixture
    farm.start_coordinator(*FAST, *PRICES)
    farm.start_worker("node-01")
    farm.start_worker("node-02")
    task_id = farm.api.submit(scenes("basic", frames=24), 1, 24, name="shot_030_scouts", scout_frames=4)
    wait_for(lambda: farm.api.task(task_id)["status"] == "awaiting_approval", 180, "the scouts to render")
    page = Page(browser, farm, width=1440, height=1000)
    try:
        page.log_in()
        page.open(f"/tasks/{task_id}")
        page.wait("!document.getElementById('scouts-panel').hidden")
        assert page.page.inner_text("#task-status") == "waiting for approval"
        # The four scouts' images, loaded, then the estimate under them.
        page.wait("[...document.querySelectorAll('#scouts img')].length === 4 && "
                  "[...document.querySelectorAll('#scouts img')].every((img) => img.complete && img.naturalWidth)")
        assert page.page.locator("#scouts span").all_inner_texts() == ["frame 1", "frame 9", "frame 16", "frame 24"]
        estimate = page.page.inner_text("#scouts-estimate")
        assert estimate.startswith("The frames left: about ") and "on 2 workers" in estimate, estimate
        assert "render hours" in estimate and "EUR" in estimate and "kWh" in estimate, estimate
        assert "4 scout frames rendered first; 20 frames wait for approval" in page.page.inner_text("#scouts-note")
        assert page.page.locator(".frame-grid .f-held").count() == 20
        assert page.page.is_disabled("#action-pause") and not page.page.is_disabled("#action-approve")
        page.page.evaluate("document.getElementById('toast').hidden = true")
        shoot(page, "status-scouts.png")

        page.page.click("#action-approve")
        page.wait("document.getElementById('scouts-panel').hidden", timeout=15)
        task = farm.api.task(task_id)
        assert task["status"] == "running" and task["progress"]["held"] == 0
        page.wait("document.getElementById('task-status').textContent === 'done'", timeout=240)
        assert page.page.is_disabled("#action-approve") and page.not_reloaded() and page.dialogs == []

        # A second scout task: the panel's Cancel (with the page's confirmation) ends it, its scouts kept.
        other = farm.api.submit(scenes("basic", frames=24), 1, 24, name="shot_040_scouts", scout_frames=2)
        wait_for(lambda: farm.api.task(other)["status"] == "awaiting_approval", 180, "the second task's scouts")
        page.open(f"/tasks/{other}")
        page.wait("!document.getElementById('scouts-panel').hidden")
        page.page.click("#action-reject")
        page.wait("document.getElementById('task-status').textContent === 'canceled'", timeout=15)
        assert ("confirm", "Cancel the frames of this task that are not rendered yet? Rendered frames stay.") \
            in page.dialogs
        canceled = farm.api.task(other)
        assert canceled["progress"]["done"] == 2 and canceled["progress"]["canceled"] == 22
        assert page.errors == []
    finally:
        page.close()
