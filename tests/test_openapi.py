"""The OpenAPI description (coordinator/openapi.yaml): it names every route of the app with the roles the code
asks for, it is a valid OpenAPI document, and a real coordinator answers fuzzed requests as it says."""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import pytest
import schemathesis
from harness import Api, Farm
from hypothesis import HealthCheck, settings

import renderq
from coordinator.api.openapi import spec_bytes
from coordinator.app import create_app
from coordinator.config import Config

SPEC_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "coordinator", "openapi.yaml")
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
# Roles accepted by an endpoint decorated with requires(role): admins have every role.
ACCEPTED = {"worker": {"worker", "admin"}, "artist": {"artist", "admin"}, "admin": {"admin"}}
# What the fuzz run checks on every answer.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")


@pytest.fixture(scope="module")
def spec() -> dict:
    """The document as parsed (and resolved enough to walk) by schemathesis's OpenAPI loader."""
    return schemathesis.openapi.from_path(SPEC_PATH).raw_schema


@pytest.fixture(scope="module")
def flask_app(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("openapi-app")
    return create_app(Config(data_dir=str(data_dir), admin_token="openapi-admin-token-0123456789",
                             artist_token="openapi-artist-token-0123456789",
                             worker_token="openapi-worker-token-0123456789"))


def openapi_path(rule: str) -> str:
    """Flask's '/tasks/<int:task_id>' as OpenAPI's '/tasks/{task_id}'."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def app_routes(app) -> dict[str, set[str]]:
    """{OpenAPI path: lower-case methods} of every route of the app (HEAD and OPTIONS are Flask's own)."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        routes.setdefault(openapi_path(rule.rule), set()).update(methods)
    return routes


def spec_operations(spec: dict) -> dict[tuple[str, str], dict]:
    return {(path, method): operation for path, item in spec["paths"].items()
            for method, operation in item.items() if method in HTTP_METHODS}


def test_spec_names_every_route_and_no_other(flask_app, spec):
    routes = app_routes(flask_app)
    described = {path: {method for method in item if method in HTTP_METHODS} for path, item in spec["paths"].items()}
    assert "/static/{filename}" in routes  # Flask's static route; the spec describes it too
    missing = {path: methods - described.get(path, set()) for path, methods in routes.items()
               if methods - described.get(path, set())}
    extra = {path: methods - routes.get(path, set()) for path, methods in described.items()
             if methods - routes.get(path, set())}
    assert not missing, f"routes of the app that openapi.yaml does not describe: {missing}"
    assert not extra, f"operations in openapi.yaml that the app does not have: {extra}"


def test_spec_names_the_roles_the_code_asks_for(flask_app, spec):
    operations = spec_operations(spec)
    for rule in flask_app.url_map.iter_rules():
        view = flask_app.view_functions[rule.endpoint]
        role = getattr(view, "renderq_role", None)
        for method in {m.lower() for m in rule.methods or ()} - {"head", "options"}:
            operation = operations[(openapi_path(rule.rule), method)]
            label = f"{method.upper()} {rule.rule}"
            roles = set(operation.get("x-roles", ()))
            public = operation.get("security", spec["security"]) == []
            if role is not None:
                assert roles == ACCEPTED[role], f"{label}: the code accepts {sorted(ACCEPTED[role])}, not {roles}"
            else:
                # Not behind requires(): public, or the status page's admin login.
                assert roles in ({"public"}, {"admin"}), f"{label}: x-roles {roles}"
            assert public == (roles == {"public"}), f"{label}: security does not match x-roles {roles}"
            for needed in sorted(roles - {"public"}):
                assert needed in operation["description"], f"{label}: the description does not name {needed}"
            if not public:
                for status in ("401", "403"):
                    assert status in operation["responses"], f"{label}: {status} is not described"


def test_spec_is_a_valid_openapi_document():
    schema = schemathesis.openapi.from_path(SPEC_PATH)
    schema.validate()  # against the OpenAPI meta-schema
    assert schema.raw_schema["info"]["version"] == renderq.__version__
    labels = []
    for result in schema.get_all_operations():
        labels.append(result.ok().label)  # an operation that cannot be built raises here
    assert len(labels) >= 30


def test_spec_is_served_without_a_token(flask_app):
    answer = flask_app.test_client().get("/openapi.yaml")
    assert answer.status_code == 200
    assert answer.mimetype == "application/yaml"
    with open(SPEC_PATH, "rb") as handle:
        assert answer.data == handle.read() == spec_bytes()


# -- fuzzing a real coordinator over HTTP ------------------------------------------------------------------------------

# A .blend as far as the coordinator looks (its header), and a PNG as far as an inline frame download looks.
FAKE_BLEND = b"BLENDER-v304REND" + bytes(112)
FAKE_PNG = b"\x89PNG\r\n\x1a\n" + bytes(56)
# Not Latin-1 and with a quote: it ends up in the zip download's Content-Disposition header.
SEED_TASK_NAME = 'seed 日本 "shot"'


class Coordinator(NamedTuple):
    url: str
    token: str
    api: Api
    blend_sha256: str


def seed(api: Api) -> str:
    """Task 1 with a done frame (and a log), worker 1: the ids the spec's examples use, so fuzzed requests reach
    past 'not found' into downloads, zips, reports and changes. Returns the uploaded .blend's hash."""
    status, blend = api.call("POST", "/upload_blend?filename=seed.blend", raw=FAKE_BLEND)
    assert status == 200, blend
    worker = api.post("/register_worker", {"name": "seed-node", "blender_version": "3.4.1", "cpu_count": 2})
    task = api.post("/submit_task", {"name": SEED_TASK_NAME, "blend_sha256": blend["sha256"], "frame_start": 1,
                                     "frame_end": 3})
    assert (worker["worker_id"], task["task_id"]) == (1, 1)
    claim = api.get("/get_task?worker_id=1")["frame"]
    lease = {"worker_id": 1, "task_id": 1, "frame": claim["frame"], "lease_id": claim["lease_id"]}
    status, stored = api.call("POST", "/upload_frame?worker_id=1&task_id=1&frame={frame}&lease_id={lease_id}"
                              "&filename=f_0001.png".format(**lease), raw=FAKE_PNG)
    assert status == 200, stored
    api.post("/update_task", {**lease, "status": "done", "render_seconds": 1.5})
    api.post("/append_log", {"task_id": 1, "worker_id": 1, "text": "Fra:1 Mem:10.00M | Rendering\n"})
    return blend["sha256"]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    """A real coordinator (`renderq coordinator` subprocess) with a little state in it."""
    farm = Farm(str(tmp_path_factory.mktemp("openapi-farm")))
    os.makedirs(farm.root, exist_ok=True)
    # A small upload limit, so fuzzed uploads can meet it; no disk reserve, so a nearly full disk on the machine
    # running the tests does not turn every upload into a 507.
    farm.start_coordinator("--upload-limit", "64K", "--disk-reserve", "0")
    try:
        yield Coordinator(farm.url, farm.admin_token(), farm.api, seed(farm.api))
    finally:
        farm.stop()


# Requests that schemathesis does not generate: it makes only strings that encode as UTF-8, bodies that json.dumps can
# write, and small numbers where no maximum is given. (method, path, raw body) for each. They run before the fuzzing,
# which may cancel task 1 and delete its files.
HAND_PICKED = [
    ("POST", "/register_worker", rb'{"name": "node-\ud800"}'),  # a lone surrogate escape
    ("POST", "/register_worker", rb'{"name": "node-2", "host": "\udfff"}'),
    ("POST", "/update_worker", rb'{"worker_id": 1, "leases": ["\ud800"]}'),
    ("POST", "/append_log", rb'{"task_id": 1, "text": "\udbff"}'),
    ("POST", "/missing_files", b"[" * 100_000 + b"]" * 100_000),  # deeper than the JSON parser's recursion
    ("POST", "/missing_files", b'{"sha256": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("POST", "/register_worker", b'{"name": "node-3", "blender_version": "99999999999999999999.1"}'),
    ("POST", "/submit_task", (b'{"blend_sha256": "%(blend)s", "frame_start": 1, "frame_end": 1, '
                              b'"blender_version": "9999999999999999.1"}')),
    ("POST", "/submit_task", (b'{"blend_sha256": "%(blend)s", "frame_start": 1, "frame_end": 1, '
                              rb'"workers": ["\ud800"]}')),
    ("GET", f"/tasks/{2**64}", b""),  # beyond any database integer
    ("GET", "/download_frames_zip?task_id=1", b""),  # a task name that is not Latin-1, for the header
]


@pytest.mark.parametrize("method, path, raw", HAND_PICKED, ids=[f"{m} {p[:40]} {r[:30]!r}" for m, p, r in HAND_PICKED])
def test_coordinator_answers_hand_picked_inputs_as_the_spec_says(coordinator, spec, method, path, raw):
    raw = raw.replace(b"%(blend)s", coordinator.blend_sha256.encode())
    status, answer = coordinator.api.call(method, path, raw=raw or None,
                                          content_type="application/json" if raw else None)
    template = "/tasks/{task_id}" if path.startswith("/tasks/") else path.split("?")[0]
    described = spec["paths"][template][method.lower()]["responses"]
    assert status < 500, answer
    if path.startswith("/tasks/"):
        assert status == 404
    assert str(status) in described, f"{method} {template} answered {status}, which the spec does not describe"
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer


# Loaded from the file at import, so pytest reports one test per operation; the served copy is the same file
# (test_spec_is_served_without_a_token), and each request goes to the fixture's coordinator.
schema = schemathesis.openapi.from_path(SPEC_PATH, config=schemathesis.Config.from_dict({
    "generation": {
        # Valid and invalid inputs: invalid ones must get a described 4xx, never a 5xx.
        "mode": "all",
        "max-examples": 15,
        "database": "none",
    },
    # The spec's examples, boundary values (coverage) and random inputs for each operation; no request sequences.
    "phases": {"stateful": {"enabled": False}},
    "request-timeout": 30,
}))


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_coordinator_answers_as_the_spec_says(case, coordinator):
    sent_hash = case.body.get("blend_sha256") if isinstance(case.body, dict) else None
    if case.operation.path == "/submit_task" and isinstance(sent_hash, str) and re.fullmatch("[0-9a-f]{64}", sent_hash):
        # A random hash names no uploaded file; the seeded one lets generated tasks past that check into the rest.
        case.body["blend_sha256"] = coordinator.blend_sha256
    # No redirects followed: the status pages' 302 to the login form is an answer the spec describes.
    case.call_and_validate(base_url=coordinator.url, headers={"Authorization": f"Bearer {coordinator.token}"},
                           checks=[getattr(schemathesis.checks, name) for name in CHECKS], allow_redirects=False)
