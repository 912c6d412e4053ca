"""Unit tests of the worker's .blend cache and task folders."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from worker.cache import BlendCache, CacheError

BLEND_BYTES = b"BLENDER-v304" + b"\x00" * 200
BLEND_SHA = hashlib.sha256(BLEND_BYTES).hexdigest()


def writer(payload: bytes, calls: list[str] | None = None, pause: float = 0.0):
    """A download callback that writes `payload`, counting its calls."""

    def download(path: str) -> None:
        if calls is not None:
            calls.append(path)
        time.sleep(pause)
        with open(path, "wb") as out:
            out.write(payload)

    return download


def test_fetch_downloads_once_and_keeps_the_file(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    calls: list[str] = []
    assert cache.path_for(BLEND_SHA) is None

    first = cache.fetch(BLEND_SHA, writer(BLEND_BYTES, calls))
    second = cache.fetch(BLEND_SHA.upper(), writer(BLEND_BYTES, calls))

    assert first == second == cache.path_for(BLEND_SHA)
    assert len(calls) == 1
    with open(first, "rb") as stream:
        assert stream.read() == BLEND_BYTES


def test_concurrent_fetches_of_one_hash_download_once(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    calls: list[str] = []
    results: list[str] = []

    def fetch() -> None:
        results.append(cache.fetch(BLEND_SHA, writer(BLEND_BYTES, calls, pause=0.05)))

    threads = [threading.Thread(target=fetch) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 5


def test_a_download_that_does_not_match_its_hash_is_not_cached(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    with pytest.raises(CacheError, match="SHA-256"):
        cache.fetch(BLEND_SHA, writer(b"something else"))
    assert cache.path_for(BLEND_SHA) is None
    assert os.listdir(os.path.join(cache.root, "blends")) == []


def test_a_failed_download_leaves_nothing_behind(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))

    def broken(path: str) -> None:
        with open(path, "wb") as out:
            out.write(b"half")
        raise OSError("connection cut")

    with pytest.raises(OSError):
        cache.fetch(BLEND_SHA, broken)
    assert os.listdir(os.path.join(cache.root, "blends")) == []
    # The next try downloads again.
    assert cache.fetch(BLEND_SHA, writer(BLEND_BYTES)) == cache.path_for(BLEND_SHA)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "../" + "a" * 61])
def test_hashes_that_are_not_sha256_are_refused(tmp_path, bad):
    cache = BlendCache(str(tmp_path / "cache"))
    with pytest.raises(CacheError):
        cache.path_for(bad)


def test_materialize_places_the_blend_under_its_name_in_the_task_folder(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    cached = cache.fetch(BLEND_SHA, writer(BLEND_BYTES))

    placed = cache.materialize(7, BLEND_SHA, "shot 010.blend")

    assert placed == os.path.join(cache.task_dir(7), "shot 010.blend")
    assert os.path.samefile(placed, cached)  # a hard link on one file system
    assert cache.materialize(7, BLEND_SHA, "shot 010.blend") == placed
    assert sorted(os.listdir(cache.task_dir(7))) == ["shot 010.blend"]
    assert os.path.dirname(cache.output_dir(7)) != cache.task_dir(7)


def test_materialize_copies_when_linking_fails(tmp_path, monkeypatch):
    cache = BlendCache(str(tmp_path / "cache"))
    cached = cache.fetch(BLEND_SHA, writer(BLEND_BYTES))

    def no_links(source: str, target: str) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    placed = cache.materialize(3, BLEND_SHA, "scene.blend")
    assert not os.path.samefile(placed, cached)
    with open(placed, "rb") as stream:
        assert stream.read() == BLEND_BYTES


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b.blend", "a\\b.blend", "..scene.blend", "sc\x00ene.blend"])
def test_materialize_refuses_unsafe_file_names(tmp_path, bad):
    cache = BlendCache(str(tmp_path / "cache"))
    cache.fetch(BLEND_SHA, writer(BLEND_BYTES))
    with pytest.raises(CacheError):
        cache.materialize(1, BLEND_SHA, bad)


def test_materialize_needs_the_blend_in_the_cache(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    with pytest.raises(CacheError, match="no cached"):
        cache.materialize(1, BLEND_SHA, "scene.blend")


@pytest.mark.parametrize("bad", ["../x", "1/../../x", -1, None, True])
def test_task_ids_cannot_name_other_paths(tmp_path, bad):
    cache = BlendCache(str(tmp_path / "cache"))
    with pytest.raises(CacheError):
        cache.task_dir(bad)


def test_remove_task_keeps_the_cached_blend(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    cache.fetch(BLEND_SHA, writer(BLEND_BYTES))
    cache.materialize(5, BLEND_SHA, "scene.blend")
    with open(os.path.join(cache.output_dir(5), "f_0001.png"), "wb") as out:
        out.write(b"png")
    cache.materialize(6, BLEND_SHA, "other.blend")

    cache.remove_task(5)

    assert not os.path.exists(os.path.join(cache.root, "tasks", "5"))
    assert not os.path.exists(os.path.join(cache.root, "output", "5"))
    assert os.path.exists(os.path.join(cache.task_dir(6), "other.blend"))
    assert cache.path_for(BLEND_SHA) is not None

    cache.clear_tasks()
    assert os.listdir(os.path.join(cache.root, "tasks")) == []
    assert cache.path_for(BLEND_SHA) is not None
