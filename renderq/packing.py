"""Trace a .blend file's dependencies and describe a self-contained tree of files that renders it anywhere.

Blender Asset Tracer (BAT) finds every file the .blend needs (image textures, linked libraries recursively, image
sequences, movie clips, sounds, fonts, volumes, caches) and decides where each one goes in the packed tree: files in
the project folder keep their place relative to it, files outside it go under `_outside_project/` followed by their
absolute path without its root (BAT's layout), and every .blend that refers to a moved file is rewritten so its
relative paths point at the new place.

Only the rewritten .blend files are written (into the staging folder); every other file is hashed where it is and
uploaded from there, so packing a project with gigabytes of textures copies nothing. When BAT had to change a path
(a rewritten .blend, a file placed outside the project's layout), the tree is traced again (as links, not copies)
to prove that it refers to nothing outside itself; otherwise the tree is the project's own layout and the one trace
suffices.

Imports only the standard library, `blender_asset_tracer` and standard-library-only `renderq` modules, so the
Blender add-on can bundle it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable

from blender_asset_tracer import blendfile, bpathlib, trace
from blender_asset_tracer.pack import Aborted, Packer, transfer
from blender_asset_tracer.pack import progress as pack_progress
from blender_asset_tracer.trace import file_sequence

from renderq import blend_header
from renderq.paths import check_path_set, check_relative_path
from renderq.exposure import Exposure, survey

__all__ = ["PackError", "PackResult", "PackedFile", "pack_project", "read_blend_version", "read_frame_range",
           "OUTSIDE_PROJECT"]

log = logging.getLogger(__name__)

# Where BAT puts the files that live outside the project folder, at the top of the packed tree.
OUTSIDE_PROJECT = "_outside_project"
# BAT writes this note at the top of every pack; the farm does not need it.
_PACK_INFO_NAME = "pack-info.txt"
_HASH_BLOCK = 1024 * 1024

ProgressCallback = Callable[[str, int, int], None]

# What BAT raises on a .blend it cannot parse or rewrite (a damaged file, a layout it does not know).
_BAT_READ_ERRORS = blend_header.BAT_READ_ERRORS


def read_blend_version(path: str) -> str:
    """major.minor of the Blender that saved `path`, from its header: 'BLENDER-v304' -> "3.4",
    'BLENDER17-01v0500' -> "5.0"; gzip- and zstd-compressed files are decompressed only at their start.

    Raises ValueError("... is not a .blend file") for anything else, including a damaged compressed stream.
    """
    try:
        return blend_header.read_blend_version(path)
    except Exception as error:  # zstandard raises its own ZstdError on a damaged stream
        message = str(error)
        if isinstance(error, ValueError) and message.endswith("is not a .blend file"):
            raise
        detail = message[len(path):].lstrip(" :") if message.startswith(path) else message
        raise ValueError(f"{path} is not a .blend file ({detail})") from None


def read_frame_range(path: str) -> tuple[int, int, int] | None:
    """The (start, end, step) of the scene a .blend was saved with (the one `blender -b FILE -a` renders), read by
    BAT without starting Blender; None when the file cannot be read or does not say."""
    try:
        bfile = blendfile.BlendFile(pathlib.Path(path))
    except (*_BAT_READ_ERRORS, OSError):
        return None
    try:
        scene = bfile.find_blocks_from_code(b"GLOB")[0].get_pointer(b"curscene")
        if scene is None:
            return None
        start, end, step = (int(scene.get((b"r", name))) for name in (b"sfra", b"efra", b"frame_step"))
    except (*_BAT_READ_ERRORS, IndexError, KeyError, TypeError, ValueError):
        return None
    finally:
        bfile.close()
    return start, end, max(1, step)


class PackError(Exception):
    """The project could not be packed: an unreadable .blend, a file that could not be placed, a broken tree."""


@dataclass
class PackedFile:
    """One file of the packed tree."""

    path: str
    """Relative POSIX path in the packed tree."""
    sha256: str
    size: int
    source: str
    """Absolute path of the bytes to upload: in the staging folder for rewritten .blend files, else the original."""


@dataclass
class PackResult:
    """What `pack_project` found: the tree's files, the main file in it, and what is missing."""

    main_file: str
    """Relative path of the main .blend in the tree."""
    files: list[PackedFile]
    missing: list[str]
    """Assets referenced but not on disk: the path relative to the project folder when inside it, else absolute."""
    blender_version: str
    """major.minor of the Blender that saved the main file, e.g. "3.4"."""
    staging_dir: str
    rewritten: list[str] = field(default_factory=list)
    """Tree paths of the .blend files BAT rewrote (their bytes are in the staging folder)."""
    project_root: str = ""
    """The folder whose layout the tree keeps (wider than asked when that was needed, see pack_project)."""
    project_folder: str = ""
    """The folder the artist chose (or the .blend's): what `exposure` is judged against, never the wider one."""
    exposure: Exposure = field(default_factory=Exposure)
    """The files the tree takes from outside the project folder, and hidden ones (see renderq.exposure)."""

    def manifest(self) -> list[dict]:
        """The tree as sent to the coordinator: [{"path", "sha256", "size"}], sorted by path."""
        return [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files]

    @property
    def total_bytes(self) -> int:
        """The size of the whole tree."""
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        """Everything as plain JSON-able data (for logs and the add-on)."""
        return asdict(self)


# -- BAT hooks -------------------------------------------------------------------------------------------------------


class _ProgressRelay(pack_progress.Callback):
    """Turns BAT's tracing callbacks into `progress("trace", assets_found, 0)` calls."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self._progress = progress
        self.found = 0
        self.assets: list[pathlib.Path] = []
        """Every existing asset BAT found (absolute paths or glob patterns)."""

    def _count(self) -> None:
        self.found += 1
        if self._progress is not None:
            self._progress("trace", self.found, 0)

    def trace_asset(self, filename: pathlib.Path) -> None:
        self.assets.append(pathlib.Path(filename))
        self._count()

    def missing_file(self, filename: pathlib.Path) -> None:
        self._count()


class _PlacementRecorder(transfer.FileTransferer):
    """A BAT file transferer that records where each file goes instead of copying it, as BAT queues it.

    BAT queues a *copy* for every original file and a *move* for every .blend it rewrote into its own temporary
    folder. Copies are only recorded (the original is uploaded as it is); moves are carried out into the staging
    folder, because BAT deletes its temporary folder when the packer closes. They are carried out only once BAT has
    queued everything: BAT stats a file just *after* queueing it, so moving it at once races with that stat.

    No thread runs: recording is instant, and BAT's thread would add half a second to every pack (its queue and
    progress loops poll with a 0.5 s timeout before they notice the end). A problem is recorded with `error_set`,
    which makes BAT's packer stop with Aborted, as it does for a failed copy.
    """

    def __init__(self, target: pathlib.Path) -> None:
        super().__init__()
        self.target = target
        self.placed: dict[str, pathlib.Path] = {}
        self.rewritten: set[str] = set()
        self.problems: list[str] = []
        self._moves: list[tuple[pathlib.Path, pathlib.Path]] = []

    def _tree_path(self, dst: pathlib.PurePath) -> str:
        relative = pathlib.PurePath(dst).relative_to(self.target).as_posix()
        parts = relative.split("/")
        if not relative or relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise PackError(f"BAT placed a file at {dst}, which is not a plain path inside the packed tree")
        return relative

    def _place(self, src: pathlib.Path, dst: pathlib.PurePath, action: transfer.Action) -> None:
        tree_path = self._tree_path(dst)
        if action == transfer.Action.MOVE:
            if tree_path == _PACK_INFO_NAME:
                return  # left in BAT's temporary folder, which goes away with the packer
            final = self.target / tree_path
            self._moves.append((pathlib.Path(src), final))
            source = final
            self.rewritten.add(tree_path)
        else:
            source = pathlib.Path(src)
        earlier = self.placed.get(tree_path)
        if earlier is not None and earlier != source:
            raise PackError(f"two different files would both be {tree_path} in the packed tree: {earlier} and {source}")
        self.placed[tree_path] = source

    def _record(self, src: pathlib.Path, dst: pathlib.PurePath, action: transfer.Action) -> None:
        if self.has_error or self._abort.is_set():
            return
        try:
            self._place(src, dst, action)
        except (OSError, ValueError, PackError) as error:
            self.problems.append(f"{src}: {error}")
            self.error_set("; ".join(self.problems[:3]))

    def queue_copy(self, src: pathlib.Path, dst: pathlib.PurePath) -> None:
        self._record(src, dst, transfer.Action.COPY)

    def queue_move(self, src: pathlib.Path, dst: pathlib.PurePath) -> None:
        self._record(src, dst, transfer.Action.MOVE)

    def start(self) -> None:
        """No thread to start: each file is recorded as it is queued."""

    def run(self) -> None:
        """Never runs (see start): BAT's abstract base class asks for it."""

    def done_and_join(self) -> None:
        """Everything is queued: carry out the moves into the staging folder."""
        self.done.set()
        if self.has_error:
            return
        for src, final in self._moves:
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(final))
            except OSError as error:
                self.problems.append(f"{src}: {error}")
        if self.problems:
            self.error_set("; ".join(self.problems[:3]))


class _NoCopyPacker(Packer):
    """BAT's Packer with the file transfer replaced by `_PlacementRecorder` (BAT's documented override point)."""

    recorder: _PlacementRecorder | None = None

    def _create_file_transferer(self) -> transfer.FileTransferer:
        self.recorder = _PlacementRecorder(pathlib.Path(self.target).absolute())
        return self.recorder


# -- packing ---------------------------------------------------------------------------------------------------------


def _absolute(path: str) -> pathlib.Path:
    """Absolute and normalised like BAT does it (symlinks are kept, so paths match BAT's own)."""
    return bpathlib.make_absolute(pathlib.Path(path))


def _is_inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _user_path(path: pathlib.Path, root: pathlib.Path) -> str:
    """How a user recognises an asset: relative to the project folder when inside it, else the absolute path."""
    if _is_inside(path, root):
        return path.relative_to(root).as_posix()
    return str(path)


def _hash_file(path: pathlib.Path, on_block: Callable[[int], None]) -> tuple[str, int]:
    """SHA-256 and size of a file, read block by block; `on_block(n)` after each block of n bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while True:
            block = stream.read(_HASH_BLOCK)
            if not block:
                break
            digest.update(block)
            size += len(block)
            on_block(len(block))
    return digest.hexdigest(), size


def pack_project(
    blend_path: str,
    staging_dir: str,
    *,
    project_root: str | None = None,
    progress: ProgressCallback | None = None,
) -> PackResult:
    """Trace `blend_path` with BAT and describe the self-contained tree that renders it.

    `project_root` (default: the .blend's folder) is the folder whose layout the tree keeps; files outside it go
    under `_outside_project/`. Rewritten .blend files are written into `staging_dir` (created if needed; it must be
    empty) at their tree paths; every other file stays where it is and is only hashed. The originals are never
    modified.

    BAT keeps relative paths inside the project as they are, even in a library it moves under `_outside_project/`,
    which breaks them. A tree where BAT changed a path is therefore traced again; when it is not self-contained,
    the project is packed once more with the closest folder holding every dependency as its root (nothing is then
    outside; `PackResult.project_root` tells which root was used), and PackError is raised if that fails too.

    Every file the tree would take from disk is judged against the project folder asked for (never the wider
    one): `PackResult.exposure` lists what leaves it and what is hidden; `exposure.refusal` says what to refuse.

    `progress(stage, done, total)` is called with stage "trace" (assets found so far, total 0 as it is unknown),
    "verify" (0, 0) and "hash" (bytes hashed, total bytes).

    Raises ValueError when the file is not a .blend or lies outside `project_root`, and PackError when BAT cannot
    read a .blend or no self-contained tree could be made.
    """
    blend = _absolute(blend_path)
    if not blend.is_file():
        raise ValueError(f"{blend_path} is not a file")
    blender_version = read_blend_version(str(blend))
    root = _absolute(project_root) if project_root else blend.parent
    if not root.is_dir():
        raise ValueError(f"the project folder {project_root} is not a folder")
    if not _is_inside(blend, root):
        raise ValueError(f"{blend} is not inside the project folder {root}")
    staging = _absolute(staging_dir)

    attempt = _pack_once(blend, root, staging, progress)
    problem = _tree_problem(attempt, progress)
    if problem is not None:
        wider = _common_folder([blend.parent, *attempt.dependencies])
        if wider is None or wider == root:
            raise _incomplete_tree(problem)
        log.info("repacking %s with %s as the project folder: %s", blend, wider, problem)
        attempt.discard_staged()
        attempt = _pack_once(blend, wider, staging, progress)
        problem = _tree_problem(attempt, progress)
        if problem is not None:
            raise _incomplete_tree(problem)

    try:
        # The coordinator and every worker refuse such a tree: say so before hashing and uploading it.
        check_path_set(check_relative_path(path) for path in attempt.placed)
    except ValueError as error:
        raise PackError(
            f"the project cannot be rendered on every worker ({error}); rename that file or folder"
        ) from None
    # Copied files are their own sources; a rewritten .blend's bytes come from a .blend BAT found as a dependency.
    # The main file is the artist's own choice and is not judged.
    copied = {source for tree_path, source in attempt.placed.items() if tree_path not in attempt.rewritten}
    found = {path for path in attempt.dependencies if path.is_file()}
    exposure = survey((copied | found) - {blend}, root)
    files = _hash_placed(attempt.placed, progress)
    return PackResult(
        main_file=attempt.main_file,
        files=files,
        # In the terms of the folder the user gave (or the .blend's), even when the tree had to use a wider one.
        missing=sorted(_user_path(path, root) for path in attempt.missing),
        blender_version=blender_version,
        staging_dir=str(staging),
        rewritten=sorted(attempt.rewritten),
        project_root=str(attempt.root),
        project_folder=str(root),
        exposure=exposure,
    )


def _incomplete_tree(problem: str) -> PackError:
    # Seen when a .blend BAT must move (one linked by an absolute path) keeps relative paths of its own.
    return PackError(
        f"the packed tree would not be self-contained: {problem}. Making the paths relative in Blender "
        "(File > External Data > Make Paths Relative, in every linked library too) usually fixes this"
    )


@dataclass
class _Attempt:
    """One run of BAT's packer: where each tree path's bytes are, and what was found."""

    root: pathlib.Path
    staging: pathlib.Path
    main_file: str
    placed: dict[str, pathlib.Path]
    rewritten: set[str]
    missing: set[pathlib.Path]
    dependencies: list[pathlib.Path]

    @property
    def needs_verifying(self) -> bool:
        """Whether BAT changed any path: a .blend it rewrote, or a file it placed out of the project's layout.

        BAT keeps a reference as it is only when it is relative to its .blend and inside the project; when no
        .blend was rewritten and every file keeps its place below the project folder, every reference therefore
        resolves in the tree exactly as it does in the project, and tracing the tree again would find nothing new.
        """
        outside = OUTSIDE_PROJECT + "/"
        return bool(self.rewritten) or any(path.startswith(outside) for path in self.placed)

    def missing_tree_paths(self) -> set[str]:
        """Where the missing assets would be in the tree (references to them stay unresolved)."""
        return {_tree_path_of(path, self.root) for path in self.missing}

    def discard_staged(self) -> None:
        """Delete the rewritten .blend files this attempt put in the staging folder."""
        for tree_path in self.rewritten:
            staged = self.staging / tree_path
            staged.unlink(missing_ok=True)
            # Remove the folders that held only this file, up to the staging folder itself.
            folder = staged.parent
            while folder != self.staging and _is_inside(folder, self.staging):
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent


def _pack_once(
    blend: pathlib.Path, root: pathlib.Path, staging: pathlib.Path, progress: ProgressCallback | None
) -> _Attempt:
    """Run BAT's packer with the no-copy transferer for one project root."""
    if _is_inside(root, staging):
        # Rewritten files land at their tree paths under the staging folder: here, on top of the originals.
        raise ValueError(f"the staging folder {staging} must not contain the project folder {root}")
    staging.mkdir(parents=True, exist_ok=True)
    if any(staging.iterdir()):
        # Leftovers could be mistaken for this pack's files, or be overwritten.
        raise ValueError(f"the staging folder {staging} must be empty")
    relay = _ProgressRelay(progress)
    # BAT keeps every .blend it opened in a module-wide cache; a long-lived process (the add-on) would otherwise
    # trace an edited file from stale data.
    blendfile.close_all_cached()
    try:
        packer = _NoCopyPacker(blend, root, str(staging))  # not `as`: BAT's __enter__ is typed as returning Packer
        with packer:
            packer.progress_cb = relay
            packer.strategise()
            packer.execute()
            recorder = packer.recorder
            assert recorder is not None
            main_file = pathlib.PurePath(packer.output_path).relative_to(staging).as_posix()
            missing = set(packer.missing_files)
    except (Aborted, transfer.FileTransferError) as error:
        raise PackError(f"packing {blend.name} failed: {error}") from None
    except _BAT_READ_ERRORS as error:
        raise PackError(f"a .blend file of the project could not be read: {error}") from None
    except OSError as error:
        raise PackError(f"packing {blend.name} failed: {error}") from None
    finally:
        blendfile.close_all_cached()
    if main_file not in recorder.placed:
        raise PackError(f"BAT did not place the main file {blend.name} in the packed tree")
    return _Attempt(
        root=root, staging=staging, main_file=main_file, placed=recorder.placed, rewritten=recorder.rewritten,
        missing=missing, dependencies=relay.assets,
    )


def _common_folder(paths: list[pathlib.Path]) -> pathlib.Path | None:
    """The deepest folder holding all `paths` (files and glob patterns count by their folder); None when there is
    none (files on different Windows drives)."""
    folders = [str(path if path.is_dir() else path.parent) for path in paths]
    try:
        return pathlib.Path(os.path.commonpath(folders))
    except ValueError:
        return None


def _hash_placed(placed: dict[str, pathlib.Path], progress: ProgressCallback | None) -> list[PackedFile]:
    """Hash every placed file, reporting bytes as they are read."""
    try:
        total = sum(source.stat().st_size for source in placed.values())
    except OSError as error:
        raise PackError(f"cannot read {error.filename}: {error.strerror or error}") from None
    done = 0

    def on_block(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress("hash", done, total)

    if progress is not None:
        progress("hash", 0, total)
    files = []
    for tree_path in sorted(placed):
        source = placed[tree_path]
        try:
            sha256, size = _hash_file(source, on_block)
        except OSError as error:
            raise PackError(f"cannot read {source}: {error.strerror or error}") from None
        files.append(PackedFile(path=tree_path, sha256=sha256, size=size, source=str(source)))
    return files


def _tree_path_of(path: pathlib.Path, root: pathlib.Path) -> str:
    """Where BAT puts an original file in the tree (used to recognise references to missing assets)."""
    if _is_inside(path, root):
        return path.relative_to(root).as_posix()
    return f"{OUTSIDE_PROJECT}/{bpathlib.strip_root(path).as_posix()}"


# -- verification ----------------------------------------------------------------------------------------------------


def _link_or_stand_in(source: pathlib.Path, link: pathlib.Path) -> None:
    """Make `link` show `source`'s content without copying it when possible.

    A symbolic link, else a hard link; where neither works (Windows without the right), a .blend is copied (BAT
    must read it) and any other file is an empty stand-in (tracing only asks whether it exists).
    """
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(source)
        return
    except (OSError, NotImplementedError):
        pass
    try:
        os.link(source, link)
        return
    except OSError:
        pass
    with open(source, "rb") as stream:
        is_blend = stream.read(7) == b"BLENDER" or source.suffix.lower() == ".blend"
    if is_blend:
        shutil.copyfile(source, link)
    else:
        link.touch()


def _tree_problem(attempt: _Attempt, progress: ProgressCallback | None) -> str | None:
    """Trace the packed tree itself: what it refers to outside itself (one sentence per problem), None if nothing.

    The tree is laid out with links in a scratch folder, so the trace sees exactly the paths a worker will have.
    References to assets that were already missing are expected to stay unresolved.
    """
    if not attempt.needs_verifying:
        return None
    if progress is not None:
        progress("verify", 0, 0)
    missing_tree_paths = attempt.missing_tree_paths()
    with tempfile.TemporaryDirectory(prefix="renderq-verify-") as scratch:
        tree = _absolute(scratch) / "tree"
        for tree_path, source in attempt.placed.items():
            _link_or_stand_in(source, tree / tree_path)
        problems: list[str] = []
        blendfile.close_all_cached()
        try:
            for usage in trace.deps(tree / attempt.main_file):
                problem = _check_usage(usage, tree, missing_tree_paths)
                if problem:
                    problems.append(problem)
        except _BAT_READ_ERRORS as error:
            raise PackError(f"the packed tree could not be traced again: {error}") from None
        finally:
            blendfile.close_all_cached()
    return "; ".join(sorted(set(problems))[:5]) or None


def _check_usage(usage: trace.result.BlockUsage, tree: pathlib.Path, missing_tree_paths: set[str]) -> str | None:
    """A sentence when this reference of a packed .blend does not resolve inside the tree, else None."""
    where = pathlib.Path(usage.block.bfile.filepath)
    holder = where.relative_to(tree).as_posix() if _is_inside(where, tree) else str(where)
    asset = usage.abspath
    stored = bytes(usage.asset_path).decode("utf-8", "replace")
    if not _is_inside(asset, tree):
        # Pointing out of the tree works on this machine only if the file exists here: that is the failure to catch.
        # A reference to a file that exists nowhere was reported as missing already.
        if asset.exists():
            return f"{holder} still refers to {stored}, outside the packed tree"
        return None
    tree_path = asset.relative_to(tree).as_posix()
    if tree_path in missing_tree_paths:
        return None
    if usage.is_sequence:
        try:
            found = any(True for _ in file_sequence.expand_sequence(asset))
        except file_sequence.DoesNotExist:
            found = False
    else:
        found = asset.exists()
    if not found:
        return f"{holder} refers to {stored}, which is not in the packed tree"
    return None
