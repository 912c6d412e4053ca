"""Issue 12's web attacks, each performed against a real coordinator process over real HTTP (and, where a browser
is the victim, in headless Chromium): open redirects after login, owner names that pass for a role, cross-site
changes to a coordinator without tokens, escape sequences printed by `renderq`, and session cookies that outlive
their logout.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.parse

import pytest

from harness import ROOT, Farm, wait_for

# The app's state is kept on both store engines (conftest.py).
pytestmark = pytest.mark.both_databases

BLEND = b"BLENDER-v304REND" + bytes(64)
EVIL = "http://evil.example"
# What a terminal acts on instead of showing: C0 controls other than tab and newline, DEL, C1 controls, the
# Unicode line separators and the bidirectional overrides and isolates.
TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None
needs_browser = pytest.mark.skipif(sync_playwright is None or CHROMIUM is None,
                                   reason="Playwright and Chromium are needed (source scripts/setup-browser.sh)")


# -- plumbing ----------------------------------------------------------------------------------------------------------


def send(farm: Farm, method: str, path: str, body: bytes | str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One raw HTTP request to the farm's coordinator, exactly as given: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def log_in(farm: Farm, next_path: str | None = None) -> tuple[str, str]:
    """Log in with the admin token as the login form does: (the session cookie, the redirect's Location)."""
    query = "" if next_path is None else "?next=" + next_path
    form = urllib.parse.urlencode({"token": farm.admin_token()})
    status, headers, body = send(farm, "POST", "/login" + query, form,
                                 {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302, (status, body)
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    assert cookie.startswith("renderq_session=")
    return cookie, headers["Location"]


def csrf_of(farm: Farm, cookie: str) -> str:
    status, _, page = send(farm, "GET", "/", headers={"Cookie": cookie})
    assert status == 200
    return re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()


def seed_task(farm: Farm, token: str | None = None, **fields) -> int:
    """A task submitted over HTTP with `token` (the admin's by default); its id."""
    token = farm.admin_token() if token is None else token
    status, blob = farm.api.call("POST", "/upload_blend?filename=shot.blend", raw=BLEND, token=token)
    assert status == 200, blob
    status, task = farm.api.call("POST", "/submit_task", {"blend_sha256": blob["sha256"], "frame_start": 1,
                                                          "frame_end": 2, **fields}, token=token)
    assert status == 201, task
    return task["task_id"]


# -- open redirect after login -----------------------------------------------------------------------------------------

# `next` values (as they appear in the query string) that once led, or could lead, off the coordinator or to a 500.
HOSTILE_NEXT = [
    "/%09/evil.example", "/%0a/evil.example", "/%0d%0aSet-Cookie:%20x=1", "//evil.example", "///evil.example",
    "/%5Cevil.example", "%5C%5Cevil.example", "/%5C/evil.example", "%2F%2Fevil.example", "https://evil.example/",
    "http:evil.example", "javascript:alert(1)", "%20//evil.example", "/%00/evil.example", "/%E2%80%AE/evil.example",
    "/%7F/evil.example", "/tasks/1%09/evil", "%09//evil.example", "/.//evil.example", "/..//evil.example",
]


def assert_stays_here(location: str, what: str) -> None:
    assert location.startswith("/") and not location.startswith("//"), (what, location)
    assert "\\" not in location and not any(c.isspace() or not c.isprintable() for c in location), (what, location)
    assert urllib.parse.urlsplit(urllib.parse.urljoin("http://127.0.0.1:5000/login", location)).netloc == \
        "127.0.0.1:5000", (what, location)


def test_login_redirects_only_to_paths_on_the_coordinator(farm):
    farm.start_coordinator()
    for hostile in HOSTILE_NEXT:
        status, _, _ = send(farm, "GET", "/login?next=" + hostile)
        assert status == 200, hostile  # the form, not a 500
        cookie, location = log_in(farm, hostile)
        assert_stays_here(location, hostile)
        # Already logged in, the form sends the browser on at once: the same rule.
        status, headers, _ = send(farm, "GET", "/login?next=" + hostile, headers={"Cookie": cookie})
        assert status == 302, hostile
        assert_stays_here(headers["Location"], hostile)
    # A genuine target keeps its path and query.
    assert log_in(farm, urllib.parse.quote("/tasks/3?since=4", safe=""))[1] == "/tasks/3?since=4"
    assert log_in(farm, "/")[1] == "/"


@needs_browser
def test_the_browser_stays_on_the_coordinator_after_logging_in(farm):
    farm.start_coordinator()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            visited: list[str] = []
            for hostile in ("/%09/evil.example", "/%5Cevil.example", "/%0a/x"):
                # A fresh context each time: logged out (the farm page's polls would renew an old cookie).
                page = browser.new_context(bypass_csp=True).new_page()  # Playwright's helpers are scripts too
                # Were the browser sent off-site, this page would catch it (and the test would see where it went).
                page.route(EVIL + "/**", lambda route: (visited.append(route.request.url),
                                                        route.fulfill(status=200, content_type="text/html",
                                                                      body="<p>phishing for the admin token</p>")))
                page.goto(f"{farm.url}/login?next={hostile}")
                page.fill("#token", farm.admin_token())
                with page.expect_navigation():
                    page.click("button[type=submit]")
                page.wait_for_load_state()
                assert page.url.startswith(farm.url + "/"), (hostile, page.url)
                assert not visited, visited
                page.context.close()
        finally:
            browser.close()


# -- owners that pass for a role ---------------------------------------------------------------------------------------


def run_coordinator(data_dir: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderq", "coordinator", "--data-dir", data_dir, *flags],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, timeout=60)


def test_add_artist_refuses_the_names_of_roles(tmp_path):
    data_dir = str(tmp_path / "data")
    for name in ("admin", "artist", "worker", "anonymous", "Admin", "artist:bob", "a:b"):
        done = run_coordinator(data_dir, "--add-artist", name)
        assert done.returncode == 2, (name, done.stdout)
        assert "reserved" in done.stderr or "':'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not os.path.exists(os.path.join(data_dir, "artist_tokens"))
    assert run_coordinator(data_dir, "--add-artist", "bob").returncode == 0


def test_no_artist_token_acts_for_a_role(farm):
    farm.start_coordinator()
    # Names a hand-edited artist_tokens file (or one from before the check) may still hold: they name a role, but
    # their tokens stay named artists' tokens.
    fake_admin, fake_artist = "a" * 40, "b" * 40
    with open(os.path.join(farm.data_dir, "artist_tokens"), "w", encoding="utf-8") as handle:
        handle.write(f"admin {fake_admin}\nartist {fake_artist}\n")
    os.chmod(os.path.join(farm.data_dir, "artist_tokens"), 0o600)
    admins = seed_task(farm)
    shared = seed_task(farm, farm.token("artist"))
    named_artist = seed_task(farm, fake_artist)
    owners = {task_id: farm.api.task(task_id)["owner"] for task_id in (admins, shared, named_artist)}
    assert owners == {admins: "admin", shared: "artist", named_artist: "artist:artist"}

    def cancel(task_id: int, token: str) -> int:
        return farm.api.call("POST", "/cancel_task", {"task_id": task_id}, token=token)[0]

    assert cancel(admins, fake_admin) == 403
    assert cancel(shared, fake_admin) == 403
    assert cancel(shared, fake_artist) == 403
    assert cancel(named_artist, farm.token("artist")) == 403
    assert all(farm.api.task(t)["status"] == "queued" for t in owners)
    assert cancel(named_artist, fake_artist) == 200  # their own task
    assert cancel(shared, farm.token("artist")) == 200


@pytest.mark.sqlite_only  # an old database is a SQLite file: PostgreSQL came after owners were qualified
def test_an_old_database_gets_role_qualified_owners(farm):
    assert run_coordinator(farm.data_dir, "--add-artist", "bob").returncode == 0
    bob = open(os.path.join(farm.data_dir, "artist_tokens"), encoding="utf-8").read().split()[1]
    farm.start_coordinator()
    bobs, admins = seed_task(farm, bob), seed_task(farm)
    farm.coordinator.stop()
    # As a coordinator before role-qualified owners left it: bare artist names, and no record of the migration.
    db = sqlite3.connect(os.path.join(farm.data_dir, "renderq.sqlite3"))
    with db:
        db.execute("UPDATE tasks SET owner = 'bob' WHERE task_id = ?", (bobs,))
        # (yoyo records the owner migration as 0004; forget it, as such a database never had it)
        db.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0004_qualified_owners'")
    db.close()
    farm.start_coordinator()
    assert farm.api.task(bobs)["owner"] == "artist:bob"
    assert farm.api.task(admins)["owner"] == "admin"
    assert farm.api.call("POST", "/cancel_task", {"task_id": bobs}, token=bob)[0] == 200
    farm.coordinator.stop()
    farm.start_coordinator()  # once only: a second start changes nothing
    assert farm.api.task(bobs)["owner"] == "artist:bob"


# -- cross-site changes to a coordinator without tokens ----------------------------------------------------------------


def test_no_auth_refuses_changes_from_other_sites(farm):
    farm.start_coordinator("--no-auth")
    task_id = seed_task(farm)
    body = '{"task_id": %d}' % task_id
    ours = farm.url
    attacks = [
        # What any web page can make a browser send without asking first: a text/plain "simple" request.
        ("/cancel_task", body, {"Content-Type": "text/plain", "Origin": EVIL}),
        ("/delete_task_files", body, {"Content-Type": "text/plain", "Origin": EVIL}),
        ("/submit_task", '{"blend_sha256": "%s", "frame_start": 1, "frame_end": 1}' % ("0" * 64),
         {"Content-Type": "text/plain", "Origin": EVIL}),
        ("/cancel_task", body, {"Content-Type": "application/json", "Origin": EVIL}),
        ("/cancel_task", body, {"Content-Type": "application/json", "Origin": "null"}),  # a sandboxed frame
        ("/cancel_task", body, {"Content-Type": "application/json", "Referer": EVIL + "/page"}),
        ("/upload_blend?filename=x.blend", BLEND, {"Content-Type": "application/octet-stream", "Origin": EVIL}),
        ("/pause_task", body, {"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"}),
    ]
    for path, payload, headers in attacks:
        status, _, answer = send(farm, "POST", path, payload, headers)
        assert status == 403 and b"error" in answer, (path, headers, status, answer)
    # Without a browser's Origin (a script, the CLI) a JSON body must still say it is JSON.
    status, _, answer = send(farm, "POST", "/cancel_task", body, {"Content-Type": "text/plain"})
    assert status == 415 and b"application/json" in answer, answer
    status, _, answer = send(farm, "POST", "/cancel_task", body)
    assert status == 415, answer
    task = farm.api.task(task_id)
    assert task["status"] == "queued" and task["files_deleted"] is False
    assert [t["task_id"] for t in farm.api.get("/tasks")["tasks"]] == [task_id]
    # Our own page may.
    status, _, answer = send(farm, "POST", "/cancel_task", body,
                             {"Content-Type": "application/json", "Origin": ours, "Referer": ours + "/"})
    assert status == 200, answer
    assert farm.api.task(task_id)["status"] == "canceled"


def test_no_auth_answers_no_name_another_site_could_point_here(farm):
    # DNS rebinding: evil.example first resolves to the attacker's server, then to 127.0.0.1; its page is then
    # same-origin with the coordinator, and its requests carry Host: evil.example.
    farm.start_coordinator("--no-auth")
    task_id = seed_task(farm)
    rebound = f"evil.example:{farm.port}"
    origin = f"http://{rebound}"
    status, _, answer = send(farm, "GET", "/tasks", headers={"Host": rebound})
    assert status == 403 and b"error" in answer and b"shot" not in answer, answer
    status, _, _ = send(farm, "POST", "/cancel_task", '{"task_id": %d}' % task_id,
                        {"Host": rebound, "Origin": origin, "Content-Type": "application/json"})
    assert status == 403 and farm.api.task(task_id)["status"] == "queued"
    assert send(farm, "GET", "/", headers={"Host": rebound})[0] == 403
    # The names that stay ours: an IP address, localhost.
    for host in (f"127.0.0.1:{farm.port}", f"localhost:{farm.port}", "[::1]"):
        assert send(farm, "GET", "/tasks", headers={"Host": host})[0] == 200, host


@needs_browser
def test_a_web_page_cannot_change_a_coordinator_without_tokens(farm):
    farm.start_coordinator("--no-auth")
    task_id = seed_task(farm)
    attacker = "http://attacker.test/"
    # A JSON-looking text/plain form and a no-cors fetch: both reach the server without a CORS preflight.
    html = (f'<form id="f" method="post" action="{farm.url}/cancel_task" enctype="text/plain">'
            f'<input name=\'{{"task_id": {task_id}, "x": "\' value=\'"}}\'></form>'
            f'<script>fetch("{farm.url}/delete_task_files", {{method: "POST", mode: "no-cors", '
            f'headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{task_id: {task_id}}})}})'
            f'.finally(() => document.getElementById("f").submit())</script>')
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context().new_page()
            page.route(attacker, lambda route: route.fulfill(status=200, content_type="text/html", body=html))
            with page.expect_navigation(url=farm.url + "/cancel_task"):
                page.goto(attacker)
            assert "must come from this coordinator's own status page" in page.inner_text("body")
        finally:
            browser.close()
    task = farm.api.task(task_id)
    assert task["status"] == "queued" and task["files_deleted"] is False


# -- what `renderq` prints ---------------------------------------------------------------------------------------------

HOSTILE_LABEL = "\x1b]0;owned\x07\x1b[2J\x1b[31mboss\u202eevil\x9b1m\x7f"
HOSTILE_ERROR = "\x1b[1A\x1b[2Kframe 1 done\r\x1b]8;;http://evil.example\x07click\x1b]8;;\x07\nsecond line \x85"


def renderq(farm: Farm, *args: str, token: str | None = None, exit_code: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "renderq", *args, "--coordinator", farm.url, "--token",
                           token or farm.admin_token()], capture_output=True, text=True, encoding="utf-8",
                          env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, timeout=60)
    assert done.returncode == exit_code, done.stderr
    return done


def test_renderq_prints_no_escape_sequences_from_other_people(farm):
    farm.start_coordinator()
    # Names are refused at the door; free text (the label, errors, logs) is stored and must be cleaned when printed.
    status, _ = farm.api.call("POST", "/register_worker", {"name": "node\x9b2J\u202e", "blender_version": "3.4.1"})
    assert status == 400
    task_id = seed_task(farm, name="shot", submitted_by=HOSTILE_LABEL)
    worker = farm.api.post("/register_worker", {"name": "node", "blender_version": "3.4.1"})
    lease = farm.api.get(f"/get_task?worker_id={worker['worker_id']}")["frame"]
    farm.api.post("/update_task", {"worker_id": worker["worker_id"], "task_id": task_id, "frame": lease["frame"],
                                   "lease_id": lease["lease_id"], "status": "failed", "error": HOSTILE_ERROR,
                                   "log_tail": HOSTILE_ERROR})
    farm.api.post("/append_log", {"task_id": task_id, "text": "Fra:1 " + HOSTILE_ERROR + "\n"})
    wait_for(lambda: farm.api.task(task_id)["frames"][0]["error"] == HOSTILE_ERROR, 10, "the failure to be stored")

    # An artist name from a hand-edited artist_tokens file reaches other artists in the coordinator's refusals.
    eve, bob = "e" * 40, "b" * 40
    with open(os.path.join(farm.data_dir, "artist_tokens"), "w", encoding="utf-8") as handle:
        handle.write(f"eve\x1b[2J\x1b]0;pwned\x07\u202e {eve}\nbob {bob}\n")
    eves = seed_task(farm, eve)

    table = renderq(farm, "status")
    detail = renderq(farm, "status", str(task_id))
    workers = renderq(farm, "workers")
    logs = renderq(farm, "logs", str(task_id))
    refused = renderq(farm, "cancel", str(eves), token=bob, exit_code=1)
    assert "belongs to artist:eve" in refused.stderr
    for done in (table, detail, workers, logs, refused):
        for stream in (done.stdout, done.stderr):
            assert not TERMINAL_CONTROLS.search(stream), (done.args[3:5], stream)
    # What the text said is still there, shown as text; the owner (from the token) stands beside the label.
    assert re.search(rf"^\s*{task_id}\s+shot\s+admin\s+", table.stdout, re.M), table.stdout
    assert "owner      admin" in detail.stdout and "]0;owned[2J[31mbossevil" in detail.stdout
    assert "click" in detail.stdout and "second line" in logs.stdout


def test_the_status_page_shows_the_owner_beside_the_label(farm):
    farm.start_coordinator()
    task_id = seed_task(farm, submitted_by="the boss")
    snapshot = farm.api.get("/status/updates")["snapshot"]
    item = next(t for t in snapshot["tasks"].values() if t["id"] == task_id)
    assert (item["owner"], item["by"]) == ("admin", "the boss")
    page = farm.api.get(f"/tasks/{task_id}").decode()
    assert re.search(r'id="task-owner"[^>]*>admin<', page) and "the boss" in page


def test_printable_leaves_text_and_drops_what_a_terminal_would_act_on():
    from renderq.progress import format_table, printable

    every_control = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x61C, 0x200E, 0x200F,
                                       *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]))
    assert not TERMINAL_CONTROLS.search(printable(every_control, multiline=True).replace("\t", "").replace("\n", ""))
    assert printable("a\tb\nc\r\x1b[31md") == "a b c [31md"
    assert printable("a\tb\nc", multiline=True) == "a\tb\nc"
    assert printable("Blender 4.2 · é ✓ 日本") == "Blender 4.2 · é ✓ 日本"
    assert not TERMINAL_CONTROLS.search(format_table(["A"], [["x\x1b[2Jy\x9b"], ["z\u202e"]]))


# -- sessions that outlive their logout --------------------------------------------------------------------------------


def test_logout_ends_the_session_for_every_copy_of_its_cookie(farm):
    farm.start_coordinator()
    task_id = seed_task(farm)
    cookie, _ = log_in(farm)
    copied = cookie  # what a shared machine, a proxy log or a stolen backup could hold
    csrf = csrf_of(farm, cookie)
    status, headers, _ = send(farm, "POST", "/logout", "", {"Cookie": cookie, "X-CSRF-Token": csrf,
                                                             "Origin": farm.url})
    assert status == 302 and "renderq_session=;" in headers.get("Set-Cookie", "").replace('""', "")
    assert send(farm, "GET", "/status/updates", headers={"Cookie": copied})[0] == 401
    status, headers, _ = send(farm, "GET", "/", headers={"Cookie": copied})
    assert status == 302 and headers["Location"].startswith("/login")
    status, _, _ = send(farm, "POST", "/cancel_task", '{"task_id": %d}' % task_id,
                        {"Cookie": copied, "X-CSRF-Token": csrf, "Origin": farm.url,
                         "Content-Type": "application/json"})
    assert status == 401 and farm.api.task(task_id)["status"] == "queued"


def test_sessions_survive_a_restart_and_their_end_does_too(farm):
    farm.start_coordinator()
    cookie, _ = log_in(farm)
    farm.coordinator.stop()
    farm.start_coordinator()
    assert send(farm, "GET", "/status/updates", headers={"Cookie": cookie})[0] == 200
    csrf = csrf_of(farm, cookie)
    assert send(farm, "POST", "/logout", "", {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": farm.url})[0] == 302
    farm.coordinator.stop()
    farm.start_coordinator()
    assert send(farm, "GET", "/status/updates", headers={"Cookie": cookie})[0] == 401


def test_a_session_expires_with_its_record(tmp_path):
    from coordinator.sessions import LoginSessions
    from coordinator.store import Store

    store = Store(str(tmp_path / "renderq.sqlite3"))
    sessions = LoginSessions(store)
    first = sessions.start(now=1000.0, lifetime_seconds=60)
    assert sessions.is_live(first, 1059.0) and not sessions.is_live(first, 1060.0)
    assert not sessions.is_live("made-up", 1000.0)
    second = sessions.start(now=2000.0, lifetime_seconds=60)  # drops the expired one
    assert store.read().execute("SELECT count(*) FROM login_sessions").fetchone()[0] == 1
    sessions.end(second)
    assert not sessions.is_live(second, 2001.0)
