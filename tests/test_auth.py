"""Access tokens: three roles, nothing read or changed without the right one, and auth-off only when said twice."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys

import pytest

from conftest import ADMIN_TOKEN, ARTIST_TOKEN, WORKER_TOKEN
from coordinator import auth
from coordinator.app import create_app
from coordinator.config import Config
from harness import ROOT, free_port

# The app's state is kept on both store engines (conftest.py).
pytestmark = pytest.mark.both_databases

BLEND = b"BLENDER-v304REND" + b"\0" * 512
TOKENS = {"admin": ADMIN_TOKEN, "artist": ARTIST_TOKEN, "worker": WORKER_TOKEN}
# Reachable by anyone: nothing private is in them.
PUBLIC = {"/health", "/login", "/logout", "/openapi.yaml", "/static/<path:filename>"}
# The status page, its feeds and the metrics (admins only, or anyone with open_status), by endpoint.
STATUS = {"pages.farm_page", "pages.task_page", "pages.worker_page", "pages.farm_updates", "pages.task_updates",
          "health.get_metrics"}


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def protected_routes(app) -> list[tuple[str, str, str]]:
    """(method, path, role) of every endpoint that needs a token, from the app itself (none can be forgotten)."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC or rule.endpoint in STATUS:
            continue
        view = app.view_functions[rule.endpoint]
        role = getattr(view, "renderq_role", None)
        assert role in auth.ROLES, f"{rule.rule} has no access check"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, rule.rule, role))
    return routes


def database_rows(app) -> list[str]:
    db = sqlite3.connect(os.path.join(app.config["RENDERQ"].data_dir, "renderq.sqlite3"))
    try:
        return list(db.iterdump())
    finally:
        db.close()


@pytest.fixture
def farm_state(client):
    """A worker holding a lease on a task's frame, so refused requests would have something to change."""
    blend = client.post("/upload_blend?filename=shot.blend", data=BLEND).json
    worker_id = client.post("/register_worker", json={"name": "w1", "host": "h", "blender_version": "3.4.1",
                                                       "cpu_count": 2}).json["worker_id"]
    task_id = client.post("/submit_task", json={"blend_sha256": blend["sha256"], "blend_filename": "shot.blend",
                                                "frame_start": 1, "frame_end": 3}).json["task_id"]
    lease = client.get(f"/get_task?worker_id={worker_id}").json["frame"]
    return {"sha": blend["sha256"], "worker_id": worker_id, "task_id": task_id, "lease": lease}


def call(client, method: str, path: str, headers: dict[str, str], state: dict):
    path = re.sub(r"<[^>]*task_id>", str(state["task_id"]), path)
    query = {"task_id": state["task_id"], "worker_id": state["worker_id"], "sha256": state["sha"], "frame": 1,
             "lease_id": state["lease"]["lease_id"], "filename": "f.png"}
    body = {**query, "status": "done", "enabled": False, "priority": 5, "name": "x", "leases": [],
            "blend_sha256": state["sha"], "blend_filename": "shot.blend", "frame_start": 1, "frame_end": 1,
            "text": "log line", "sha256": [state["sha"]]}
    if method == "GET":
        return client.get(path, query_string=query, headers=headers)
    return client.open(path, method=method, query_string=query, json=body, headers=headers)


def test_every_endpoint_but_health_and_login_needs_a_token(app, client, stranger, farm_state):
    before = database_rows(app)
    routes = protected_routes(app)
    assert len(routes) >= 20
    for method, path, _ in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": "Basic abc"}):
            response = call(stranger, method, path, headers, farm_state)
            assert response.status_code == 401, (method, path, headers, response.data[:200])
            # Reads nothing: the answer is the refusal and nothing else.
            assert response.is_json and set(response.json) == {"error"}, (method, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert database_rows(app) == before


def test_each_role_reaches_only_its_own_endpoints(app, client, stranger, farm_state):
    before = database_rows(app)
    for method, path, needed in protected_routes(app):
        for role in ("worker", "artist"):
            if role == needed:
                continue
            response = call(stranger, method, path, bearer(role), farm_state)
            assert response.status_code == 403, (method, path, role, response.data[:200])
            assert set(response.json) == {"error"} and f"the {needed} token" in response.json["error"]
    assert database_rows(app) == before


def test_status_page_is_for_admins_only(client, stranger, farm_state):
    for path in ("/status/updates", f"/status/task_updates?task_id={farm_state['task_id']}"):
        assert stranger.get(path).status_code == 401
        for role in ("worker", "artist"):
            response = stranger.get(path, headers=bearer(role))
            assert response.status_code == 403 and set(response.json) == {"error"}
        assert stranger.get(path, headers=bearer("admin")).status_code == 200
    assert stranger.get("/").status_code == 302  # to the login form


def test_worker_token_runs_a_worker_and_artist_token_submits(stranger, client, farm_state):
    worker = bearer("worker")
    worker_id = stranger.post("/register_worker", json={"name": "w2", "host": "h", "blender_version": "3.4.1",
                                                         "cpu_count": 1}, headers=worker).json["worker_id"]
    assert stranger.post("/update_worker", json={"worker_id": worker_id, "leases": []},
                         headers=worker).status_code == 200
    lease = stranger.get(f"/get_task?worker_id={worker_id}", headers=worker).json["frame"]
    assert lease is not None
    assert stranger.get(f"/task_manifest?task_id={lease['task_id']}", headers=worker).status_code == 200
    assert stranger.get(f"/download_file?sha256={farm_state['sha']}", headers=worker).status_code == 200

    artist = bearer("artist")
    blend = stranger.post("/upload_blend?filename=a.blend", data=BLEND, headers=artist).json
    task = stranger.post("/submit_task", json={"blend_sha256": blend["sha256"], "blend_filename": "a.blend",
                                               "frame_start": 1, "frame_end": 2}, headers=artist)
    assert task.status_code == 201 and task.json["owner"] == "artist"
    assert stranger.get(f"/task?task_id={task.json['task_id']}", headers=artist).json["owner"] == "artist"
    assert stranger.get("/tasks", headers=artist).status_code == 200
    assert stranger.get(f"/get_log?task_id={task.json['task_id']}", headers=artist).status_code == 200


def test_an_artist_cancels_only_their_own_tasks(app, client, stranger, farm_state):
    data_dir = app.config["RENDERQ"].data_dir
    alice = auth.add_artist_token(data_dir, "alice")
    bob = auth.add_artist_token(data_dir, "bob")
    path = os.path.join(data_dir, auth.ARTIST_TOKENS_FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ValueError, match="already"):
        auth.add_artist_token(data_dir, "alice")

    def submit(token: str) -> int:
        answer = stranger.post("/submit_task", json={"blend_sha256": farm_state["sha"],
                                                     "blend_filename": "shot.blend", "frame_start": 1,
                                                     "frame_end": 2}, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 201, answer.json
        return answer.json["task_id"]

    alices = submit(alice)
    assert client.get(f"/task?task_id={alices}").json["owner"] == "artist:alice"
    refused = stranger.post("/cancel_task", json={"task_id": alices}, headers={"Authorization": f"Bearer {bob}"})
    assert refused.status_code == 403 and "alice" in refused.json["error"]
    assert client.get(f"/task?task_id={alices}").json["status"] == "queued"
    # The shared artist token is someone else too: it cannot cancel alice's task either.
    assert stranger.post("/cancel_task", json={"task_id": alices}, headers=bearer("artist")).status_code == 403
    assert stranger.post("/cancel_task", json={"task_id": alices},
                         headers={"Authorization": f"Bearer {alice}"}).json["status"] == "canceled"
    # An admin cancels anyone's task.
    bobs = submit(bob)
    assert stranger.post("/cancel_task", json={"task_id": bobs}, headers=bearer("admin")).status_code == 200
    # Admin-only controls stay refused to artists, even on their own tasks.
    mine = submit(alice)
    for path in ("/pause_task", "/set_task_priority", "/retry_failed_frames"):
        answer = stranger.post(path, json={"task_id": mine, "priority": 3},
                               headers={"Authorization": f"Bearer {alice}"})
        assert answer.status_code == 403


def test_tokens_are_created_private_and_differ(tmp_path):
    data_dir = tmp_path / "data"
    app = create_app(Config(data_dir=str(data_dir)))
    book = app.extensions["renderq.tokens"]
    values = set()
    for role in ("admin", "artist", "worker"):
        path = data_dir / f"{role}_token"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        value = path.read_text().strip()
        assert len(value) >= 32 and book.token(role) == value
        values.add(value)
    assert len(values) == 3
    described = "\n".join(book.describe())
    assert all(str(data_dir / f"{role}_token") in described for role in ("admin", "artist", "worker"))
    assert not any(value in described for value in values)
    again = create_app(Config(data_dir=str(data_dir))).extensions["renderq.tokens"]
    assert all(again.token(role) == book.token(role) for role in ("admin", "artist", "worker"))


def test_every_token_is_compared_in_constant_time(app, stranger, monkeypatch):
    compared = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    stranger.get("/tasks", headers={"Authorization": "Bearer guess-guess-guess"})
    for token in TOKENS.values():
        assert (b"guess-guess-guess", token.encode()) in compared


def test_auth_off_answers_everyone_on_loopback(tmp_path):
    app = create_app(Config(data_dir=str(tmp_path / "data"), auth=False, host="127.0.0.1"))
    stranger = app.test_client()
    assert stranger.get("/tasks").status_code == 200
    assert stranger.get("/status/updates").status_code == 200


def run_coordinator(tmp_path, *flags: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "renderq", "coordinator", "--port", str(free_port()),
                           "--data-dir", str(tmp_path / "data"), *flags],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def test_auth_off_on_the_network_needs_insecure_and_warns(tmp_path):
    refused = run_coordinator(tmp_path, "--host", "0.0.0.0", "--no-auth")
    assert refused.returncode == 2
    assert "--insecure" in refused.stderr and "refusing" in refused.stderr
    assert not (tmp_path / "data" / "renderq.sqlite3").exists()

    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen([sys.executable, "-m", "renderq", "coordinator", "--host", "0.0.0.0", "--port",
                                str(free_port()), "--data-dir", str(tmp_path / "data"), "--no-auth", "--insecure"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        warning = process.stderr.readline()
        assert "WARNING" in warning and "auth is off" in warning
    finally:
        process.terminate()
        process.wait(20)


def test_add_artist_prints_a_token_that_works(tmp_path):
    done = run_coordinator(tmp_path, "--add-artist", "carol")
    assert done.returncode == 0, done.stderr
    token = done.stdout.split("token ", 1)[1].split()[0]
    app = create_app(Config(data_dir=str(tmp_path / "data")))
    assert app.extensions["renderq.tokens"].identify(token) == auth.Identity("artist", "artist:carol")
    assert run_coordinator(tmp_path, "--add-artist", "carol").returncode == 2
