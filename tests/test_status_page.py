"""The status page in-process (Flask test client): the admin token, the login session and its cross-site checks,
the change feed behind live updates, inline frames, and escaping."""

from __future__ import annotations

import os
import re
import stat

import pytest

from conftest import ADMIN_TOKEN
from coordinator import auth
from coordinator.app import create_app
from coordinator.config import Config
from coordinator.live import VERSION_STEP, ChangeFeed
from coordinator.scheduler import TaskFile, TaskSpec

# The app's state is kept on both store engines (conftest.py).
pytestmark = pytest.mark.both_databases

BLEND = b"BLENDER-v304REND" + b"\0" * 64
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
ORIGIN = "http://localhost"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def client(app):
    """A browser-like client: no token unless a test logs in or sends one (the shared fixture sends the admin's)."""
    return app.test_client()


def submit(client, name: str = "shot", frames: int = 2) -> int:
    sha = client.post("/upload_blend?filename=a.blend", data=BLEND, headers=ADMIN).json["sha256"]
    return client.post("/submit_task", json={"name": name, "blend_sha256": sha, "frame_start": 1,
                                             "frame_end": frames}, headers=ADMIN).json["task_id"]


def register(client, name: str) -> int:
    return client.post("/register_worker", json={"name": name, "blender_version": "3.4.1"},
                       headers=ADMIN).json["worker_id"]


def log_in(client) -> str:
    """Log the test client in through the form; returns the page's CSRF token."""
    response = client.post("/login", data={"token": ADMIN_TOKEN, "next": "/"}, headers={"Origin": ORIGIN})
    assert response.status_code == 302
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


ADMIN_CALLS = [
    ("/set_worker_enabled", lambda ids: {"worker_id": ids["worker"], "enabled": False}),
    ("/cancel_task", lambda ids: {"task_id": ids["task"]}),
    ("/delete_task_files", lambda ids: {"task_id": ids["ended"]}),
    ("/set_task_priority", lambda ids: {"task_id": ids["task"], "priority": 9}),
    ("/pause_task", lambda ids: {"task_id": ids["task"]}),
    ("/resume_task", lambda ids: {"task_id": ids["paused"]}),
    ("/retry_failed_frames", lambda ids: {"task_id": ids["task"]}),
]


@pytest.fixture
def ids(client, app):
    """A worker, an open task, a paused task and an ended task, for the admin calls to act on."""
    paused = submit(client, "paused")
    app.extensions["renderq.scheduler"].pause_task(paused)
    ended = submit(client, "ended")
    app.extensions["renderq.scheduler"].cancel_task(ended)
    return {"worker": register(client, "w"), "task": submit(client, "open"), "paused": paused, "ended": ended}


def farm_state(client) -> tuple:
    tasks = [(t["task_id"], t["status"], t["priority"], t["files_deleted"])
             for t in client.get("/tasks", headers=ADMIN).json["tasks"]]
    workers = [(w["name"], w["enabled"]) for w in client.get("/list_workers", headers=ADMIN).json["workers"]]
    return tasks, workers


# -- changes need the admin token -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body", ADMIN_CALLS, ids=[path for path, _ in ADMIN_CALLS])
def test_changes_without_the_token_are_refused_and_change_nothing(client, ids, path, body):
    before = farm_state(client)
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": "Basic abc"}):
        response = client.post(path, json=body(ids), headers=headers)
        assert response.status_code == 401, (headers, response.json)
        assert response.is_json and "token" in response.json["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert farm_state(client) == before


@pytest.mark.parametrize("path, body", ADMIN_CALLS, ids=[path for path, _ in ADMIN_CALLS])
def test_bearer_token_is_accepted(client, ids, admin, path, body):
    response = client.post(path, json=body(ids), headers=admin)
    # retry has no failed frames to retry: a 409 says the token was accepted and the request judged.
    assert response.status_code == (409 if path == "/retry_failed_frames" else 200), response.json


def test_the_token_is_compared_in_constant_time(client, ids, monkeypatch):
    compared = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    client.post("/pause_task", json={"task_id": ids["task"]}, headers={"Authorization": "Bearer guess-guess-guess"})
    assert (b"guess-guess-guess", ADMIN_TOKEN.encode()) in compared
    compared.clear()
    client.post("/login", data={"token": "another-guess"}, headers={"Origin": ORIGIN})
    assert (b"another-guess", ADMIN_TOKEN.encode()) in compared


def test_token_file_is_created_private_and_kept(tmp_path, capsys):
    data_dir = tmp_path / "data"
    app = create_app(Config(data_dir=str(data_dir)))
    tokens = app.extensions["renderq.tokens"]
    path = data_dir / "admin_token"
    assert path.read_text().strip() == tokens.admin and len(tokens.admin) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data_dir / "session_secret").st_mode) == 0o600
    described = "\n".join(tokens.describe())
    assert str(path) in described and tokens.admin not in described
    again = create_app(Config(data_dir=str(data_dir))).extensions["renderq.tokens"]
    assert again.admin == tokens.admin
    client = app.test_client()
    assert client.post("/pause_task", json={"task_id": 1},
                       headers={"Authorization": f"Bearer {tokens.admin}"}).status_code == 404


def test_token_and_open_status_from_the_environment(tmp_path):
    config = Config.from_env({"RENDERQ_ADMIN_TOKEN": "from-the-environment-1", "RENDERQ_OPEN_STATUS": "1",
                              "RENDERQ_DATA_DIR": str(tmp_path)})
    assert config.admin_token == "from-the-environment-1" and config.open_status is True
    tokens = create_app(config).extensions["renderq.tokens"]
    assert tokens.admin == "from-the-environment-1"
    assert "RENDERQ_ADMIN_TOKEN" in "\n".join(tokens.describe())
    assert not (tmp_path / "admin_token").exists()
    with pytest.raises(ValueError, match="at least 16"):
        Config.from_env({"RENDERQ_ADMIN_TOKEN": "short"})
    with pytest.raises(ValueError, match="RENDERQ_OPEN_STATUS"):
        Config.from_env({"RENDERQ_OPEN_STATUS": "maybe"})


# -- the login session ------------------------------------------------------------------------------------------------


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(client, ids):
    wrong = client.post("/login", data={"token": "not-the-token", "next": "/"}, headers={"Origin": ORIGIN})
    assert wrong.status_code == 401 and "not the admin token" in wrong.get_data(as_text=True)
    assert client.get("/status/updates").status_code == 401

    response = client.post("/login", data={"token": ADMIN_TOKEN, "next": "/tasks/1"}, headers={"Origin": ORIGIN})
    assert response.status_code == 302 and response.headers["Location"] == "/tasks/1"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and ADMIN_TOKEN not in cookie
    assert client.get("/status/updates").status_code == 200

    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    headers = {"X-CSRF-Token": csrf, "Origin": ORIGIN}
    assert client.post("/pause_task", json={"task_id": ids["task"]}, headers=headers).status_code == 200
    assert client.post("/logout", data={"csrf": csrf}, headers={"Origin": ORIGIN}).status_code == 302
    assert client.post("/resume_task", json={"task_id": ids["task"]}, headers=headers).status_code == 401
    assert client.get("/status/updates").status_code == 401


def test_cross_site_posts_with_the_cookie_are_refused(client, ids):
    csrf = log_in(client)
    before = farm_state(client)
    body = {"task_id": ids["task"]}
    refused = [
        {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},       # another site, even with the token
        {"X-CSRF-Token": csrf, "Origin": "null"},                      # a sandboxed frame
        {"X-CSRF-Token": csrf, "Referer": "http://evil.example/page"},  # no Origin, a foreign Referer
        {"Origin": ORIGIN},                                            # a form post cannot add the header
        {"X-CSRF-Token": "forged", "Origin": ORIGIN},
    ]
    for headers in refused:
        response = client.post("/cancel_task", json=body, headers=headers)
        assert response.status_code == 403, headers
        assert "status page" in response.json["error"]
    assert client.post("/logout", headers={"Origin": "http://evil.example"}).status_code == 403
    assert farm_state(client) == before
    assert client.post("/cancel_task", json=body, headers={"X-CSRF-Token": csrf, "Origin": ORIGIN}).status_code == 200


def test_login_from_another_site_and_open_redirects_are_refused(client):
    assert client.post("/login", data={"token": ADMIN_TOKEN},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.get("/status/updates").status_code == 401
    for target in ("//evil.example/x", "http://evil.example", "/\\evil.example"):
        response = client.post("/login", data={"token": ADMIN_TOKEN, "next": target}, headers={"Origin": ORIGIN})
        assert response.headers["Location"] == "/"


def test_reading_needs_the_login_unless_the_status_is_open(tmp_path, client, admin):
    assert client.get("/").status_code == 302 and "/login" in client.get("/").headers["Location"]
    assert client.get("/tasks/1").status_code == 302
    assert client.get("/status/updates").status_code == 401
    assert client.get("/status/updates", headers=admin).status_code == 200
    assert client.get("/status/updates", headers={"Authorization": "Bearer nope"}).status_code == 401

    open_app = create_app(Config(data_dir=str(tmp_path / "open"), admin_token=ADMIN_TOKEN, open_status=True))
    reader = open_app.test_client()
    task_id = submit(reader)
    page = reader.get("/").get_data(as_text=True)
    assert 'content=""' in page and "Read-only view" in page and 'data-admin="0"' in page
    assert reader.get(f"/tasks/{task_id}").status_code == 200
    assert reader.get("/status/updates").status_code == 200
    assert reader.post("/cancel_task", json={"task_id": task_id}).status_code == 401
    assert reader.get("/tasks").status_code == 401  # open status opens the page, not the API
    assert reader.get("/tasks", headers=ADMIN).json["tasks"][0]["status"] == "queued"


def test_pages_forbid_framing_and_inline_scripts(client, admin):
    response = client.get("/", headers=admin)
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src" not in policy and "default-src 'self'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    scripts = re.findall(r"<script[^>]*>", response.get_data(as_text=True))
    assert scripts and all(" src=" in tag for tag in scripts)


# -- escaping ---------------------------------------------------------------------------------------------------------


def test_a_task_named_like_a_script_is_shown_as_text(app, client, admin):
    name = "<script>alert(1)</script>"
    # The API refuses '/' in names; a task from an older coordinator or a future rule could still have one.
    spec = TaskSpec(name=name, files=[TaskFile("a.blend", "a" * 64, 1)], main_file="a.blend", frame_start=1,
                    frame_end=1, submitted_by='"><img src=x onerror=alert(2)>')
    task_id = app.extensions["renderq.scheduler"].submit_task(spec)["task_id"]
    page = client.get(f"/tasks/{task_id}", headers=admin).get_data(as_text=True)
    assert name not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    updates = client.get("/status/updates", headers=admin)
    assert updates.mimetype == "application/json" and updates.json["snapshot"]["tasks"][str(task_id)]["name"] == name


# -- the change feed --------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_feed_sends_only_what_changed_and_builds_once_per_interval():
    clock = Clock()
    state = {"workers": {"1": {"name": "a", "alive": True}, "2": {"name": "b", "alive": True}},
             "tasks": {"7": {"done": 0}}}
    builds = []

    def build():
        builds.append(clock.now)
        return {section: dict(items) for section, items in state.items()}

    feed = ChangeFeed(build, interval=2.0, history=3, clock=clock)
    first = feed.updates(None)
    assert first["full"] and first["snapshot"] == state
    version = first["version"]
    for _ in range(50):  # many pages polling within one interval share one build
        assert feed.updates(version) == {"version": version, "next_poll": 2.0, "full": False, "changes": {}}
    assert len(builds) == 1

    state["workers"]["2"] = {"name": "b", "alive": False}
    assert feed.updates(version)["changes"] == {}  # not rebuilt before the interval is over
    clock.now += 2.0
    answer = feed.updates(version)
    assert answer["changes"] == {"workers": {"2": {"name": "b", "alive": False}}}
    assert answer["version"] == version + VERSION_STEP and len(builds) == 2

    del state["workers"]["1"]
    state["tasks"]["8"] = {"done": 1}
    clock.now += 2.0
    merged = feed.updates(version)["changes"]
    assert merged == {"workers": {"1": None, "2": {"name": "b", "alive": False}}, "tasks": {"8": {"done": 1}}}

    for done in range(2, 6):  # more change sets than the history keeps
        state["tasks"]["8"] = {"done": done}
        clock.now += 2.0
        feed.updates(None)
    assert feed.updates(version)["full"] is True
    assert feed.updates(feed.version + 10)["full"] is True  # a version this feed never gave
    # Another coordinator's feed (a page behind a load balancer) never reads this feed's versions as its own.
    other = ChangeFeed(build, interval=2.0, history=3, clock=clock)
    while other.version % VERSION_STEP == feed.version % VERSION_STEP:  # the same random tag: 1 in 65,536
        other = ChangeFeed(build, interval=2.0, history=3, clock=clock)
    other.updates(None)
    assert other.updates(feed.version)["full"] is True
    builds_before = len(builds)
    feed.invalidate()
    feed.updates(feed.version)
    assert len(builds) == builds_before + 1  # an admin's change rebuilds at once


def test_updates_over_http_carry_only_the_changed_worker(client, admin):
    workers = [register(client, f"node-{n}") for n in range(5)]
    submit(client, "shot", frames=3)
    first = client.get("/status/updates", headers=admin).json
    assert first["full"] and len(first["snapshot"]["workers"]) == 5 and "time" in first
    client.post("/set_worker_enabled", json={"worker_id": workers[2], "enabled": False}, headers=admin)
    answer = client.get(f"/status/updates?since={first['version']}", headers=admin).json
    assert answer["full"] is False and answer["version"] > first["version"]
    assert list(answer["changes"]["workers"]) == [str(workers[2])]
    assert answer["changes"]["workers"][str(workers[2])]["enabled"] is False
    assert "tasks" not in answer["changes"]
    assert client.get("/status/updates?since=abc", headers=admin).status_code == 400


def test_task_updates_hold_every_frame_and_then_only_changes(app, client, admin):
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"  # a worker and an artist at once
    task_id = submit(client, "shot", frames=3)
    worker = register(client, "a")
    first = client.get(f"/status/task_updates?task_id={task_id}", headers=admin).json
    assert first["snapshot"]["task"]["summary"]["name"] == "shot"
    assert {key: value[0] for key, value in first["snapshot"]["frames"].items()} == {
        "1": "queued", "2": "queued", "3": "queued"}
    lease = client.get(f"/get_task?worker_id={worker}").json["frame"]
    client.post("/set_task_priority", json={"task_id": task_id, "priority": 3}, headers=admin)  # rebuilds now
    changes = client.get(f"/status/task_updates?task_id={task_id}&since={first['version']}",
                         headers=admin).json["changes"]
    assert list(changes["frames"]) == [str(lease["frame"])] and changes["frames"]["1"][:2] == ["leased", "a"]
    assert changes["task"]["summary"]["priority"] == 3
    assert client.get("/status/task_updates?task_id=99", headers=admin).status_code == 404


# -- frames shown in the page -----------------------------------------------------------------------------------------


def render_frame(client, task_id: int, worker: int, data: bytes, filename: str) -> int:
    lease = client.get(f"/get_task?worker_id={worker}").json["frame"]
    client.post(f"/upload_frame?worker_id={worker}&task_id={task_id}&frame={lease['frame']}"
                f"&lease_id={lease['lease_id']}&filename={filename}", data=data)
    client.post("/update_task", json={"worker_id": worker, "task_id": task_id, "frame": lease["frame"],
                                      "lease_id": lease["lease_id"], "status": "done", "render_seconds": 1.0})
    return lease["frame"]


def test_frames_are_shown_inline_only_when_they_are_images(client):
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"  # a worker and an artist at once
    task_id = submit(client, "shot", frames=3)
    worker = register(client, "a")
    png = render_frame(client, task_id, worker, PNG, "f_0001.png")
    page = render_frame(client, task_id, worker, b"<html><script>alert(1)</script>", "f_0002.png")
    exr = render_frame(client, task_id, worker, b"v/1\x01" + b"\0" * 20, "f_0003.exr")

    shown = client.get(f"/download_frame?task_id={task_id}&frame={png}&inline=1")
    assert shown.status_code == 200 and shown.mimetype == "image/png" and shown.data == PNG
    assert shown.headers["Content-Disposition"].startswith("inline")
    assert shown.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in shown.headers["Content-Security-Policy"]
    for frame in (page, exr):
        refused = client.get(f"/download_frame?task_id={task_id}&frame={frame}&inline=1")
        assert refused.status_code == 400 and "not an image" in refused.json["error"]
    download = client.get(f"/download_frame?task_id={task_id}&frame={page}")
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert download.mimetype == "application/octet-stream"


def test_log_size_without_text(client):
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"  # a worker and an artist at once
    task_id = submit(client)
    client.post("/append_log", json={"task_id": task_id, "text": "line one\n"})
    assert client.get(f"/get_log?task_id={task_id}&offset=0&max_bytes=0").json == {
        "text": "", "offset": 0, "next_offset": 0, "size": 9}


def test_an_unknown_task_page_says_so(client, admin):
    response = client.get("/tasks/99", headers=admin)
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "no task with id 99" in response.get_data(as_text=True)


def test_the_coordinator_says_where_the_token_is(tmp_path):
    from harness import Api, Farm, wait_for

    farm = Farm(str(tmp_path / "closed"))
    os.makedirs(farm.root)
    try:
        farm.start_coordinator()
        path = os.path.join(os.path.abspath(farm.data_dir), "admin_token")
        wait_for(lambda: "admin token" in farm.coordinator.output(), 10, "the coordinator to print its token's file")
        output = farm.coordinator.output()
        assert f"admin token: created in {path}" in output and farm.api.token not in output
        assert f"status page: {farm.url}/ (log in with the admin token)" in output
        assert Api(farm.url).call("GET", "/status/updates")[0] == 401
    finally:
        farm.stop()

    reading = Farm(str(tmp_path / "open"))
    os.makedirs(reading.root)
    try:
        reading.start_coordinator("--open-status")
        anyone = Api(reading.url)
        assert anyone.call("GET", "/status/updates")[0] == 200
        assert anyone.call("POST", "/pause_task", {"task_id": 1})[0] == 401
    finally:
        reading.stop()


def test_the_task_page_shows_the_workers_blocked_from_it(client):
    task_id = submit(client, "shot", frames=3)
    worker = register(client, "flaky")
    for _ in range(3):
        lease = client.get(f"/get_task?worker_id={worker}", headers=ADMIN).json["frame"]
        client.post("/update_task", json={"worker_id": worker, "task_id": task_id, "frame": lease["frame"],
                                          "lease_id": lease["lease_id"], "status": "failed", "error": "boom"},
                    headers=ADMIN)
    summary = client.get(f"/status/task_updates?task_id={task_id}", headers=ADMIN).json["snapshot"]["task"]["summary"]
    assert summary["blocked"] == [{"worker": "flaky", "failures": 3}]
    assert "every worker that could render it has failed it 3 times" in summary["waiting"]
    page = client.get(f"/tasks/{task_id}", headers=ADMIN).get_data(as_text=True)
    assert 'id="task-blocked"' in page
    script = client.get("/static/task.js", headers=ADMIN).get_data(as_text=True)
    assert "task-blocked" in script and "s.blocked" in script
