"""GET /metrics, scraped as Prometheus would, from a real coordinator over HTTP."""

from __future__ import annotations

import os
import signal

import pytest

from prometheus_client.parser import text_string_to_metric_families

from harness import Farm

# The farm's state in the metrics, and the riders, on SQLite and on PostgreSQL alike.
pytestmark = pytest.mark.both_databases

BLEND = b"BLENDER-v304REND" + b"\0" * 64
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def scrape(farm: Farm, token: str | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    status, body = farm.api.call("GET", "/metrics", token=token)
    assert status == 200, body
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_show_the_farm_and_the_calls_it_served(farm):
    farm.start_coordinator()
    worker_id = farm.api.post("/register_worker", {"name": "w1", "host": "test", "blender_version": "3.4.1",
                                                   "cpu_count": 1})["worker_id"]
    status, uploaded = farm.api.call("POST", "/upload_blend?filename=a.blend", raw=BLEND)
    assert status == 200, uploaded
    task_id = farm.api.post("/submit_task", {"blend_sha256": uploaded["sha256"], "blend_filename": "a.blend",
                                             "frame_start": 1, "frame_end": 3})["task_id"]
    lease = farm.api.post("/frames/claim", {"worker_id": worker_id})["frame"]
    farm.api.post("/update_task", {"worker_id": worker_id, "task_id": task_id, "frame": lease["frame"],
                                   "lease_id": lease["lease_id"], "status": "rendering", "started_at": 1.5e9})
    query = (f"worker_id={worker_id}&task_id={task_id}&frame={lease['frame']}&lease_id={lease['lease_id']}"
             "&filename=f_0001.png&render_seconds=1.5")
    status, answer = farm.api.call("POST", f"/frames/finish?{query}", raw=PNG,
                                   content_type="application/octet-stream")
    assert status == 200, answer
    farm.api.post("/frames/claim", {"worker_id": worker_id})

    metrics = scrape(farm)
    assert metrics[("renderq_workers", (("state", "registered"),))] == 1
    assert metrics[("renderq_workers", (("state", "alive_and_on"),))] == 1
    assert metrics[("renderq_frames", (("status", "done"),))] == 1
    assert metrics[("renderq_frames", (("status", "leased"),))] == 1
    assert metrics[("renderq_frames", (("status", "queued"),))] == 1
    assert metrics[("renderq_frames_dispatched_total", ())] == 2
    assert metrics[("renderq_frames_finished_total", ())] == 1
    assert metrics[("renderq_frame_reports_total", (("status", "rendering"),))] == 1
    assert metrics[("renderq_request_seconds_count", (("endpoint", "tasks.claim_frame"),))] == 2
    assert metrics[("renderq_request_seconds_count", (("endpoint", "tasks.finish_frame"),))] == 1
    # The workers' calls ran in turns (two claims, a report, a finish): how busy the thread running them was.
    assert metrics[("renderq_store_turn_calls_total", ())] >= 4
    assert 1 <= metrics[("renderq_store_turn_seconds_count", ())] <= metrics[("renderq_store_turn_calls_total", ())]
    commits = metrics[("renderq_store_turn_commit_seconds_total", ())]
    assert 0 < commits <= metrics[("renderq_store_turn_seconds_sum", ())]
    # Refused requests are counted too: under their route, or "unmatched" when they have none.
    status, _ = farm.api.call("POST", "/upload_blend?filename=b.blend", raw=BLEND, token="not-a-token")
    assert status == 401
    assert farm.api.call("GET", "/no/such/route")[0] == 404
    again = scrape(farm)
    assert again[("renderq_request_seconds_count", (("endpoint", "files.upload_blend"),))] == 2
    assert again[("renderq_request_seconds_count", (("endpoint", "unmatched"),))] == 1


def test_metrics_need_the_admin_token_unless_the_status_is_open(farm):
    farm.start_coordinator()
    status, answer = farm.api.call("GET", "/metrics", token="")
    assert status == 401 and "error" in answer
    status, answer = farm.api.call("GET", "/metrics", token=farm.token("worker"))
    assert status == 403 and "admin token" in answer["error"]
    farm.coordinator.stop()
    farm.start_coordinator("--open-status")
    assert ("renderq_workers", (("state", "registered"),)) in scrape(farm, token="")


def test_every_scrape_of_a_coordinator_with_two_processes_counts_both(farm):
    """A scrape goes to whichever serving process the kernel gives its connection: each must show the requests
    both processes served. A stopped process takes no connections, so stopping one then the other makes each serve
    its share (left alone, one idle process may take every connection)."""
    farm.start_coordinator("--processes", "2")
    first, second = farm.serving_processes()
    health = ("renderq_request_seconds_count", (("endpoint", "health.get_health"),))
    before = scrape(farm).get(health, 0)  # the harness's own checks that the coordinator is up

    def while_stopped(pid: int, health_calls: int) -> float:
        """Make `health_calls` requests and a scrape while `pid` is stopped; the scrape's count."""
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(health_calls):
                assert farm.api.call("GET", "/health")[0] == 200
            return scrape(farm)[health]
        finally:
            os.kill(pid, signal.SIGCONT)

    assert while_stopped(first, 30) == before + 30  # the second process served them and answers
    assert while_stopped(second, 20) == before + 50  # the first served these, and counts the second's too
    assert while_stopped(first, 0) == before + 50
