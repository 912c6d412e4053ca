"""Unit tests of the worker's file cache: task trees, hostile manifests, the LRU size limit."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time

import pytest

from worker.cache import (
    BlendCache,
    CacheEntry,
    CacheError,
    TreeFile,
    check_tree_path,
    choose_evictions,
    format_size,
    normalize_manifest,
    parse_size,
)

BLEND_BYTES = b"BLENDER-v304" + b"\x00" * 200
BLEND_SHA = hashlib.sha256(BLEND_BYTES).hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(name: str, size: int = 100) -> bytes:
    """Distinct content of exactly `size` bytes."""
    return (name.encode() * size)[:size]


class Store:
    """Stands in for the coordinator's files: `download(sha256, dest_path)`, counting calls."""

    def __init__(self, *payloads: bytes) -> None:
        self.blobs = {sha(data): data for data in payloads}
        self.calls: list[str] = []

    def __call__(self, sha256: str, dest_path: str) -> None:
        self.calls.append(sha256)
        with open(dest_path, "wb") as out:
            out.write(self.blobs[sha256])


def manifest(tree: dict[str, bytes]) -> list[dict]:
    return [{"path": path, "sha256": sha(data), "size": len(data)} for path, data in tree.items()]


class Clock:
    """A settable clock for "last used" times."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def writer(payload: bytes, calls: list[str] | None = None, pause: float = 0.0):
    """A one-file download callback for fetch(), counting its calls."""

    def download(path: str) -> None:
        if calls is not None:
            calls.append(path)
        time.sleep(pause)
        with open(path, "wb") as out:
            out.write(payload)

    return download


# -- sizes and manifests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, size",
    [("20G", 20 * 1024**3), ("500M", 500 * 1024**2), ("1.5g", 1536 * 1024**2), ("64K", 65536), ("123", 123),
     ("2 GiB", 2 * 1024**3), ("1TB", 1024**4)],
)
def test_sizes_are_parsed_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "G", "lots", "-1G", "1X", "1.2.3M"])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_sizes_are_shown_for_people():
    assert [format_size(n) for n in (0, 512, 1536, 20 * 1024**3)] == ["0 B", "512 B", "1.5 KiB", "20.0 GiB"]


@pytest.mark.parametrize(
    "bad", ["../x", "/etc/x", "a/../../x", "a\\b", "a//b", "a/", "./a", "a/./b", "..", "x\x00y", "", None, 5,
            "C:/Windows/x", "c:x.blend", "a/D:/b", "a/D:b", "\\\\server\\share\\x", "C:\\x",
            "shot:01/a.png", "ab:c.png", "a/CON", "nul.png", "trailing. ", "a.png:ads", "\x7f", "a\u202eb.png",
            "x" * 256]
)
def test_paths_that_could_leave_the_tree_are_refused(bad):
    with pytest.raises(CacheError):
        check_tree_path(bad)


@pytest.mark.parametrize("good", ["main.blend", "project/tex/wood 01.png", "_outside_project/C/Users/x.exr",
                                  "..hidden.blend", "a..b/c", "shot_01/a.png", "\u00e9t\u00e9.png"])
def test_ordinary_relative_paths_are_accepted(good):
    assert check_tree_path(good) == good


def test_manifest_dedups_repeated_entries_and_checks_the_main_file():
    entries = manifest({"a/main.blend": BLEND_BYTES, "a/t.png": b"png"})
    tree = normalize_manifest(entries + [{"path": "a/t.png", "sha256": sha(b"png").upper()}], "a/main.blend")
    assert tree["a/t.png"] == TreeFile("a/t.png", sha(b"png"), 3)
    with pytest.raises(CacheError, match="not in the task's manifest"):
        normalize_manifest(entries, "other.blend")


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"path": "a/t.png", "sha256": sha(b"other")}, "two different files"),
        ({"path": "a/main.blend/x", "sha256": sha(b"x")}, "needs it as a folder"),
        ({"path": "A/T.PNG", "sha256": sha(b"png")}, "differ only in case"),
        ({"path": "b/x", "sha256": sha(b"png"), "size": 4}, "two different sizes"),
        ({"path": "b/x", "sha256": "not a hash"}, "not a SHA-256"),
        ({"path": "b/x", "sha256": sha(b"x"), "size": -1}, "not a byte count"),
    ],
)
def test_inconsistent_manifests_are_refused(extra, message):
    entries = manifest({"a/main.blend": BLEND_BYTES, "a/t.png": b"png"}) + [extra]
    with pytest.raises(CacheError, match=message):
        normalize_manifest(entries, "a/main.blend")


# -- single files -------------------------------------------------------------------------------------------------


def test_fetch_downloads_once_and_keeps_the_file_read_only(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    calls: list[str] = []
    assert cache.path_for(BLEND_SHA) is None

    first = cache.fetch(BLEND_SHA, writer(BLEND_BYTES, calls))
    second = cache.fetch(BLEND_SHA.upper(), writer(BLEND_BYTES, calls))

    assert first == second == cache.path_for(BLEND_SHA)
    assert len(calls) == 1
    with open(first, "rb") as stream:
        assert stream.read() == BLEND_BYTES
    # A tree's hard link is the same file: nothing rendering from it should be able to change the cache entry.
    assert os.stat(first).st_mode & 0o222 == 0


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
    assert os.listdir(os.path.join(cache.root, "files")) == []


def test_a_failed_download_leaves_nothing_behind(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))

    def broken(path: str) -> None:
        with open(path, "wb") as out:
            out.write(b"half")
        raise OSError("connection cut")

    with pytest.raises(OSError):
        cache.fetch(BLEND_SHA, broken)
    assert os.listdir(os.path.join(cache.root, "files")) == []
    # The next try downloads again.
    assert cache.fetch(BLEND_SHA, writer(BLEND_BYTES)) == cache.path_for(BLEND_SHA)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "../" + "a" * 61])
def test_hashes_that_are_not_sha256_are_refused(tmp_path, bad):
    cache = BlendCache(str(tmp_path / "cache"))
    with pytest.raises(CacheError):
        cache.path_for(bad)


def test_a_cached_file_of_the_wrong_size_is_downloaded_again(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    path = cache.fetch(BLEND_SHA, writer(BLEND_BYTES))
    os.chmod(path, 0o644)
    with open(path, "wb") as out:
        out.write(b"truncated")
    store = Store(BLEND_BYTES)
    tree = cache.materialize_tree(1, manifest({"main.blend": BLEND_BYTES}), "main.blend", store)
    assert store.calls == [BLEND_SHA] and tree.downloaded_files == 1
    with open(tree.main_path, "rb") as stream:
        assert stream.read() == BLEND_BYTES


# -- task trees ---------------------------------------------------------------------------------------------------


def test_tree_is_built_from_hard_links_to_the_cache(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    texture = b"shared texture"
    files = {
        "project/main.blend": BLEND_BYTES,
        "project/textures/wood.png": texture,
        "project/textures/copy of wood.png": texture,  # same content under two paths: one download
        "_outside_project/home/anna/sky.exr": b"sky",
    }
    store = Store(*files.values())

    tree = cache.materialize_tree(7, manifest(files), "project/main.blend", store)

    root = cache.task_dir(7)
    assert tree.root == root and tree.main_path == os.path.join(root, "project", "main.blend")
    assert sorted(store.calls) == sorted({sha(data) for data in files.values()})
    assert (tree.files, tree.downloaded_files, tree.cached_files) == (4, 3, 0)
    assert tree.total_bytes == tree.downloaded_bytes == len(BLEND_BYTES) + len(texture) + 3
    for path, data in files.items():
        placed = os.path.join(root, *path.split("/"))
        with open(placed, "rb") as stream:
            assert stream.read() == data
        assert os.stat(placed).st_ino == os.stat(cache.path_for(sha(data))).st_ino
    assert os.path.samefile(os.path.join(root, "project/textures/wood.png"),
                            os.path.join(root, "project/textures/copy of wood.png"))
    assert cache.live_tasks() == [7]
    assert os.path.dirname(cache.output_dir(7)) != os.path.dirname(root)


def test_only_hashes_the_cache_lacks_are_downloaded(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    shared, first_only, second_only = blob("s"), blob("f"), blob("n")
    store = Store(BLEND_BYTES, shared, first_only, second_only)

    cache.materialize_tree(1, manifest({"m.blend": BLEND_BYTES, "s": shared, "f": first_only}), "m.blend", store)
    assert len(store.calls) == 3
    tree = cache.materialize_tree(2, manifest({"m.blend": BLEND_BYTES, "x/s": shared, "n": second_only}),
                                  "m.blend", store)

    assert store.calls[3:] == [sha(second_only)]
    assert (tree.downloaded_files, tree.downloaded_bytes) == (1, 100)
    assert (tree.cached_files, tree.cached_bytes) == (2, len(BLEND_BYTES) + 100)


def test_a_live_task_can_be_built_again(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    store = Store(BLEND_BYTES)
    first = cache.materialize_tree(3, manifest({"a/main.blend": BLEND_BYTES}), "a/main.blend", store)
    again = cache.materialize_tree(3, manifest({"a/main.blend": BLEND_BYTES}), "a/main.blend", store)
    assert again.main_path == first.main_path and os.path.isfile(again.main_path)
    assert len(store.calls) == 1 and again.downloaded_files == 0


def test_tree_is_copied_when_linking_fails(tmp_path, monkeypatch):
    cache = BlendCache(str(tmp_path / "cache"))

    def no_links(source: str, target: str) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    tree = cache.materialize_tree(3, manifest({"sub/scene.blend": BLEND_BYTES}), "sub/scene.blend",
                                  Store(BLEND_BYTES))
    assert not os.path.samefile(tree.main_path, cache.path_for(BLEND_SHA))
    with open(tree.main_path, "rb") as stream:
        assert stream.read() == BLEND_BYTES


@pytest.mark.parametrize("bad", ["../x", "/etc/x", "a/../../x", "a\\b", "a//b", "x\x00y", "C:/x", "a/c:x"])
def test_hostile_paths_are_refused_before_anything_is_fetched(tmp_path, bad):
    cache = BlendCache(str(tmp_path / "cache"))
    store = Store(BLEND_BYTES, b"evil")
    files = manifest({"main.blend": BLEND_BYTES}) + [{"path": bad, "sha256": sha(b"evil"), "size": 4}]
    with pytest.raises(CacheError):
        cache.materialize_tree(1, files, "main.blend", store)
    assert store.calls == [] and cache.live_tasks() == []
    assert not os.path.exists(cache.task_dir(1))
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_a_symlink_already_in_the_task_folder_is_not_followed(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.makedirs(cache.task_dir(7))
    os.symlink(outside, os.path.join(cache.task_dir(7), "project"))

    with pytest.raises(CacheError, match="already holds files"):
        cache.materialize_tree(7, manifest({"project/main.blend": BLEND_BYTES}), "project/main.blend",
                               Store(BLEND_BYTES))

    assert os.listdir(outside) == []
    assert cache.live_tasks() == [] and not os.path.lexists(cache.task_dir(7))
    # Once the stray link is gone, the task can be built.
    assert os.path.isfile(cache.materialize_tree(7, manifest({"project/main.blend": BLEND_BYTES}),
                                                 "project/main.blend", Store(BLEND_BYTES)).main_path)


def test_a_task_folder_that_is_a_symlink_is_not_followed(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, cache.task_dir(7))
    with pytest.raises(CacheError):
        cache.materialize_tree(7, manifest({"main.blend": BLEND_BYTES}), "main.blend", Store(BLEND_BYTES))
    assert os.listdir(outside) == [] and os.path.isdir(outside)


@pytest.mark.parametrize("bad", ["../x", "1/../../x", -1, None, True])
def test_task_ids_cannot_name_other_paths(tmp_path, bad):
    cache = BlendCache(str(tmp_path / "cache"))
    with pytest.raises(CacheError):
        cache.task_dir(bad)


def test_remove_task_keeps_the_cached_files(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    store = Store(BLEND_BYTES)
    cache.materialize_tree(5, manifest({"a/scene.blend": BLEND_BYTES}), "a/scene.blend", store)
    with open(os.path.join(cache.output_dir(5), "f_0001.png"), "wb") as out:
        out.write(b"png")
    other = cache.materialize_tree(6, manifest({"other.blend": BLEND_BYTES}), "other.blend", store)

    cache.remove_task(5)

    assert not os.path.exists(os.path.join(cache.root, "tasks", "5"))
    assert not os.path.exists(os.path.join(cache.root, "output", "5"))
    assert os.path.isfile(other.main_path) and cache.live_tasks() == [6]
    assert cache.path_for(BLEND_SHA) is not None

    cache.clear_tasks()
    assert os.listdir(os.path.join(cache.root, "tasks")) == [] and cache.live_tasks() == []
    assert cache.path_for(BLEND_SHA) is not None


def test_blends_cached_by_earlier_versions_are_kept(tmp_path):
    legacy = tmp_path / "cache" / "blends"
    legacy.mkdir(parents=True)
    (legacy / f"{BLEND_SHA}.blend").write_bytes(BLEND_BYTES)
    (legacy / ".download-1.part").write_bytes(b"half")
    cache = BlendCache(str(tmp_path / "cache"))
    assert cache.path_for(BLEND_SHA) is not None and not legacy.exists()


# -- size limit ---------------------------------------------------------------------------------------------------


def test_choose_evictions_takes_the_least_recently_used_unpinned_files():
    entries = [CacheEntry("a", 100, 30.0), CacheEntry("b", 100, 10.0), CacheEntry("c", 100, 20.0)]
    assert choose_evictions(entries, 300) == []
    assert [e.sha256 for e in choose_evictions(entries, 200)] == ["b"]
    assert [e.sha256 for e in choose_evictions(entries, 200, pinned={"b"})] == ["c"]
    assert [e.sha256 for e in choose_evictions(entries, 300, incoming=150)] == ["b", "c"]
    # Pinned files stay even when the limit cannot be met.
    assert [e.sha256 for e in choose_evictions(entries, 0, pinned={"a", "c"})] == ["b"]


def use(cache: BlendCache, clock: Clock, task_id: int, files: dict[str, bytes], store: Store, at: float) -> None:
    """Render a task from `at` to `at + 1`: build its tree, then let it go."""
    clock.now = at
    cache.materialize_tree(task_id, manifest(files), next(iter(files)), store)
    clock.now = at + 1
    cache.remove_task(task_id)


def test_limit_evicts_the_least_recently_used_files_but_never_those_of_a_live_task(tmp_path, caplog):
    clock = Clock()
    cache = BlendCache(str(tmp_path / "cache"), 300, clock=clock)
    a, b, c, d, e, f = (blob(name) for name in "abcdef")
    store = Store(a, b, c, d, e, f)
    use(cache, clock, 1, {"a": a}, store, at=10)
    use(cache, clock, 2, {"b": b}, store, at=20)
    use(cache, clock, 3, {"c": c}, store, at=30)
    assert {entry.sha256 for entry in cache.entries()} == {sha(a), sha(b), sha(c)}

    # a is the oldest, but task 4 uses it: b goes instead.
    clock.now = 40
    cache.materialize_tree(4, manifest({"a": a, "d": d}), "a", store)
    assert {entry.sha256 for entry in cache.entries()} == {sha(a), sha(c), sha(d)}

    # Task 5 needs 200 bytes more; only c may go, so the cache ends over its limit and says so.
    caplog.set_level(logging.WARNING, logger="renderq.worker.cache")
    clock.now = 50
    tree = cache.materialize_tree(5, manifest({"e": e, "f": f}), "e", store)
    assert os.path.isfile(tree.main_path)
    assert {entry.sha256 for entry in cache.entries()} == {sha(a), sha(d), sha(e), sha(f)}
    assert "over its limit" in caplog.text

    # Once task 5 is over, its files are no longer protected: the cache gets back under its limit.
    clock.now = 60
    cache.remove_task(5)
    kept = {entry.sha256 for entry in cache.entries()}
    assert {sha(a), sha(d)} <= kept and len(kept & {sha(e), sha(f)}) == 1
    assert sum(entry.size for entry in cache.entries()) == 300


def test_a_task_bigger_than_the_limit_is_still_rendered(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="renderq.worker.cache")
    cache = BlendCache(str(tmp_path / "cache"), 150, clock=Clock())
    big, small = blob("big", 120), blob("small", 80)
    tree = cache.materialize_tree(1, manifest({"main.blend": big, "t.png": small}), "main.blend", Store(big, small))
    assert os.path.isfile(tree.main_path) and os.path.isfile(os.path.join(tree.root, "t.png"))
    assert "over its limit" in caplog.text
    cache.remove_task(1)
    assert sum(entry.size for entry in cache.entries()) <= 150


def test_lru_order_survives_a_new_cache_on_the_same_folder(tmp_path):
    clock = Clock()
    root = str(tmp_path / "cache")
    a, b, c = blob("a"), blob("b"), blob("c")
    store = Store(a, b, c)
    first = BlendCache(root, 200, clock=clock)
    use(first, clock, 1, {"a": a}, store, at=10)  # downloaded first...
    use(first, clock, 2, {"b": b}, store, at=20)
    use(first, clock, 3, {"a": a}, store, at=30)  # ...but used last

    first.close()
    again = BlendCache(root, 200, clock=clock)  # a restarted worker
    again.clear_tasks()
    clock.now = 40
    again.materialize_tree(4, manifest({"c": c}), "c", store)
    assert {entry.sha256 for entry in again.entries()} == {sha(a), sha(c)}
    assert store.calls == [sha(a), sha(b), sha(c)]


def test_a_smaller_limit_is_applied_when_the_worker_starts(tmp_path):
    clock = Clock()
    root = str(tmp_path / "cache")
    a, b = blob("a"), blob("b")
    store = Store(a, b)
    big = BlendCache(root, 1000, clock=clock)
    use(big, clock, 1, {"a": a}, store, at=10)
    use(big, clock, 2, {"b": b}, store, at=20)
    big.close()
    small = BlendCache(root, 150, clock=clock)
    small.clear_tasks()
    assert [entry.sha256 for entry in small.entries()] == [sha(b)]


def test_entries_report_size_and_last_use(tmp_path):
    clock = Clock(1234.0)
    cache = BlendCache(str(tmp_path / "cache"), clock=clock)
    cache.fetch(BLEND_SHA, writer(BLEND_BYTES))
    (entry,) = cache.entries()
    assert entry == CacheEntry(BLEND_SHA, len(BLEND_BYTES), 1234.0)
    assert stat.S_ISREG(os.stat(cache.path_for(BLEND_SHA)).st_mode)


# -- links planted in the work folder -------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A folder outside the cache holding one file, which nothing may write to or follow into."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    return folder


def assert_untouched(folder) -> None:
    assert sorted(os.listdir(folder)) == ["keep.txt"] and (folder / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("own", ["files", "tasks", "output"])
def test_a_cache_whose_own_folder_is_a_link_is_refused_at_start(tmp_path, outside, own):
    root = tmp_path / "cache"
    root.mkdir()
    os.symlink(outside, root / own)
    with pytest.raises(CacheError, match="symbolic link"):
        BlendCache(str(root))
    assert_untouched(outside)


@pytest.mark.parametrize("own", ["files", "tasks"])
def test_a_link_planted_over_an_own_folder_later_is_not_built_into(tmp_path, outside, own):
    cache = BlendCache(str(tmp_path / "cache"))
    os.rmdir(os.path.join(cache.root, own))
    os.symlink(outside, os.path.join(cache.root, own))
    with pytest.raises(CacheError, match="symbolic link"):
        cache.materialize_tree(7, manifest({"main.blend": BLEND_BYTES}), "main.blend", Store(BLEND_BYTES))
    assert_untouched(outside)


@pytest.mark.parametrize("own", ["tasks", "output"])
def test_cleaning_up_never_deletes_through_a_planted_link(tmp_path, outside, own, caplog):
    cache = BlendCache(str(tmp_path / "cache"))
    os.rmdir(os.path.join(cache.root, own))
    os.symlink(outside, os.path.join(cache.root, own))
    cache.clear_tasks()
    cache.remove_task(7)
    assert_untouched(outside)
    assert "symbolic link" in caplog.text


def test_an_output_folder_that_is_a_link_is_refused(tmp_path, outside):
    cache = BlendCache(str(tmp_path / "cache"))
    os.symlink(outside, os.path.join(cache.root, "output", "7"))
    with pytest.raises(CacheError, match="symbolic link"):
        cache.output_dir(7)
    assert os.path.isdir(cache.output_dir(8))


def test_only_plain_files_in_the_task_output_folder_are_sent(tmp_path, outside):
    cache = BlendCache(str(tmp_path / "cache"))
    folder = cache.output_dir(7)
    frame = os.path.join(folder, "f_0001.png")
    with open(frame, "wb") as out:
        out.write(b"png")
    assert cache.check_output_file(7, frame) == frame
    link = os.path.join(folder, "f_0002.png")
    os.symlink(outside / "keep.txt", link)
    with pytest.raises(CacheError, match="symbolic link"):
        cache.check_output_file(7, link)
    with pytest.raises(CacheError, match="not in the task's output folder"):
        cache.check_output_file(7, str(outside / "keep.txt"))
    with pytest.raises(CacheError, match="not in the task's output folder"):
        cache.check_output_file(8, frame)


def test_a_cached_file_that_is_a_link_is_replaced_not_followed(tmp_path):
    cache = BlendCache(str(tmp_path / "cache"))
    elsewhere = tmp_path / "same-bytes.blend"
    elsewhere.write_bytes(BLEND_BYTES)
    os.chmod(elsewhere, 0o644)
    os.utime(elsewhere, (1000, 1000))
    planted = os.path.join(cache.root, "files", BLEND_SHA)
    os.symlink(elsewhere, planted)

    assert cache.path_for(BLEND_SHA) is None and cache.entries() == []
    tree = cache.materialize_tree(7, manifest({"main.blend": BLEND_BYTES}), "main.blend", Store(BLEND_BYTES))
    assert not os.path.islink(planted) and os.path.isfile(planted)
    assert not os.path.islink(tree.main_path) and os.path.samefile(tree.main_path, planted)
    # The file the link pointed to kept its mode and its time.
    assert stat.S_IMODE(os.stat(elsewhere).st_mode) == 0o644 and os.stat(elsewhere).st_mtime == 1000


def test_a_legacy_blend_that_is_a_link_is_not_adopted(tmp_path, outside):
    legacy = tmp_path / "cache" / "blends"
    legacy.mkdir(parents=True)
    target = outside / "keep.txt"
    os.chmod(target, 0o644)
    os.symlink(target, legacy / f"{BLEND_SHA}.blend")
    cache = BlendCache(str(tmp_path / "cache"))
    assert cache.path_for(BLEND_SHA) is None and not legacy.exists()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert_untouched(outside)


def test_two_caches_cannot_share_a_root(tmp_path):
    root = str(tmp_path / "cache")
    first = BlendCache(root)
    with pytest.raises(CacheError, match="another worker is already using the work folder"):
        BlendCache(root)
    first.close()
    BlendCache(root).close()  # a restarted worker may use it again


def test_a_refused_root_lets_go_of_its_lock(tmp_path, outside):
    root = tmp_path / "cache"
    root.mkdir()
    os.symlink(outside, root / "files")
    with pytest.raises(CacheError, match="symbolic link"):
        BlendCache(str(root))
    os.unlink(root / "files")
    BlendCache(str(root)).close()
