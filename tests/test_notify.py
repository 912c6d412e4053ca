"""Issue 17, "Notifications": webhooks over real HTTP, from a real coordinator process to a real receiver (a small
http.server on a loopback port), with frames rendered by a worker speaking the worker API (no Blender needed).

A done task's event arrives once, signed so that it verifies with the farm's secret; a failed task's too; an event
to a receiver that is down (port closed, then answering 500) arrives once it is back, through the backoff; an event
still undelivered when the coordinator stops is delivered after its restart, once per delivery id; bad URLs are
refused at submit with a sentence, and nothing is stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from harness import ROOT, Farm, wait_for
from webhook_receiver import SECRET, ApiWorker, Receiver, Trickler, verifies

from coordinator.store import Store

BLEND = b"BLENDER-v304REND" + b"\0" * 512
# Short retries, so a receiver that comes back is reached within a second or two.
FAST_RETRY = ("--notify-retry", "0.2", "--notify-timeout", "2")


def start(farm: Farm, *flags: str) -> None:
    os.environ["RENDERQ_NOTIFY_SECRET"] = SECRET
    try:
        farm.start_coordinator("--frame-fail-workers", "1", *flags)
    finally:
        del os.environ["RENDERQ_NOTIFY_SECRET"]


def submit(farm: Farm, blend: str, name: str, **fields) -> int:
    return farm.api.post("/submit_task", {"name": name, "blend_sha256": blend, "blend_filename": "shot.blend",
                                          "frame_start": 1, "frame_end": 1, **fields})["task_id"]


def upload(farm: Farm) -> str:
    status, answer = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND)
    assert status == 200, answer
    return answer["sha256"]


@pytest.fixture(scope="module")
def farm_hook() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def hooked_farm(tmp_path_factory, farm_hook: Receiver) -> Iterator[Farm]:
    """The module's coordinator: tasks' URLs may be on loopback (the receivers here are), a farm-wide URL, the
    secret given, fast retries; a frame that fails once fails for good."""
    farm = Farm(str(tmp_path_factory.mktemp("notify")))
    start(farm, "--notify-task-urls", "any", "--notify-url", farm_hook.url + "/farm", *FAST_RETRY)
    yield farm
    farm.stop()


@pytest.fixture(scope="module")
def blend(hooked_farm: Farm) -> str:
    return upload(hooked_farm)


def test_a_done_task_sends_one_signed_event_to_its_url_and_the_farm_url(hooked_farm, farm_hook, blend):
    receiver = Receiver().start()
    try:
        task_id = submit(hooked_farm, blend, "shot_done", notify=[receiver.url + "/hook?team=lighting"])
        ApiWorker(hooked_farm, "w-done").finish(task_id)
        [event] = wait_for(lambda: receiver.events(task_id), 20, "the done event")
        [farm_event] = wait_for(lambda: farm_hook.events(task_id, "/farm"), 20, "the farm-wide done event")
        time.sleep(1.5)  # several more rounds of the notifier: nothing is sent twice
        assert len(receiver.requests) == 1 and len(farm_hook.events(task_id, answered=None)) == 1
    finally:
        receiver.stop()
    assert event["path"] == "/hook?team=lighting"
    assert verifies(event) and verifies(farm_event)
    assert not verifies(event, "another secret that is long enough")
    body = event["json"]
    assert body["event"] == "task.done" and body["status"] == "done" and body["name"] == "shot_done"
    assert body["frames"] == {"total": 1, "done": 1, "failed": 0} and body["owner"] == "admin"
    assert event["headers"]["X-RenderQ-Delivery"] == body["delivery"] != farm_event["json"]["delivery"]
    assert event["headers"]["X-RenderQ-Event"] == "task.done"
    assert abs(int(event["headers"]["X-RenderQ-Timestamp"]) - time.time()) < 60
    assert event["headers"]["Content-Type"] == "application/json"
    # The URL (which may hold a receiver's secret) is never shown with the task.
    assert "hook" not in json.dumps(hooked_farm.api.task(task_id))


def test_a_failed_task_sends_a_failed_event(hooked_farm, farm_hook, blend):
    task_id = submit(hooked_farm, blend, "shot_failed")
    ApiWorker(hooked_farm, "w-fail").finish(task_id, "failed")
    [event] = wait_for(lambda: farm_hook.events(task_id), 20, "the failed event")
    assert verifies(event)
    assert event["json"]["event"] == "task.failed" and event["json"]["status"] == "failed"
    assert event["json"]["frames"]["failed"] == 1


def test_a_task_waiting_for_approval_sends_an_awaiting_approval_event(hooked_farm, farm_hook, blend):
    """Once the model has the status (scout frames, `scout_frames` on submit): its scout rendered, the task waits,
    and the farm-wide URL hears so."""
    task_id = hooked_farm.api.post("/submit_task", {
        "name": "shot_scouted", "blend_sha256": blend, "blend_filename": "shot.blend", "frame_start": 1,
        "frame_end": 3, "scout_frames": 1})["task_id"]
    ApiWorker(hooked_farm, "w-scout").finish(task_id)
    [event] = wait_for(lambda: farm_hook.events(task_id), 20, "the awaiting approval event")
    assert verifies(event)
    assert event["json"]["event"] == "task.awaiting_approval" and event["json"]["status"] == "awaiting_approval"


def test_an_event_reaches_a_receiver_that_was_down_through_the_backoff(hooked_farm, blend):
    receiver = Receiver()  # not listening yet: its port is closed
    task_id = submit(hooked_farm, blend, "shot_late", notify=[receiver.url])
    ApiWorker(hooked_farm, "w-late").finish(task_id)
    wait_for(lambda: "webhook task.done to http://127.0.0.1" in hooked_farm.coordinator.output(), 20,
             "the coordinator to note the failed attempt")
    time.sleep(1.0)
    receiver.status = 500  # up, but failing for a while
    receiver.start()
    try:
        wait_for(lambda: len(receiver.events(task_id, answered=500)) >= 2, 20, "attempts answered 500")
        receiver.status = 200
        [event] = wait_for(lambda: receiver.events(task_id), 20, "the event once the receiver is well")
        time.sleep(1.5)
        attempts = receiver.events(task_id, answered=None)
    finally:
        receiver.stop()
    # Every attempt was the same delivery, with the same body; each signed afresh; it stopped once answered 200.
    assert {a["json"]["delivery"] for a in attempts} == {event["json"]["delivery"]}
    assert {a["body"] for a in attempts} == {event["body"]}
    assert all(verifies(a) for a in attempts) and attempts[-1]["answered"] == 200
    assert [a["answered"] for a in attempts].count(200) == 1


def test_a_receiver_that_trickles_its_answer_holds_an_attempt_no_longer_than_the_timeout(hooked_farm, blend):
    trickler = Trickler().start()
    try:
        task_id = submit(hooked_farm, blend, "shot_slow", notify=[trickler.url])
        ApiWorker(hooked_farm, "w-slow").finish(task_id)
        wait_for(lambda: trickler.connected, 20, "the first attempt")
        # --notify-timeout 2: the attempt is cut then, though the receiver would go on sending for ever.
        wait_for(lambda: "failed (the receiver took longer than 2 s to answer)" in hooked_farm.coordinator.output(),
                 6, "the attempt to be cut at its timeout")
        assert time.monotonic() - trickler.connected[0] < 5
    finally:
        trickler.stop()


def test_bad_notify_urls_are_refused_at_submit_and_nothing_is_stored(hooked_farm, blend):
    before = hooked_farm.api.get("/tasks")
    cases = [
        ("ftp://example.com/hook", 400, "must start with http:// or https://"),
        ("javascript:alert(1)", 400, "must start with http:// or https://"),
        ("http:///no-host", 400, "names no host"),
        ("http://example.com:99999/", 400, "is not a URL"),
        ("http://example.com/a b", 400, "spaces or control characters"),
        ("http://example.com/" + "x" * 2000, 400, "2000"),
    ]
    for url, status, words in cases:
        answer_status, answer = hooked_farm.api.call("POST", "/submit_task", {
            "name": "bad", "blend_sha256": blend, "frame_start": 1, "frame_end": 1, "notify": [url]})
        assert answer_status == status and words in answer["error"], (url, answer_status, answer)
    too_many = [f"http://example.com/{n}" for n in range(6)]
    answer_status, answer = hooked_farm.api.call("POST", "/submit_task", {
        "name": "bad", "blend_sha256": blend, "frame_start": 1, "frame_end": 1, "notify": too_many})
    assert answer_status == 400 and "notify" in answer["error"], answer
    assert hooked_farm.api.get("/tasks") == before


def outbox(farm: Farm) -> dict[str, int]:
    """The coordinator's deliveries by state, read from its database while it is stopped."""
    store = Store(farm.database or os.path.join(farm.data_dir, "renderq.sqlite3"))
    try:
        return store.notification_counts()
    finally:
        store.close()


@pytest.mark.both_databases
def test_an_undelivered_event_is_delivered_after_a_restart_once(farm: Farm):
    receiver = Receiver()
    start(farm, "--notify-url", receiver.url + "/farm", *FAST_RETRY)
    task_id = submit(farm, upload(farm), "shot_restart")
    ApiWorker(farm, "w-restart").finish(task_id)
    wait_for(lambda: "webhook task.done to http://127.0.0.1" in farm.coordinator.output(), 20,
             "the failed attempt")
    farm.coordinator.stop(timeout=10)
    assert outbox(farm) == {"pending": 1, "delivered": 0, "given_up": 0}
    receiver.start()
    try:
        start(farm, "--notify-url", receiver.url + "/farm", *FAST_RETRY)
        [event] = wait_for(lambda: receiver.events(task_id), 20, "the event after the restart")
        time.sleep(1.5)
        assert len(receiver.events(task_id, answered=None)) == 1
    finally:
        receiver.stop()
    assert verifies(event) and event["json"]["event"] == "task.done"
    farm.coordinator.stop(timeout=10)
    assert outbox(farm) == {"pending": 0, "delivered": 1, "given_up": 0}


def test_a_delivery_is_given_up_after_the_time_allowed_and_the_task_s_log_says_so(farm: Farm):
    receiver = Receiver()  # never listening
    start(farm, "--notify-url", receiver.url + "/farm", "--notify-give-up", "1", *FAST_RETRY)
    task_id = submit(farm, upload(farm), "shot_never")
    ApiWorker(farm, "w-never").finish(task_id)
    wait_for(lambda: "gave up" in farm.api.get(f"/get_log?task_id={task_id}&offset=0")["text"], 20,
             "the delivery to be given up")
    log = farm.api.get(f"/get_log?task_id={task_id}&offset=0")["text"]
    assert "gave up delivering task.done" in log and f"to http://127.0.0.1:{receiver.port} after" in log
    assert "/farm" not in log  # a URL's path may hold the receiver's secret: only its host is written
    assert "gave up delivering task.done" in farm.coordinator.output()
    metrics = farm.api.get("/metrics").decode()
    assert 'renderq_webhook_deliveries{state="given_up"} 1.0' in metrics
    assert 'renderq_webhook_deliveries{state="pending"} 0.0' in metrics
    farm.coordinator.stop(timeout=10)
    assert outbox(farm) == {"pending": 0, "delivered": 0, "given_up": 1}


def test_this_machine_is_refused_unless_the_admin_allows_it(farm: Farm):
    """The default policy (remote): a task's URL on the coordinator's own machine is refused at submit when it says
    so, and at delivery when a name resolves there; the farm's own URL is the admin's and is not limited."""
    receiver = Receiver().start()
    try:
        start(farm, *FAST_RETRY)
        blend = upload(farm)
        for host in ("127.0.0.1", "localhost", "[::1]", "169.254.169.254", "0.0.0.0"):
            status, answer = farm.api.call("POST", "/submit_task", {
                "name": "local", "blend_sha256": blend, "frame_start": 1, "frame_end": 1,
                "notify": [f"http://{host}:{receiver.port}/"]})
            assert status == 400 and "coordinator's own machine" in answer["error"], (host, answer)
        # "127.1" is no address literal to the submit's check, but the resolver makes it 127.0.0.1 (as it would a
        # name whose DNS points here): it is refused where the coordinator connects.
        name = "127.1"
        task_id = submit(farm, blend, "named", notify=[f"http://{name}:{receiver.port}/"])
        ApiWorker(farm, "w-named").finish(task_id)
        wait_for(lambda: "gave up" in farm.api.get(f"/get_log?task_id={task_id}&offset=0")["text"], 20,
                 "the refusal in the task's log")
        log = farm.api.get(f"/get_log?task_id={task_id}&offset=0")["text"]
        assert "an address of the coordinator's own machine" in log and "RENDERQ_NOTIFY_TASK_URLS" in log
        assert receiver.requests == []
    finally:
        receiver.stop()


def test_task_urls_off_is_refused_with_403(farm: Farm):
    start(farm, "--notify-task-urls", "off")
    status, answer = farm.api.call("POST", "/submit_task", {
        "name": "off", "blend_sha256": upload(farm), "frame_start": 1, "frame_end": 1,
        "notify": ["https://example.com/hook"]})
    assert status == 403 and "RENDERQ_NOTIFY_TASK_URLS=off" in answer["error"], answer


def test_renderq_submit_notify_sends_the_task_s_events_there(hooked_farm, scenes, tmp_path):
    """The real CLI packs a real .blend and submits it with two --notify URLs; both get the done event."""
    receiver = Receiver().start()
    try:
        blend = scenes("notify", frames=1)
        result = subprocess.run([sys.executable, "-m", "renderq", "submit", blend, "--frames", "1", "--name",
                                 "cli_notify", *hooked_farm.cli_flags("artist"), "--notify", receiver.url + "/one",
                                 "--notify", receiver.url + "/two"], capture_output=True, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        tasks = hooked_farm.api.get("/tasks")["tasks"]
        task_id = max(task["task_id"] for task in tasks if task["name"] == "cli_notify")
        ApiWorker(hooked_farm, "w-cli").finish(task_id)
        wait_for(lambda: len(receiver.events(task_id)) == 2, 20, "the done event at both URLs")
    finally:
        receiver.stop()
    assert sorted(event["path"] for event in receiver.events(task_id)) == ["/one", "/two"]
    assert all(verifies(event) and event["json"]["owner"] == "artist" for event in receiver.events(task_id))


def test_the_cli_refuses_a_bad_notify_url_with_a_sentence(tmp_path):
    blend = tmp_path / "shot.blend"
    blend.write_bytes(BLEND)
    result = subprocess.run([sys.executable, "-m", "renderq", "submit", str(blend), "--frames", "1",
                             "--notify", "ftp://example.com/hook"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert result.returncode == 2
    assert "must start with http:// or https://" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_farm_notify_url_stops_the_coordinator_with_a_sentence(tmp_path):
    result = subprocess.run([sys.executable, "-m", "renderq", "coordinator", "--host", "127.0.0.1", "--port", "0",
                             "--data-dir", str(tmp_path / "data"), "--notify-url", "smtp://mail"],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            timeout=60)
    assert result.returncode == 2
    assert "notify url: a notify URL must start with http:// or https://" in result.stderr

