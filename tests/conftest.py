"""Shared fixtures: a Flask app over a fresh data dir, its test client, and the admin token's header; the store's
database engine and database, which a module marked `both_databases` runs under SQLite and under PostgreSQL."""

from __future__ import annotations

import os
import signal

import pytest

from coordinator.app import create_app
from coordinator.config import Config

# The SeaweedFS fixtures (seaweedfs, s3_bucket) for the tests of the S3 blob engine.
pytest_plugins = ["seaweedfs"]
DB_ENGINES = ("sqlite", "postgresql")

ADMIN_TOKEN = "test-admin-token-0123456789"
ARTIST_TOKEN = "test-artist-token-0123456789"
WORKER_TOKEN = "test-worker-token-0123456789"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_databases: run each test that uses the `db_engine` fixture (directly "
                            "or through database, app, client or farm) once on SQLite and once on PostgreSQL")
    config.addinivalue_line("markers", "sqlite_only: a test of SQLite itself, left out of both_databases")
    # A shell that starts the suite in the background leaves SIGINT ignored, and the children the tests start
    # (fake Blenders, process groups) would inherit that and never stop on the interrupt the tests send them.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker("both_databases")
    if marked and "db_engine" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("sqlite_only"):
        metafunc.parametrize("db_engine", DB_ENGINES, indirect=True)


@pytest.fixture
def db_engine(request) -> str:
    """The store's database engine for this test: "sqlite" unless its module is marked both_databases."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL server for the whole session (tests/postgres.py), stopped at its end."""
    from postgres import PostgresCluster, missing

    reason = missing()
    if reason:
        pytest.skip(f"PostgreSQL tests cannot run: {reason}")
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def database(db_engine, tmp_path, request):
    """What the store is opened on: a new SQLite file's path, or the URL of a new PostgreSQL database."""
    if db_engine == "sqlite":
        yield str(tmp_path / "state.sqlite3")
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    yield url
    cluster.drop_database(url)


def coordinator_database(db_engine: str, database: str) -> str:
    """The coordinator's `database` setting for the engine: SQLite stays in its data dir as by default."""
    return database if db_engine == "postgresql" else ""


@pytest.fixture
def app(request, tmp_path, monkeypatch, db_engine, database):
    """The coordinator app on an empty data dir, with a small upload limit so limits are testable.

    Files go to the data dir; a test parametrized with `@pytest.mark.parametrize("app", BLOB_ENGINES,
    indirect=True)` runs once on it and once on a bucket of the session's SeaweedFS. The store is the test's
    database engine (see db_engine)."""
    blob_options = {}
    if getattr(request, "param", "local") == "s3":
        from seaweedfs import credentials_env

        for name, value in credentials_env().items():
            monkeypatch.setenv(name, value)
        blob_options = {"blob_store": f"s3://{request.getfixturevalue('s3_bucket')}/files",
                        "s3_endpoint": request.getfixturevalue("seaweedfs").endpoint}
    config = Config(data_dir=str(tmp_path / "data"), upload_limit=1024 * 1024, admin_token=ADMIN_TOKEN,
                    artist_token=ARTIST_TOKEN, worker_token=WORKER_TOKEN,
                    database=coordinator_database(db_engine, database), **blob_options)
    return create_app(config)


@pytest.fixture
def client(app):
    """A test client that sends the admin token (every role) unless a test sends its own Authorization."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"
    return client


@pytest.fixture
def stranger(app):
    """A test client that sends no token at all."""
    return app.test_client()


@pytest.fixture
def admin() -> dict[str, str]:
    """Headers that carry the app fixture's admin token, for the endpoints that change the farm."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """Scenes generated with the real Blender once per test session, by name and options."""
    from harness import find_blender_or_none
    from scenes import make_scene

    folder = tmp_path_factory.mktemp("scenes")
    made: dict[tuple, str] = {}

    def get(name: str, **options) -> str:
        key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
        if key not in made:
            path = folder / f"{name}-{len(made)}.blend"
            made[key] = make_scene(str(path), blender=find_blender_or_none(), **options)
        return made[key]

    return get


@pytest.fixture
def farm(tmp_path, db_engine, database):
    """A coordinator and workers of our own (started by the test) in a temporary folder, stopped afterwards."""
    from harness import Farm, find_blender_or_none

    farm = Farm(str(tmp_path / "farm"), blender=find_blender_or_none(),
                database=coordinator_database(db_engine, database))
    os.makedirs(farm.root, exist_ok=True)
    yield farm
    farm.stop()
